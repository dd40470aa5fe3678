"""Model presets and the validated, JSON-able model configuration.

A configuration is a plain dict; ``DiffUNet(**config)`` rebuilds the same architecture. Presets are
small named functions (DiT style); keyword overrides replace single entries.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable

from diffunet.pure import FUSIONS

__all__ = ["PRESETS", "FUSIONS", "BOUNDARY_TARGETS", "SAMPLING_TIME_INPUTS", "ARCHITECTURE_KEYS", "paper", "tiny",
           "resolve_config", "stage_strides", "stage_kernels", "total_strides", "preset_features", "check_patch_size", "check_image"]

BOUNDARY_TARGETS = ("boundary", "segmentation")
SAMPLING_TIME_INPUTS = ("t", "logsnr")
ARCHITECTURE_KEYS = ("features", "strides", "convs_per_stage", "kernel_size")  # the U-Net shape of a preset


def _defaults() -> dict[str, Any]:
    """Entries shared by every preset (the paper's and the original release's values)."""
    return {
        "convs_per_stage": 2,  # two 3x3x3 conv blocks per encoder and decoder stage
        "kernel_size": 3,  # one odd int for every conv, or per stage an int or (z, y, x) (a planned network: 1x3x3 ...)
        "time_dim": 32,  # width of the time embedding MLP
        "time_fourier_dim": 16,  # learned sinusoidal features (8 frequencies x sin/cos), plus the raw t
        "bit_scale": 0.001,  # label embedding scale, a constant in the release
        "steps": 3,  # DDIM steps T at sampling
        "rand_steps": 1,  # independent DDIM starts R, averaged per step
        "mc_samples": 3,  # MC-Diff: extra no-grad denoiser passes K in the training forward
        "mba": True,  # multi-granularity boundary aggregation on/off (ablation)
        "mc_diff": True,  # uncertainty map in the training forward on/off (ablation)
        "fusion": "pure",  # how the T step predictions are fused: "pure", "mean" (release), "last"
        "boundary_target": "boundary",  # "boundary" (paper) or "segmentation" (release)
        "boundary_width": 1,  # neighbourhood radius in voxels of the boundary target
        "add_boundary_logits": False,  # release: add the boundary logits to the fused logits ("segmentation" only)
        "sampling_time_input": "t",  # what the time embedding gets when sampling: "t" (as in training) or
        #                              "logsnr" (log-SNR(t): the release's sampling, for converted release weights)
    }


def paper() -> dict[str, Any]:
    """nnU-Net's plain 3D U-Net shape used for AIIB2023 and BraTS2023: 6 stages, 32..320 features."""
    return {**_defaults(), "features": [32, 64, 128, 256, 320, 320], "strides": [1, 2, 2, 2, 2, 2]}


