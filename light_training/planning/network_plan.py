"""The network plan: patch size, per-axis pooling, per-stage kernels and batch size for a dataset.

nnU-Net's reasoning (Isensee et al. 2021, "nnU-Net", Methods: "rule-based parameters"), our code:

- pooling: a stage halves an axis only while that axis's spacing is within ``ANISOTROPY_FACTOR`` (2) of
  the finest spacing at that resolution (among the axes still long enough to pool), and only while the
  feature map keeps at least ``MIN_FEATURE_MAP`` voxels along it; at most ``MAX_STAGES`` stages (the paper's six). Thick slices
  (4 x 1 x 1 mm) are therefore pooled in plane first, along z only once the in-plane spacing has caught up.
- kernels: 3 along an axis whose spacing (at the stage's resolution) is within the factor 2 of the
  finest, else 1 (1x3x3 on the top stages of thick slices); once 3, an axis stays 3.
- patch: the largest patch of the median image's aspect (after resampling) whose training step fits the
  GPU memory target by the memory estimator (:func:`light_training.memory.estimator.estimate_train_step`, which
  runs the real model on fake tensors), floored to multiples of the total stride, so it never exceeds
  the median image. The search is a bisection over the scale, then one step more per axis: about a dozen
  estimates, each cached.
- batch: ``MIN_BATCH`` (2); larger only when the whole median image fits with room to spare, up to
  ``MAX_BATCH_SHARE`` (5 %) of the dataset's voxels per step (nnU-Net's caps).

The plan is made for the "paper" widths (32 doubling to 320, :func:`diffunet.presets.preset_features`);
a smaller preset takes the same strides, kernels, patch and batch with its own widths.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from diffunet.presets import preset_features
from light_training.memory.estimator import estimate_train_step

__all__ = ["MIN_FEATURE_MAP", "MAX_STAGES", "ANISOTROPY_FACTOR", "MIN_BATCH", "MAX_BATCH_SHARE", "PLAN_PRECISION",
           "Estimator", "network_topology", "round_patch", "planned_model_options", "real_estimator", "plan_network",
           "describe_network", "network_for_patch"]

MIN_FEATURE_MAP = 4  # voxels an axis keeps at least after its last pooling (nnU-Net's 4)
MAX_STAGES = 6  # the paper's depth: the first stage at full resolution, five poolings at most
ANISOTROPY_FACTOR = 2.0  # an axis pools / gets kernel 3 while its spacing is at most this times the finest
MIN_BATCH = 2  # nnU-Net's (and the paper's) batch size
MAX_BATCH_SHARE = 0.05  # a step sees at most this share of the dataset's voxels (nnU-Net's cap)
PLAN_PRECISION = "bf16"  # the training precision planned for (what "auto" picks on a current GPU)
PLAN_MODEL_CLASS = "DiffUNet"
_BISECTION_STEPS = 6

# (model_class, model_config, patch_size, batch_size, precision) -> peak bytes of one training step
Estimator = Callable[[str, dict, Sequence[int], int, str], int]


def network_topology(patch_size: Sequence[int], spacing: Sequence[float],
                     max_stages: int = MAX_STAGES) -> tuple[list[list[int]], list[list[int]]]:
    """Per-stage strides and kernels ``(z, y, x)`` for a patch (voxels) at ``spacing`` (mm), top stage first.

    The first stage never pools (stride 1); each further stage halves the axes that the pooling rule
    allows (module docstring) and the network ends at the first stage that could pool no axis.
    """
    size, current = [int(s) for s in patch_size], [float(s) for s in spacing]
    kernel = [1, 1, 1]

    def finest() -> float:  # among the axes that can still pool: one too short to pool blocks no other
        poolable = [current[a] for a in range(3) if size[a] // 2 >= MIN_FEATURE_MAP]
        return min(poolable or current)

    def kernel_now() -> list[int]:
        return [3 if k == 3 or current[a] <= ANISOTROPY_FACTOR * finest() else 1 for a, k in enumerate(kernel)]

    kernel = kernel_now()
    strides, kernels = [[1, 1, 1]], [kernel]
    while len(strides) < max_stages:
        reference = finest()
        stride = [2 if current[a] <= ANISOTROPY_FACTOR * reference and size[a] // 2 >= MIN_FEATURE_MAP else 1
                  for a in range(3)]
        if stride == [1, 1, 1]:
            break
        size = [s // st for s, st in zip(size, stride)]
        current = [sp * st for sp, st in zip(current, stride)]
        kernel = kernel_now()
        strides.append(stride)
        kernels.append(kernel)
    return strides, kernels


def _total_stride(strides: list[list[int]]) -> list[int]:
    return [math.prod(s[a] for s in strides) for a in range(3)]


def round_patch(patch_size: Sequence[float], spacing: Sequence[float]) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """``patch_size`` floored to multiples of the total stride of its own topology: (patch, strides, kernels)."""
    raw = [max(1, int(p)) for p in patch_size]
    strides, kernels = network_topology(raw, spacing)
    total = _total_stride(strides)
    return [max(t, (p // t) * t) for p, t in zip(raw, total)], strides, kernels


def planned_model_options(network: dict[str, Any], preset: str) -> dict[str, Any]:
    """The model options (``features``, ``strides``, ``kernel_size``) of a plan's ``network`` entry for
    ``preset``'s widths."""
    return {"features": preset_features(preset, len(network["strides"])),
            "strides": [list(s) for s in network["strides"]], "kernel_size": [list(k) for k in network["kernel_sizes"]]}


