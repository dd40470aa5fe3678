"""torch.compile for training and prediction: what is compiled, dynamo's limits, the cache, the announcement.

Compiling is a choice of the stages (``torch_compile``, ``compile_regional``); the rules are here so that the
trainer, the prediction pipeline and the benchmarks compile alike.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch

from diffunet.memory_options import checkpointed_stages

__all__ = ["compile_for_inference", "resolve_training_compile", "GRAPHS_PER_BLOCK", "training_compile_targets",
           "recompile_limit", "compile_for_training", "is_compiled", "compiled_graphs", "inductor_cache_dir",
           "announce_compile"]


def compile_for_inference(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """``torch.compile`` the boundary branch and the denoiser of a DiffUNet (or the plain U-Net) in place,
    with inductor's weight freezing (constant-folded, prepacked convolution weights). Inference only; the
    first call compiles (about a minute on a CPU), later calls of the same window size reuse it. ``mode``:
    torch.compile's, one of :data:`light_training.fast_paths.COMPILE_MODES` ("reduce-overhead": CUDA graphs).

    An image U-Net (the boundary branch, the baseline) is compiled as its encoder and its decoder: sampling
    calls ``encode`` alone (its decoder is not needed), which a compiled wrapper of the whole U-Net would
    leave eager; so is MBA's ``prepare`` (the boundary half of its 1x1 convs), called beside the denoiser."""
    import torch._inductor.config as inductor_config  # inductor (a heavy import): only when compiling
    # freezing must be on when the graph is compiled (the first call); passed through torch.compile's
    # `options` it did not take effect (measured), so it is set for this process
    inductor_config.freezing = True
    for name in ("boundary", "unet"):  # DiffUNet's boundary branch, or the plain U-Net baseline
        if (branch := getattr(model, name, None)) is not None:
            branch.encoder = torch.compile(branch.encoder, mode=mode)
            branch.decoder = torch.compile(branch.decoder, mode=mode)
    if (denoiser := getattr(model, "denoiser", None)) is not None:
        if getattr(denoiser, "mba", None) is not None:  # its boundary half runs once per window, outside forward
            denoiser.mba.prepare = torch.compile(denoiser.mba.prepare, mode=mode)
        model.denoiser = torch.compile(denoiser, mode=mode)
    return model


def resolve_training_compile(torch_compile: bool | None, device: torch.device) -> bool:
    """Whether to compile the training step: None = on CUDA (nnU-Net's default there: fused norm and
    activation kernels, compiled once per patch size), off on the CPU, where compiling both networks'
    forward and backward took minutes and the compiled step was no faster (README, "Speed")."""
    if torch_compile is None:
        return device.type == "cuda"
    if not isinstance(torch_compile, bool):
        raise ValueError(f"torch_compile={torch_compile!r}: expected True, False or None (on with CUDA only)")
    return torch_compile


# every block of one class shares its forward's code object, and dynamo's recompile limit (8 by default)
# counts the graphs per code object: one graph per block and per kind of call (the training step, MC-Diff's
# no-grad passes at another batch, validation's sampling, a spare)
GRAPHS_PER_BLOCK = 4


def training_compile_targets(model: torch.nn.Module, regional: bool) -> list[torch.nn.Module]:
    """The modules :func:`compile_for_training` compiles, each on its own. ``regional``: every encoder
    stage and decoder block of each U-Net (the stages that activation checkpointing recomputes, 22 in the
    paper's Diff-UNet, 14 in the tiny one); else the whole networks (boundary branch and denoiser, or the
    plain U-Net). Empty for a model without them."""
    if regional:
        return checkpointed_stages(model)
    return [part for name in ("boundary", "denoiser", "unet") if (part := getattr(model, name, None)) is not None]


def recompile_limit(num_targets: int, current: int) -> int:
    """Dynamo's recompile limit that lets ``num_targets`` regionally compiled blocks each keep their
    :data:`GRAPHS_PER_BLOCK` graphs (never lower than ``current``): past the limit dynamo runs a block
    eagerly, with a warning only."""
    return max(current, GRAPHS_PER_BLOCK * num_targets)


def compile_for_training(model: torch.nn.Module, regional: bool = True) -> torch.nn.Module:
    """``torch.compile`` a DiffUNet (or the plain U-Net) in place for training; returns it.

    ``regional`` (torch's recommended way to cut compile time): each U-Net stage is compiled on its own
    (:func:`training_compile_targets`): small graphs, compiled in a fraction of a whole network's time,
    the rest (losses, MBA, the label embedding) eager. ``regional=False``: each whole network, as one graph
    per network and kind of call. Either way with static shapes (``dynamic=False``): the MC-Diff passes
    and validation (other batch sizes) get their own graphs instead of one with symbolic sizes, whose
    compile took minutes (sympy) on a GPU. ``nn.Module.compile`` keeps the state-dict keys, so checkpoints
    do not change. Inductor's FX graph and AOTAutograd caches (on by default; ``TORCHINDUCTOR_CACHE_DIR``,
    default :func:`inductor_cache_dir`) make a second run with the same shapes compile much faster.
    The first step compiles; :func:`announce_compile` says so."""
    targets = training_compile_targets(model, regional)
    if regional:
        torch._dynamo.config.recompile_limit = recompile_limit(len(targets), torch._dynamo.config.recompile_limit)
    for part in targets:
        part.compile(dynamic=False)
    return model


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` or any of its modules was compiled with ``nn.Module.compile``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far (all models)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def inductor_cache_dir() -> str:
    """Where inductor keeps its compiled graphs (``TORCHINDUCTOR_CACHE_DIR``, or a folder in the temp dir)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # inductor's own rule, imported when asked

    return cache_dir()


@contextlib.contextmanager
def announce_compile(what: str, enabled: bool = True, write: Callable[[str], None] | None = None) -> Iterator[None]:
    """Around the first call of a compiled model: write ``compiling <what> ...`` before and ``<what>
    compiled in N s (G graphs)`` after, so that a minute of compiling is never silent. Does nothing when
    ``enabled`` is False (an eager model, or not rank 0). ``write``: how a line is shown (default: printed
    and flushed; the trainer passes one that keeps its progress bar intact)."""
    if not enabled:
        yield
        return
    write = write or (lambda line: print(line, flush=True))
    write(f"compiling {what} ...")
    graphs, start = compiled_graphs(), time.perf_counter()
    yield
    write(f"{what} compiled in {time.perf_counter() - start:.1f} s ({compiled_graphs() - graphs} graphs)")
