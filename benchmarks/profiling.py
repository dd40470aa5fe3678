"""What benchmarks/gpu_profile.py sorts and sweeps: kernels by kind, and the candidate settings.

:func:`kernel_kind` names the kind of a GPU kernel (cuDNN, CUTLASS/cuBLAS, ATen's own, triton's from
inductor) from its name and the ATen op that launched it, and that of a CPU op from its name, so one table
shows where a step's time goes on either. :data:`TRAIN_CANDIDATES` and :data:`SAMPLE_CANDIDATES` are the
settings of issue 24's sweep; :func:`skip_reason` says why one cannot run here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from light_training.compilation import compile_for_training

__all__ = ["KINDS", "kernel_kind", "kernel_records", "time_by_kind", "fp32_kernel_math", "Candidate",
           "TRAIN_CANDIDATES", "SAMPLE_CANDIDATES", "skip_reason", "compile_training", "agreement_train",
           "agreement_sample"]

KINDS = ("conv forward", "conv backward", "normalisation", "element-wise", "casts and copies", "optimizer", "else")

_COPY = re.compile(r"copy|memcpy|memset|nchwtonhwc|nhwctonchw|transpose_readwrite|_to_copy|aten::to\b|clone|"
                   r"contiguous|aten::cat\b|catarray|aten::flip|aten::repeat|aten::fill_|aten::zero_|"
                   r"convert_?(bf16|fp16|half|float)")
_CONV_OP = re.compile(r"conv(olution)?(_transpose)?(\dd)?\b|conv3d|convolution")
_BACKWARD = re.compile(r"backward|dgrad|wgrad|bwd")
_CONV_KERNEL = re.compile(r"fprop|dgrad|wgrad|convolve|conv2d|conv3d|winograd|implicit_gemm|cudnn::cnn|"
                          r"scudnn|mkldnn_conv|slow_conv|convolution")
_NORM = re.compile(r"norm|welford|\bbn_|::bn_|_bn_")
_OPTIMIZER = re.compile(r"foreach|multi_tensor_apply|optimizer|sgd|lpnorm|non_finite_check|unscale|clip_grad|"
                        r"vector_norm")  # clip_grad_norm_ on the CPU: one linalg_vector_norm per gradient
_TRITON_COPY_PARTS = {"", "to", "copy", "clone", "cat", "permute", "view", "contiguous", "convert", "element", "type"}
_ELEMENTWISE = re.compile(r"elementwise|triton_(poi|per|red)|leaky_relu|relu|silu|sigmoid|softmax|tanh|gelu|"
                          r"functor|aten::(add|sub|mul|div|exp|log|where|clamp|pow|neg|rsqrt|sqrt|abs|"
                          r"maximum|minimum|lerp)(_|\b)")


def kernel_kind(name: str, op: str = "") -> str:
    """The kind (one of :data:`KINDS`) of a GPU kernel called ``name``, launched by the ATen op ``op`` (""
    when unknown), or of a CPU op called ``name`` (pass it as ``op`` too).

    Copies come first: cuDNN's layout conversions (``nchwToNhwcKernel``) run inside a convolution op and are
    what channels-last saves. Then the launching op decides for convolutions, since cuDNN runs a transposed
    convolution's forward as dgrad kernels; the kernel's name decides the rest. The optimizer's kind holds
    the whole step after backward: gradient clipping, the GradScaler's unscaling, SGD (foreach kernels).
    """
    n, o = name.lower(), op.lower()
    if n.startswith("triton"):  # inductor names a fused kernel by its ops: triton_poi_fused__to_copy_cat_0
        parts = set(re.sub(r"^triton_\w+?_fused_|_\d+$", "", n).split("_"))
        if "conv" in n:  # max-autotune's convolution templates
            return "conv backward" if _BACKWARD.search(o) else "conv forward"
        if parts & {"mm", "bmm", "addmm"}:
            return "else"
        if "norm" in n or "batch" in parts:
            return "normalisation"
        return "casts and copies" if parts <= _TRITON_COPY_PARTS else "element-wise"
    if _COPY.search(n):
        return "casts and copies"
    if _CONV_OP.search(o) or _CONV_KERNEL.search(n):
        backward = _BACKWARD.search(o) if _CONV_OP.search(o) else _BACKWARD.search(n)
        return "conv backward" if backward else "conv forward"
    if _OPTIMIZER.search(n) or _OPTIMIZER.search(o):
        return "optimizer"
    if _NORM.search(n) or _NORM.search(o):
        return "normalisation"
    if _ELEMENTWISE.search(n) and "reduce_kernel" not in n:  # reductions (sums, means of the loss) are "else"
        return "element-wise"
    return "else"


def kernel_records(prof: torch.profiler.profile, device_type: str) -> list[tuple[str, str, float]]:
    """``(kernel name, launching op, seconds)`` of every GPU kernel in ``prof`` (``device_type`` "cuda"), or
    ``(op, op, self seconds)`` of every CPU op (the CPU: ops' self times add up to the run)."""
    if device_type == "cuda":
        return [(k.name, event.name, k.duration / 1e6) for event in prof.events()
                if event.device_type == torch.autograd.DeviceType.CPU for k in event.kernels]
    return [(e.key, e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if e.self_cpu_time_total > 0]


def time_by_kind(records: list[tuple[str, str, float]]) -> dict[str, float]:
    """Seconds per kind of :data:`KINDS` (every kind present, 0 when none ran) of :func:`kernel_records`."""
    seconds = dict.fromkeys(KINDS, 0.0)
    for name, op, s in records:
        seconds[kernel_kind(name, op)] += s
    return seconds


def fp32_kernel_math(names: list[str]) -> dict[str, int]:
    """How many of the kernel ``names`` say what math they do: "tf32" in the name (cuDNN's and CUTLASS's TF32
    tensor-core kernels; an IEEE fp32 run has none) and "winograd" (fewer multiplications than the FLOP count
    assumes: a share above the fp32 peak without TF32)."""
    lower = [n.lower() for n in names]
    return {"tf32": sum("tf32" in n for n in lower), "winograd": sum("winograd" in n for n in lower)}


@dataclass(frozen=True)
class Candidate:
    """One setting of the sweep. ``precision``: "fp32" (the reference: IEEE), "low" (what "auto" resolves to:
    bf16 or fp16) or "fp16" (with the GradScaler); ``tf32``: float32 convolutions and matmuls on TF32 tensor
    cores; ``cast_weights``: sampling with the weights in the low precision; ``compile``: None (eager), a
    torch.compile mode for sampling, or "whole" / "regional" for training (compile_for_training)."""
    key: str
    label: str
    precision: str = "low"
    tf32: bool = False
    channels_last: bool = False
    cast_weights: bool = False
    compile: str | None = None


TRAIN_CANDIDATES = (
    Candidate("fp32", "fp32 (IEEE), eager: the reference", "fp32"),
    Candidate("tf32", "fp32 with TF32, eager", "fp32", tf32=True),
    Candidate("autocast", "{low} autocast, eager (today's trainer without compile)"),
    Candidate("autocast_cl", "{low} autocast, channels-last, eager", channels_last=True),
    Candidate("compiled", "{low} autocast, compiled whole networks", compile="whole"),
    Candidate("compiled_regional", "{low} autocast, compiled regionally (U-Net stages)", compile="regional"),
    Candidate("cl_compiled", "{low} autocast, channels-last, compiled whole", channels_last=True, compile="whole"),
    Candidate("fp16", "fp16 autocast + GradScaler, eager", "fp16"),
)
SAMPLE_CANDIDATES = (
    Candidate("fp32", "fp32 (IEEE), eager: the reference", "fp32"),
    Candidate("tf32", "fp32 with TF32, eager", "fp32", tf32=True),
    Candidate("autocast", "{low} autocast, eager"),
    Candidate("autocast_cl", "{low} autocast, channels-last, eager", channels_last=True),
    Candidate("weights", "{low} weights, eager", cast_weights=True),
    Candidate("weights_cl", "{low} weights, channels-last, eager", channels_last=True, cast_weights=True),
    Candidate("compiled", "{low} autocast, compiled (today's default)", compile="default"),
    Candidate("compiled_autotune", "{low} autocast, compiled max-autotune-no-cudagraphs",
              compile="max-autotune-no-cudagraphs"),
    Candidate("compiled_graphs", "{low} autocast, compiled with CUDA graphs", compile="reduce-overhead"),
    Candidate("weights_cl_compiled", "{low} weights, channels-last, compiled", channels_last=True,
              cast_weights=True, compile="default"),
    Candidate("weights_cl_graphs", "{low} weights, channels-last, CUDA graphs", channels_last=True,
              cast_weights=True, compile="reduce-overhead"),
)


def skip_reason(candidate: Candidate, device_type: str, low: str, compiling: bool) -> str | None:
    """Why ``candidate`` does not run here, or None: ``low`` is what "auto" resolves to on ``device_type``
    ("fp32" without bf16/fp16 units), ``compiling`` whether compiled candidates are wanted."""
    cuda = device_type == "cuda"
    if candidate.tf32 and not cuda:
        return "TF32 is a CUDA tensor-core mode"
    if candidate.precision == "fp16" and not cuda:
        return "fp16 autocast on the CPU is emulated"
    if candidate.precision == "low" and low == "fp32":
        return "no bf16/fp16 units here: 'auto' is fp32"
    if candidate.compile is not None and not compiling:
        return "compiled candidates off (--torch_compile=False)"
    if candidate.compile == "reduce-overhead" and not cuda:
        return "CUDA graphs need CUDA"
    return None


def compile_training(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The training candidates' compile: :func:`compile_for_training` of the whole networks ("whole") or of
    their repeated blocks ("regional", the training scripts' default), asked for explicitly."""
    if mode not in ("whole", "regional"):
        raise ValueError(f"mode={mode!r}: expected 'whole' or 'regional'")
    return compile_for_training(model, regional=mode == "regional")


def agreement_train(out: tuple, ref: tuple | None) -> tuple[dict, str]:
    """The first step's (loss, flat gradient) ``out`` against the fp32 reference's ``ref`` (None: not run): the
    loss's relative difference and the gradients' cosine (none where the step's gradient was not finite)."""
    loss, grad = out
    if ref is None or loss is None or ref[0] is None:
        return {}, "-" if loss is not None else "NaN/Inf step"
    loss_diff = abs(loss - ref[0]) / abs(ref[0])
    if not bool(torch.isfinite(grad).all()):  # fp16: the GradScaler's first scale overflowed; it skipped the step
        return {"loss_rel_diff": loss_diff}, f"loss {loss_diff:.2%}, gradient NaN/Inf (a skipped fp16 step)"
    cosine = float(torch.nn.functional.cosine_similarity(grad.cpu(), ref[1], dim=0))
    return {"loss_rel_diff": loss_diff, "grad_cosine": cosine}, f"loss {loss_diff:.2%}, grad cos {cosine:.5f}"


def agreement_sample(out: torch.Tensor, ref: torch.Tensor | None) -> tuple[dict, str]:
    """The window's probabilities ``out`` (K, *window) against the fp32 reference's ``ref`` (None: not run)."""
    if ref is None:
        return {}, "-"
    out = out.cpu()
    same = float((out.argmax(0) == ref.argmax(0)).float().mean())
    diff = float((out - ref).abs().max())
    return {"argmax_agreement": same, "max_abs_prob_diff": diff}, f"argmax {same:.3%}, max|dp| {diff:.4f}"
