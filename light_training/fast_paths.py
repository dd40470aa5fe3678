"""The fast paths a stage may take on a device, and which of them it takes by default.

Each is a candidate of ``benchmarks/gpu_profile.py``'s sweep (issue 24) and an option the stages honour:

* ``channels_last``: the networks' weights and inputs in ``channels_last_3d`` (NDHWC), the layout cuDNN's
  bf16/fp16 3-D tensor-core kernels read directly (training and prediction);
* ``cast_weights``: prediction with the weights held in the low precision (bf16/fp16) that autocast runs
  in, so no call casts them again (prediction only; with fp32 there is nothing to cast);
* ``compile_mode``: torch.compile's mode for the sampling networks: "default", "max-autotune-no-cudagraphs"
  (inductor benchmarks its kernel choices) or "reduce-overhead" (CUDA graphs; CUDA only).

The defaults are a pure function of the device and the precision (:func:`fast_defaults`), so a CPU test
covers the branch a GPU takes. They are today's (no channels-last, autocast over fp32 weights, torch.compile's
default mode) until the sweep on a GPU shows a setting that is faster and agrees with the fp32 reference:
channels-last was measured slower on the CPU (benchmarks/bench_speed.py), and nothing else has a GPU
measurement yet (docs/gpu.md lists the goals and the empty cells).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STAGES", "COMPILE_MODES", "FastPaths", "fast_defaults", "resolve_fast_paths"]

STAGES = ("train", "predict")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass(frozen=True)
class FastPaths:
    """The fast paths of one stage: see the module docstring. ``cast_weights`` and ``compile_mode`` are
    prediction's (training compiles through :func:`light_training.compilation.compile_for_training`)."""
    channels_last: bool = False
    cast_weights: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r}: expected one of {list(COMPILE_MODES)}")


def fast_defaults(stage: str, device_type: str, precision: str) -> FastPaths:
    """What ``stage`` ("train" or "predict") takes on ``device_type`` ("cuda", "cpu", ...) in the resolved
    ``precision`` ("fp32", "bf16", "fp16") when the script leaves the choice to the device (None).

    Every branch returns today's settings: no GPU measurement has picked another yet (the sweep of
    benchmarks/gpu_profile.py decides, docs/gpu.md). Where one does, it changes here and only here.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {list(STAGES)}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r}: expected a resolved precision, 'fp32', 'bf16' or 'fp16'")
    if device_type == "cuda":
        # candidates awaiting the H100/H200 sweep: channels_last (cuDNN's NDHWC kernels), cast_weights,
        # compile_mode "max-autotune-no-cudagraphs" / "reduce-overhead" (sampling)
        return FastPaths(channels_last=False, cast_weights=False, compile_mode="default")
    # the CPU: channels_last_3d was slower with bf16 (bench_speed.py); CUDA graphs do not exist here
    return FastPaths(channels_last=False, cast_weights=False, compile_mode="default")


def resolve_fast_paths(stage: str, device_type: str, precision: str, channels_last: bool | None = None,
                       cast_weights: bool | None = None, compile_mode: str | None = None) -> FastPaths:
    """The script's choices, each None replaced by :func:`fast_defaults`'s. ``ValueError`` for a choice the
    device or stage cannot take: CUDA graphs off CUDA, cast weights in training or in fp32."""
    default = fast_defaults(stage, device_type, precision)
    for name, value in (("channels_last", channels_last), ("cast_weights", cast_weights)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected True, False or None (the device's default)")
    paths = FastPaths(default.channels_last if channels_last is None else channels_last,
                      default.cast_weights if cast_weights is None else cast_weights,
                      default.compile_mode if compile_mode is None else compile_mode)
    if paths.cast_weights and (stage == "train" or precision == "fp32"):
        raise ValueError(f"cast_weights=True needs prediction in bf16 or fp16, got stage={stage!r} in {precision}: "
                         f"training keeps fp32 weights (autocast), and fp32 has nothing to cast")
    if paths.compile_mode == "reduce-overhead" and device_type != "cuda":
        raise ValueError(f"compile_mode='reduce-overhead' runs CUDA graphs, which need a CUDA device, got "
                         f"{device_type!r}: use 'default' or 'max-autotune-no-cudagraphs'")
    return paths
