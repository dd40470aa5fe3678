"""Where and how the networks run: device, precision, threads, seeding, torchrun (torch.compile: compilation).

One vocabulary for training and prediction: ``precision`` is "auto", "fp32", "bf16" or "fp16".
"auto" means bf16 autocast where the hardware runs it natively (CUDA GPUs of compute capability 8.0
and newer, CPUs with AVX512-BF16 or AMX), fp16 on older CUDA GPUs, and fp32 elsewhere (benchmarks/bench_speed.py measured
the CPU gains: 2.3x for sampling, 2.3x for a training step; where oneDNN only emulates bf16, plain AVX-512,
bf16 was 1.8x slower than fp32: light_training.machine.cpu_bf16_units).
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist

from light_training.machine import this_cpu_bf16_units

__all__ = ["PRECISIONS", "device_problem", "resolve_device", "cpu_has_bf16", "cpu_precision", "cuda_precision",
           "resolve_precision", "backend_settings", "configure_backends", "fp32_math", "cuda_fp32_math",
           "autocast_context", "seed_everything", "set_cpu_threads", "DistInfo", "rank_device", "setup_distributed",
           "cleanup_distributed"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_problem(requested: str, cuda_built: bool, gpu_count: int, cuda_version: str | None = None) -> str | None:
    """Why the device ``requested`` ("cuda", "cuda:1", "cpu", ...) cannot be used, or None when it can.

    ``cuda_built``: this torch was built with CUDA; ``gpu_count``: the GPUs it can use (0 when the driver
    is missing or too old for ``cuda_version``, the CUDA of this build).
    """
    if not requested.startswith("cuda"):
        return None
    fix = "or set --device=cpu to run on the CPU"
    if not cuda_built:
        return (f"device={requested!r}, but this torch ({torch.__version__}) is a CPU build without CUDA: install the "
                f"CUDA build (TORCH_BUILD=cuda tools/setup_env.sh) {fix}")
    if gpu_count == 0:
        return (f"device={requested!r}, but this torch (built for CUDA {cuda_version}) finds no GPU it can use: no "
                f"NVIDIA driver, or one older than CUDA {cuda_version} needs (nvidia-smi shows the driver and the "
                f"newest CUDA it runs). Update the driver, install a torch built for an older CUDA (see "
                f"tools/setup_env.sh, CUDA_TORCH), {fix}")
    index = torch.device(requested).index
    if index is not None and index >= gpu_count:
        return (f"device={requested!r}, but there {'is' if gpu_count == 1 else 'are'} only {gpu_count} GPU(s) here "
                f"(cuda:0 to cuda:{gpu_count - 1}; CUDA_VISIBLE_DEVICES may hide some): pick one of them {fix}")
    return None


def resolve_device(requested: str) -> torch.device:
    """The ``torch.device`` of a "cuda:0"-style request; ``ValueError`` naming what is missing (a CUDA
    build, a driver, that GPU) when it cannot be used: a GPU run never falls back to the CPU silently."""
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"device={requested!r}: not a device ({err}); e.g. 'cuda:0' or 'cpu'") from None
    built = torch.backends.cuda.is_built()
    problem = device_problem(requested, built, torch.cuda.device_count() if built else 0, torch.version.cuda)
    if problem:
        raise ValueError(problem)
    return device


NATIVE_CPU_BF16 = ("AMX", "AVX512-BF16")  # light_training.machine.cpu_bf16_units' answers where bf16 is native


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU: AVX512-BF16 or AMX units that no ``ONEDNN_MAX_CPU_ISA`` cap
    hides (:func:`light_training.machine.cpu_bf16_units`). Not oneDNN's ``_is_mkldnn_bf16_supported``: that is
    true on plain AVX-512 too, where oneDNN emulates bf16 slower than fp32."""
    return this_cpu_bf16_units() in NATIVE_CPU_BF16


