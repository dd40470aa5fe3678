"""Does the training step fit? The budget check of explicit settings and the GPU check before the loaders start.

Both estimate a step's peak with the memory estimator (:mod:`light_training.memory`, the real model on
fake tensors). The decisions are pure functions of the numbers (:func:`over_budget_warning`,
:func:`memory_verdict`, :func:`settings_to_try`), so a CPU test covers every branch a GPU takes; only
:func:`check_gpu_memory` reads the device.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from light_training.memory import GIB, fits_on_card
from light_training.preprocessing.network_plan import describe_network

__all__ = ["StepEstimator", "step_peak_bytes", "over_budget_warning", "settings_to_try", "memory_verdict",
           "check_gpu_memory"]

# (patch_size, batch_size, memory options {"mc_chunk", "checkpointing"}) -> peak bytes of one training step
StepEstimator = Callable[[Sequence[int], int, dict], int]


def step_peak_bytes(model: torch.nn.Module, precision: str) -> StepEstimator:
    """The estimator of ``model``'s training step in ``precision`` ("fp32", "bf16", "fp16"), cached."""
    from light_training.memory import estimate_train_step  # torch's fake-tensor machinery: only when estimating

    cache: dict[tuple, int] = {}

    def estimate(patch_size: Sequence[int], batch_size: int, options: dict) -> int:
        key = (tuple(patch_size), int(batch_size), options.get("mc_chunk"), bool(options.get("checkpointing")))
        if key not in cache:
            cache[key] = estimate_train_step(type(model).__name__, model.config, list(patch_size), int(batch_size),
                                             precision, mc_chunk=options.get("mc_chunk"),
                                             checkpointing=bool(options.get("checkpointing"))).peak_bytes
        return cache[key]
    return estimate


def over_budget_warning(peak_bytes: int, network: dict[str, Any] | None, patch_size: Sequence[int],
                        batch_size: int) -> str | None:
    """A warning when explicit ``patch_size`` x ``batch_size`` need more than the plan's GPU memory target
    (``network``: the plan's ``"network"`` entry, None: nothing to compare with); else None."""
    if network is None or peak_bytes <= network["gpu_memory_target_gb"] * GIB:
        return None
    return (f"warning: patch {list(patch_size)} x batch {batch_size} needs {peak_bytes / GIB:.1f} GiB per step by the "
            f"estimator, over the plan's gpu_memory_target_gb={network['gpu_memory_target_gb']:g}; the plan: "
            f"{describe_network(network)}")


def settings_to_try(patch_size: Sequence[int], batch_size: int, total_stride: Sequence[int],
                    options: dict[str, Any]) -> list[tuple[str, list[int], int, dict]]:
    """Smaller settings, each ``(constants, patch, batch, memory options)``: MC-Diff passes one at a time
    (``mc_chunk=1``), activation checkpointing, half the batch with twice the ``accumulate_steps`` (the
    same effective batch), and patches one stride step smaller at a time along the largest axis, until
    half the voxels or fewer."""
    patch, out = [int(p) for p in patch_size], []
    accumulate = int(options.get("accumulate_steps") or 1)
    if options.get("mc_chunk") != 1:
        out.append(("--mc_chunk=1", patch, batch_size, {**options, "mc_chunk": 1}))
    if not options.get("checkpointing"):
        out.append(("--checkpointing=True", patch, batch_size, {**options, "checkpointing": True}))
    if batch_size > 1:
        out.append((f"--batch_size={batch_size // 2} --accumulate_steps={accumulate * 2}", patch, batch_size // 2,
                    options))
    smaller = list(patch)
    while True:
        axis = max(range(3), key=lambda a: smaller[a] / total_stride[a])
        if smaller[axis] - total_stride[axis] < 2 * total_stride[axis] or math.prod(smaller) <= math.prod(patch) / 2:
            break
        smaller[axis] -= total_stride[axis]
        out.append((f"--patch_size={smaller}", list(smaller), batch_size, options))
    return out


def _fits(peak_bytes: int, free_bytes: int) -> bool:
    """The estimator's own rule (:func:`light_training.memory.fits_on_card`): the peak plus the allocator's
    margin and the workspaces the estimate leaves out."""
    return fits_on_card(peak_bytes, free_bytes / GIB)


def memory_verdict(peak_bytes: int, free_bytes: int, tried: list[tuple[str, int]]) -> str | None:
    """None when a step of ``peak_bytes`` fits the GPU's ``free_bytes`` (:func:`_fits`); else why training
    stops and which of the ``tried`` settings (``(constants, peak bytes)``) fit."""
    if _fits(peak_bytes, free_bytes):
        return None
    fit = [(name, peak) for name, peak in tried if _fits(peak, free_bytes)]
    lines = [f"a training step needs {peak_bytes / GIB:.1f} GiB by the memory estimator, but the GPU has "
             f"{free_bytes / GIB:.1f} GiB free: stopped before the data loaders start."]
    if fit:
        lines.append("These would fit (estimated peak): " + "; ".join(f"{n} ({p / GIB:.1f} GiB)" for n, p in fit))
    else:
        lines.append("None of " + ", ".join(n for n, _ in tried) + " fits; free the GPU or use a smaller "
                     "--patch_size with --mc_chunk=1 --checkpointing=True")
    return "\n".join(lines)


def check_gpu_memory(device: torch.device, estimate: StepEstimator, patch_size: Sequence[int], batch_size: int,
                     total_stride: Sequence[int], options: dict[str, Any], free_bytes: int | None = None) -> str | None:
    """The message that stops training when the step does not fit the free memory of CUDA ``device``
    (``torch.cuda.mem_get_info``), None when it fits or the device is not a GPU. The smaller settings are
    estimated only when it does not fit, and only until three of them fit."""
    if device.type != "cuda" and free_bytes is None:
        return None
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    peak = estimate(patch_size, batch_size, options)
    if _fits(peak, free):
        return None
    tried: list[tuple[str, int]] = []
    for name, patch, batch, opts in settings_to_try(patch_size, batch_size, total_stride, options):
        tried.append((name, estimate(patch, batch, opts)))
        if sum(_fits(p, free) for _, p in tried) >= 3:
            break
    return memory_verdict(peak, free, tried)