def tiny() -> dict[str, Any]:
    """4 stages, 8..64 features: CPU tests and the demo (patch sizes divisible by 8)."""
    return {**_defaults(), "features": [8, 16, 32, 64], "strides": [1, 2, 2, 2]}


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"paper": paper, "tiny": tiny}


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def preset_features(preset: str, num_stages: int) -> list[int]:
    """The widths of ``preset`` for a network of ``num_stages`` stages (a planned network's depth):
    "paper" doubles from 32 and caps at 320 (nnU-Net's rule, which the paper's 32..320 follows), "tiny"
    is a quarter of that (8, 16, 32, 64, 80, 80)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}{_suggest(preset, PRESETS)}; expected one of {sorted(PRESETS)}")
    widths = [min(32 * 2 ** s, 320) for s in range(int(num_stages))]
    return widths if preset == "paper" else [w // 4 for w in widths]


def stage_kernels(kernel_size, num_stages: int) -> list[tuple[int, int, int]]:
    """Per-stage conv kernels as (z, y, x) tuples from the ``kernel_size`` option: one int for every
    stage (the published network and older checkpoints), or a list with an int or a (z, y, x) triple
    per stage. ``ValueError`` unless every size is odd and positive and the list has ``num_stages`` entries."""
    entries = [kernel_size] * num_stages if isinstance(kernel_size, int) else list(kernel_size)
    out = [(int(k),) * 3 if isinstance(k, int) else tuple(int(v) for v in k) for k in entries]
    if len(out) != num_stages or any(len(k) != 3 or any(v < 1 or v % 2 == 0 for v in k) for k in out):
        raise ValueError(f"kernel_size must be an odd int or, per stage ({num_stages}), an odd int or (z, y, x) "
                         f"triple of odd ints, got {kernel_size!r}")
    return out


def stage_strides(strides: list) -> list[tuple[int, int, int]]:
    """Per-stage strides as (z, y, x) tuples (an int means the same stride on every axis)."""
    out = []
    for s in strides:
        out.append((int(s),) * 3 if isinstance(s, int) else tuple(int(v) for v in s))
    return out


def total_strides(strides: list) -> tuple[int, int, int]:
    """Product of the stage strides per axis: every patch size must be a multiple of it."""
    per_stage = stage_strides(strides)
    return tuple(math.prod(s[a] for s in per_stage) for a in range(3))


def check_patch_size(patch_size, strides: list) -> None:
    """Raise ValueError unless ``patch_size`` (z, y, x) is divisible by the total stride on every axis
    and the bottleneck keeps more than one voxel (instance norm needs more than one)."""
    patch = tuple(int(p) for p in patch_size)
    div = total_strides(strides)
    if len(patch) != 3:
        raise ValueError(f"patch size must have 3 entries (z, y, x), got {tuple(patch_size)}")
    bad = [a for a in range(3) if patch[a] <= 0 or patch[a] % div[a]]
    bottleneck = [patch[a] // div[a] for a in range(3)]
    if bad or math.prod(bottleneck) < 2:
        examples = ", ".join(str(tuple(d * k for d in div)) for k in (2, 3, 4))
        why = (f"axis {bad} is not a multiple of {div}" if bad
               else f"the bottleneck would be a single voxel {tuple(bottleneck)}")
        raise ValueError(f"patch size {patch} does not fit this network ({len(strides)} stages, total stride {div}): "
                         f"{why}. Use multiples of {div} per axis with at least 2 bottleneck voxels, "
                         f"e.g. {examples}")


def check_image(image, config: dict[str, Any]) -> None:
    """Raise ValueError unless ``image`` is ``(B, in_channels, D, H, W)`` with a patch size the network fits."""
    if image.ndim != 5 or image.shape[1] != config["in_channels"]:
        raise ValueError(f"image must be (B, {config['in_channels']}, D, H, W), got {tuple(image.shape)}")
    check_patch_size(image.shape[2:], config["strides"])


def resolve_config(in_channels: int, num_classes: int, preset: str = "paper", **overrides: Any) -> dict[str, Any]:
    """Preset entries with ``overrides`` applied and checked; raises ValueError on unknown or bad values."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}{_suggest(preset, PRESETS)}; expected one of {sorted(PRESETS)}")
    config = PRESETS[preset]()
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown DiffUNet option {key!r}{_suggest(key, config)}; "
                             f"options are {sorted(config)}")
        config[key] = list(value) if isinstance(value, tuple) else value
    config["strides"] = [list(s) if isinstance(s, (list, tuple)) else int(s) for s in config["strides"]]
    config["features"] = [int(f) for f in config["features"]]
    if not isinstance(config["kernel_size"], int):  # JSON-able: lists, never tuples
        config["kernel_size"] = [list(k) if isinstance(k, (list, tuple)) else int(k) for k in config["kernel_size"]]
    if int(in_channels) < 1 or int(num_classes) < 2:
        raise ValueError(f"need in_channels >= 1 and num_classes >= 2 (background included), "
                         f"got in_channels={in_channels}, num_classes={num_classes}")
    if len(config["features"]) != len(config["strides"]) or len(config["features"]) < 2:
        raise ValueError(f"features {config['features']} and strides {config['strides']} need the same length >= 2")
    if any(len(s) != 3 for s in stage_strides(config["strides"])):
        raise ValueError(f"each stride must be an int or a (z, y, x) triple, got {config['strides']}")
    stage_kernels(config["kernel_size"], len(config["features"]))  # raises on a bad one
    if config["fusion"] not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {config['fusion']!r}")
    if config["boundary_target"] not in BOUNDARY_TARGETS:
        raise ValueError(f"boundary_target must be one of {BOUNDARY_TARGETS}, got {config['boundary_target']!r}")
    if config["sampling_time_input"] not in SAMPLING_TIME_INPUTS:
        raise ValueError(f"sampling_time_input must be one of {SAMPLING_TIME_INPUTS}, "
                         f"got {config['sampling_time_input']!r}")
    if config["add_boundary_logits"] and config["boundary_target"] != "segmentation":
        raise ValueError("add_boundary_logits=True needs boundary_target='segmentation' (the release's setting): "
                         "a branch trained on boundaries would mark object interiors as background")
    for key in ("steps", "rand_steps", "mc_samples", "boundary_width", "time_fourier_dim", "time_dim"):
        if int(config[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if config["time_fourier_dim"] % 2:
        raise ValueError(f"time_fourier_dim must be even (sin and cos per frequency), got {config['time_fourier_dim']}")
    return {"in_channels": int(in_channels), "num_classes": int(num_classes), "preset": preset, **config}