def cpu_precision(precision: str, bf16_units: str) -> str:
    """The precision a CPU runs for the request ``precision``, given how it runs bf16 (``bf16_units``, one of
    :func:`light_training.machine.cpu_bf16_units`' answers): "auto" is bf16 where bf16 is native ("AMX",
    "AVX512-BF16"), fp32 where it is emulated or absent; an explicit request is kept."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if bf16_units in NATIVE_CPU_BF16 else "fp32"


def cuda_precision(precision: str, capability: tuple[int, int]) -> str:
    """The precision a CUDA GPU of compute ``capability`` (major, minor) runs for the request ``precision``.

    bf16 needs compute capability 8.0 (Ampere) or newer: cuDNN has no bf16 convolutions below (V100,
    T4, RTX 20xx, Quadro RTX), where ``torch.cuda.is_bf16_supported()`` still says yes (it counts
    emulation). "auto": bf16 from 8.0, fp16 (with a GradScaler in training) below; an explicit "bf16"
    below 8.0 is refused.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {list(PRECISIONS)}")
    native_bf16 = tuple(capability) >= (8, 0)
    if precision == "auto":
        return "bf16" if native_bf16 else "fp16"
    if precision == "bf16" and not native_bf16:
        major, minor = capability
        raise ValueError(f"precision='bf16', but this GPU (compute capability {major}.{minor}) has no bf16 "
                         f"convolutions (they need 8.0, Ampere or newer): use precision='fp16' or 'auto' "
                         f"(fp16 with a gradient scaler there), or 'fp32'")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with "auto" replaced by what ``device`` runs best: "bf16", "fp16" or "fp32"
    (on CUDA: :func:`cuda_precision` of that device's capability; on the CPU: :func:`cpu_precision`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {list(PRECISIONS)}")
    if device.type == "cuda":
        return cuda_precision(precision, torch.cuda.get_device_capability(device))
    if device.type != "cpu":
        return "fp32" if precision == "auto" else precision
    return cpu_precision(precision, this_cpu_bf16_units())


def backend_settings(device_type: str, precision: str) -> dict[str, bool]:
    """How cuDNN runs for a resolved ``precision`` ("fp32", "bf16", "fp16") on ``device_type``.

    ``cudnn_benchmark``: on CUDA, time the convolution algorithms once per shape and keep the fastest
    (every shape here is fixed: the training patch, the sliding window). ``tf32``: TF32 tensor cores
    for float32 convolutions and matmuls (Ampere and newer), only under bf16/fp16 autocast, where the
    float32 that is left (losses, MBA) was asked to be fast; "fp32" means IEEE float32.
    """
    cuda = device_type == "cuda"
    return {"cudnn_benchmark": cuda, "tf32": cuda and precision != "fp32"}


def configure_backends(device: torch.device, precision: str, tf32: bool | None = None) -> dict[str, bool]:
    """Apply :func:`backend_settings` for ``device`` and the resolved ``precision`` (process-wide); returns them.
    Call it once a stage knows both (training and prediction). ``tf32``: None, the rule; True/False overrides
    it (a benchmark's TF32 candidate: fp32 on TF32 tensor cores).

    TF32 is switched with torch's legacy switches (``cudnn.allow_tf32``, ``cuda.matmul.allow_tf32``), which
    set the newer per-operation ``fp32_precision`` too, and then each operation's ``fp32_precision`` to its
    explicit value: so ``torch.get_float32_matmul_precision()`` and every legacy query keep answering (the
    newer switches alone make them raise, and inductor reads them), and an "ieee" operation cannot inherit
    "tf32" from a parent switch set earlier (``cudnn.fp32_precision``: the per-operation value "none"
    means the parent's)."""
    settings = backend_settings(device.type, precision)
    if tf32 is not None:
        settings["tf32"] = device.type == "cuda" and tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
        tf32 = settings["tf32"]
        torch.backends.cudnn.allow_tf32 = tf32  # convolutions and RNNs
        torch.backends.cuda.matmul.allow_tf32 = tf32  # = torch.set_float32_matmul_precision("high" / "highest")
        for switch in _per_operation_switches():
            switch.fp32_precision = "tf32" if tf32 else "ieee"
    return settings


def _per_operation_switches() -> list[Any]:
    """torch's per-operation float32 switches (cuDNN convolutions and RNNs, cuBLAS matmuls): torch 2.9 and
    newer; empty before, where the legacy switches are all there is."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    switches = [getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None),
                matmul if hasattr(matmul, "fp32_precision") else None]
    return [switch for switch in switches if switch is not None]


def fp32_math(conv_precision: str, matmul_precision: str) -> str:
    """The float32 math of cuDNN convolutions and cuBLAS matmuls whose ``fp32_precision`` switches read
    ``conv_precision`` and ``matmul_precision`` ("ieee", "tf32"; "none" = not set, IEEE): "ieee", "tf32", or
    "tf32 convolutions, ieee matmuls" (and the converse) when they differ. For a benchmark's table line."""
    conv, matmul = ("tf32" if p == "tf32" else "ieee" for p in (conv_precision, matmul_precision))
    return conv if conv == matmul else f"{conv} convolutions, {matmul} matmuls"


def cuda_fp32_math() -> str:
    """:func:`fp32_math` of the switches in effect in this process (what a float32 CUDA convolution or matmul
    runs now; torch's getters resolve a per-operation "none" to its parent's value)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if len(_per_operation_switches()) < 3:  # a torch before 2.9: the legacy switches
        return fp32_math("tf32" if cudnn.allow_tf32 else "ieee", "tf32" if matmul.allow_tf32 else "ieee")
    return fp32_math(cudnn.conv.fp32_precision, matmul.fp32_precision)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` on ``device`` (a no-op for fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def seed_everything(seed: int | Sequence[int]) -> None:
    """Seed torch, numpy's global generator (batchgenerators draws from it) and Python's ``random``."""
    state = np.random.SeedSequence(np.atleast_1d(seed).tolist()).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def set_cpu_threads(num_threads: int | None) -> int:
    """Use ``num_threads`` intra-op threads (None or 0: leave torch's choice). Returns the count in use.

    On a machine where another process takes a core, as many OpenMP threads as cores made a training
    step 4 to 20 times slower (threads spin waiting for the one that lost its core); fewer threads
    than cores keep the step time steady.
    """
    if num_threads:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()


def rank_device(device: torch.device, env: Mapping[str, str]) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA ``device`` under torchrun (one GPU per rank), else ``device``."""
    if device.type == "cuda" and int(env.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
    return device


def setup_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun job when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on the CPU); returns this
    rank's info and device (``cuda:LOCAL_RANK`` on GPUs). Without torchrun: ``DistInfo()`` and ``device``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = rank_device(device, os.environ)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank), device


def cleanup_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