def real_estimator(model_class: str, model_config: dict, patch_size: Sequence[int], batch_size: int,
                   precision: str) -> int:
    """Peak bytes of one training step by :func:`light_training.memory.estimator.estimate_train_step`."""
    return estimate_train_step(model_class, model_config, list(patch_size), batch_size, precision).peak_bytes


def plan_network(median_shape: Sequence[float], spacing: Sequence[float], in_channels: int, num_classes: int,
                 gpu_memory_target_gb: float, num_cases: int = 1, estimator: Estimator | None = None,
                 model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The network plan (the ``"network"`` entry of ``plans.json``; see the module docstring).

    Args:
        median_shape: ``(z, y, x)`` voxels of the median image after resampling; spacing: its ``(z, y, x)`` mm.
        gpu_memory_target_gb: GiB one training step may hold at its peak.
        num_cases: cases in the dataset (caps the batch size).
        estimator: peak bytes of a step (default :func:`real_estimator`); tests pass a cheap one.
        model_options: Diff-UNet options the estimate is made with (default: the paper's).
    Returns:
        JSON-able dict: ``patch_size``, ``batch_size``, ``strides`` and ``kernel_sizes`` (per stage
        ``[z, y, x]``), ``features`` (paper widths), ``estimated_peak_gib``, the inputs, and
        ``estimator_calls``. ``ValueError`` when not even the smallest patch fits the target.
    """
    estimator = estimator or real_estimator
    median = [max(1.0, float(s)) for s in median_shape]
    if len(median) != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"median shape {median_shape} and spacing {spacing} must be 3 positive (z, y, x) values")
    if gpu_memory_target_gb <= 0:
        raise ValueError(f"gpu_memory_target_gb must be positive, got {gpu_memory_target_gb}")
    budget = gpu_memory_target_gb * 1024 ** 3
    cache: dict[tuple, int] = {}

    def config_for(strides: list[list[int]], kernels: list[list[int]]) -> dict[str, Any]:
        return {"in_channels": int(in_channels), "num_classes": int(num_classes), "preset": "paper",
                **(model_options or {}), "features": preset_features("paper", len(strides)), "strides": strides,
                "kernel_size": kernels}

    def peak(patch: list[int], batch: int) -> int:
        key = (tuple(patch), batch)
        if key not in cache:
            strides, kernels = network_topology(patch, spacing)
            cache[key] = int(estimator(PLAN_MODEL_CLASS, config_for(strides, kernels), patch, batch, PLAN_PRECISION))
        return cache[key]

    def candidate(scale: float) -> list[int]:
        return round_patch([m * scale for m in median], spacing)[0]

    full = candidate(1.0)
    if peak(full, MIN_BATCH) <= budget:
        patch = full
    else:  # bisection over the scale of the median image's aspect: the largest scale whose patch fits
        smallest = round_patch([min(m, 2 * MIN_FEATURE_MAP) for m in median], spacing)[0]
        if peak(smallest, MIN_BATCH) > budget:
            raise ValueError(f"not even a {smallest} patch at batch {MIN_BATCH} fits gpu_memory_target_gb="
                             f"{gpu_memory_target_gb} ({peak(smallest, MIN_BATCH) / 1024 ** 3:.1f} GiB estimated)")
        low, high, patch = 0.0, 1.0, smallest
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            trial = candidate(middle)
            if all(t >= s for t, s in zip(trial, smallest)) and peak(trial, MIN_BATCH) <= budget:
                low, patch = middle, max(patch, trial, key=math.prod)
            else:
                high = middle
        # one stride step more along each axis, the one furthest below the median's aspect first
        for axis in sorted(range(3), key=lambda a: patch[a] / median[a]):
            step = _total_stride(network_topology(patch, spacing)[0])[axis]
            trial = list(patch)
            trial[axis] += step
            if trial[axis] <= median[axis] and round_patch(trial, spacing)[0] == trial and peak(trial, MIN_BATCH) <= budget:
                patch = trial
    batch = MIN_BATCH
    if patch == full:  # the whole median image fits: more patches per step, within the caps
        cap = max(MIN_BATCH, int(MAX_BATCH_SHARE * num_cases * math.prod(median) / math.prod(patch)))
        per_patch = max(1, peak(patch, MIN_BATCH) / MIN_BATCH)
        batch = max(MIN_BATCH, min(cap, int(budget // per_patch)))
        while batch > MIN_BATCH and peak(patch, batch) > budget:
            batch = max(MIN_BATCH, min(batch - 1, int(batch * budget / peak(patch, batch))))
    strides, kernels = network_topology(patch, spacing)
    return {"patch_size": patch, "batch_size": batch, "strides": strides, "kernel_sizes": kernels,
            "features": preset_features("paper", len(strides)), "model_class": PLAN_MODEL_CLASS,
            "precision": PLAN_PRECISION, "gpu_memory_target_gb": float(gpu_memory_target_gb),
            "estimated_peak_gib": round(peak(patch, batch) / 1024 ** 3, 3),
            "median_shape": [float(m) for m in median_shape], "spacing": [float(s) for s in spacing],
            "estimator_calls": len(cache)}


def network_for_patch(network: dict[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
    """A plan's ``network`` entry for another ``patch_size`` (z, y, x): the strides, kernels and number of
    stages derived for that patch by the plan's own rules (:func:`network_topology` at the plan's
    ``spacing``), the rest of the plan unchanged. The plan itself when the patch is its own.

    ``ValueError`` (naming the patch, the plan and what to set) when the plan records no spacing or the
    patch is not a multiple of the total stride of its topology.
    """
    patch = [int(p) for p in patch_size]
    if patch == [int(p) for p in network["patch_size"]]:
        return network
    plan = f"the plan's network ({describe_network(network)})"
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size={list(patch_size)}: expected 3 positive voxel counts (z, y, x)")
    if not network.get("spacing"):
        raise ValueError(f"patch_size={patch} differs from {plan}, whose spacing is not recorded, so no topology "
                         f"can be derived for it: run the preprocessing script again, set "
                         f"--patch_size={network['patch_size']}, or --planned_network=False")
    strides, kernels = network_topology(patch, network["spacing"])
    fitted = round_patch(patch, network["spacing"])[0]
    if fitted != patch:
        raise ValueError(f"patch_size={patch}: the topology the plan's rules derive for it (strides "
                         f"{strides}) needs multiples of {_total_stride(strides)}; set --patch_size={fitted} "
                         f"(or the plan's {network['patch_size']})")
    return {**network, "patch_size": patch, "strides": strides, "kernel_sizes": kernels,
            "features": preset_features("paper", len(strides)), "derived_from_patch": list(network["patch_size"])}


def describe_network(network: dict[str, Any]) -> str:
    """One line of a plan's ``network`` entry: patch, batch, strides, kernels and the estimated peak."""
    def triples(values: list[list[int]]) -> str:
        return " ".join("x".join(str(v) for v in t) for t in values)

    return (f"patch {network['patch_size']} x batch {network['batch_size']}, {len(network['strides'])} stages, "
            f"strides {triples(network['strides'])}, kernels {triples(network['kernel_sizes'])}; "
            f"{network['estimated_peak_gib']:.1f} GiB estimated per step ({network['precision']}, paper widths; "
            f"target {network['gpu_memory_target_gb']:g} GiB)")
