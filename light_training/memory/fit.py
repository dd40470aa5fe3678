"""Does it fit? The fit rule of an estimated peak on a card, and the checks of a training run before it starts.

A step's peak comes from the estimator (:mod:`light_training.memory.estimator`, the real model on fake
tensors). The decisions are pure functions of the numbers (:func:`fits_on_card`, :func:`over_budget_warning`,
:func:`memory_verdict`, :func:`settings_to_try`), so a CPU test covers every branch a GPU takes; only
:func:`check_gpu_memory` reads the device, and :func:`check_training_memory` is the training stage's one
call before the loaders start.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from diffunet.presets import total_strides
from light_training.memory.estimator import GIB, estimate_train_step
from light_training.runtime import resolve_precision
from light_training.training.step import TrainSettings

__all__ = ["CUDA_RESERVED_GIB", "ALLOCATOR_MARGIN", "fits_on_card", "fit_problem", "StepEstimator", "step_peak_bytes",
           "over_budget_warning", "settings_to_try", "memory_verdict", "check_gpu_memory", "check_training_memory"]

CUDA_RESERVED_GIB = 1.0  # CUDA context, cuDNN/cuBLAS workspaces: not in an estimate
ALLOCATOR_MARGIN = 0.10  # the caching allocator's rounding and fragmentation, as a share of the peak


def fits_on_card(peak_bytes: int, card_gib: float, reserved_gib: float = CUDA_RESERVED_GIB,
                 margin: float = ALLOCATOR_MARGIN) -> bool:
    """Whether a step whose estimated peak is ``peak_bytes`` fits a GPU of ``card_gib`` GiB (a "24 GB"
    card has 24 GiB): ``peak (1 + margin) + reserved <= card``."""
    return peak_bytes * (1 + margin) / GIB + reserved_gib <= card_gib


def fit_problem(peak_bytes: int, card_gib: float, reserved_gib: float = CUDA_RESERVED_GIB,
                margin: float = ALLOCATOR_MARGIN) -> str | None:
    """None when :func:`fits_on_card`, else why not, with the numbers (for a row that is skipped)."""
    if fits_on_card(peak_bytes, card_gib, reserved_gib, margin):
        return None
    need = peak_bytes * (1 + margin) / GIB + reserved_gib
    return (f"does not fit: estimated {peak_bytes / GIB:.1f} GiB + {margin:.0%} allocator + {reserved_gib:g} GiB "
            f"context = {need:.1f} GiB > the card's {card_gib:.1f} GiB")


# (patch_size, batch_size, memory options {"mc_chunk", "checkpointing"}) -> peak bytes of one training step
StepEstimator = Callable[[Sequence[int], int, dict], int]


def step_peak_bytes(model: torch.nn.Module, precision: str, settings: TrainSettings | None = None) -> StepEstimator:
    """The estimator of ``model``'s training step in ``precision`` ("fp32", "bf16", "fp16") with the trainer's
    recipe ``settings`` (None: :class:`TrainSettings`'s defaults), cached."""
    cache: dict[tuple, int] = {}

    def estimate(patch_size: Sequence[int], batch_size: int, options: dict) -> int:
        key = (tuple(patch_size), int(batch_size), options.get("mc_chunk"), bool(options.get("checkpointing")))
        if key not in cache:
            cache[key] = estimate_train_step(type(model).__name__, model.config, list(patch_size), int(batch_size),
                                             precision, mc_chunk=options.get("mc_chunk"),
                                             checkpointing=bool(options.get("checkpointing")),
                                             settings=settings).peak_bytes
        return cache[key]
    return estimate


def over_budget_warning(peak_bytes: int, network: dict[str, Any] | None, patch_size: Sequence[int],
                        batch_size: int, plan_line: str = "") -> str | None:
    """A warning when explicit ``patch_size`` x ``batch_size`` need more than the plan's GPU memory target
    (``network``: the plan's ``"network"`` entry, None: nothing to compare with; ``plan_line``: the planner's
    one line of it); else None."""
    if network is None or peak_bytes <= network["gpu_memory_target_gb"] * GIB:
        return None
    return (f"warning: patch {list(patch_size)} x batch {batch_size} needs {peak_bytes / GIB:.1f} GiB per step by the "
            f"estimator, over the plan's gpu_memory_target_gb={network['gpu_memory_target_gb']:g}; the plan: "
            f"{plan_line}")


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
    """The estimator's own rule (:func:`fits_on_card`): the peak plus the allocator's
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


def check_training_memory(model: torch.nn.Module, patch_size: list[int], batch_size: int, settings: TrainSettings,
                          options: dict[str, Any], device: torch.device, network: dict[str, Any] | None = None,
                          plan_line: str = "", planned_network: bool = False, is_main: bool = True) -> str | None:
    """The training stage's check before the loaders start: print the plan (``network``, the plan's
    ``"network"`` entry, and ``plan_line``, the planner's line of it) beside the settings unless they are the
    plan's own with ``planned_network``; on a GPU, estimate the step of the trainer's recipe ``settings`` (its
    precision resolved here) with the memory ``options`` (``mc_chunk``, ``checkpointing``, ``accumulate_steps``), warn when
    explicit settings exceed the plan's memory target, and return the message that stops training
    (:func:`check_gpu_memory`) when the free memory is below it; None otherwise. No estimate on the CPU (it
    takes seconds, and the target is a GPU's)."""
    planned = network is not None and patch_size == network["patch_size"] and batch_size == network["batch_size"]
    if is_main and network is not None and not (planned and planned_network):
        print(f"the plan for this dataset (--planned_network=True --patch_size=None --batch_size=None): {plan_line}")
    if device.type != "cuda":
        return None
    estimate = step_peak_bytes(model, resolve_precision(settings.precision, device), settings)
    if network is not None and not planned and is_main:
        warning = over_budget_warning(estimate(patch_size, batch_size, options), network, patch_size, batch_size,
                                      plan_line)
        if warning:
            print(warning)
    return check_gpu_memory(device, estimate, patch_size, batch_size, total_strides(model.config["strides"]), options)
