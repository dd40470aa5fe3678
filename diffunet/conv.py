"""3-D convolutions that run through oneDNN on a CPU whatever the batch size.

PyTorch's CPU convolution picks oneDNN (mkldnn) for fp32 only when its heuristic expects oneDNN to win:
batch > 1, or batch x channels x depth x height above 20,480 (``ConvParams::use_mkldnn``). A batch-1
call on a deep, small feature map (a sliding window, one mirror at a time) falls to the single-threaded
native ``aten::slow_conv3d_forward`` instead: 88-90 % of a tiny-model window's sampling time, 3-5x
slower than oneDNN on the same call (``benchmarks/bench_speed.py``, row "eager batch 1"). bf16 always
takes oneDNN, which is why a CPU with bf16 units never showed it.

Two more CPU faults are handled here (``docs/precision.md``):

* The backward of a training step re-asks PyTorch's heuristic: ``aten.mkldnn_convolution``'s derivative is
  ``aten.convolution_backward``, which picks the single-threaded ``Slow3d`` kernel at batch 1 (below
  20,480 for batch x channels x depth x height). Where ``torch._C._select_conv_backend`` says ``Slow3d``,
  :func:`conv3d` keeps oneDNN's forward and runs oneDNN's backward at batch 2: the sample beside a zero
  one, which adds nothing to the weight gradient. Half of that backward's work is wasted, and per layer it
  is still 1.8-4x faster than ``Slow3d`` on one thread, a tiny-model step 1.4-1.5x on two
  (``docs/precision.md``); oneDNN offers no batch-1 backward to call from Python.
* oneDNN's bf16 weight gradient (``jit_bf16`` at ISA levels ``avx512_core`` and ``avx512_core_bf16``: AMD
  Zen 4, Intel before Sapphire Rapids) reads uninitialised memory when the input is smaller than the kernel
  along an axis (a 2 x 2 x 2 bottleneck under a 3 x 3 x 3 kernel): inf/NaN or 1e30 at random steps.
  :func:`bf16_guard` sends such convolutions to fp32 (they are tiny, so this costs nothing measurable).

:class:`Conv3d` calls oneDNN's convolution directly where the heuristic would not (an fp32 CPU tensor,
outside autocast and outside ``torch.compile``, where inductor chooses its own kernels);
:class:`ConvTranspose3d` with kernel == stride (every up-sampling of our U-Nets) is a matrix product
per voxel, which BLAS runs at any batch. Both are drop-in ``nn`` subclasses: same parameters, same
state-dict keys, same results (to float rounding), same autograd.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["onednn_direct", "batch2_backward", "bf16_guard", "pytorch_choice", "conv3d", "Conv3d", "ConvTranspose3d"]

_direct_enabled = True  # False only inside pytorch_choice()
_guard_enabled = True  # False only inside pytorch_choice(): the estimator models CUDA, which has no such guard
_batch2_enabled = True  # False only inside pytorch_choice(forward=False)


def onednn_direct(device_type: str, dtype: torch.dtype, autocast: bool, compiling: bool,
                  mkldnn_available: bool) -> bool:
    """Whether a convolution should call oneDNN itself instead of going through ``F.conv3d``'s choice.

    Only fp32 on a CPU with oneDNN, outside autocast (autocast casts ``F.conv3d``'s inputs to bf16/fp16,
    which take oneDNN anyway; a direct call would silently run fp32) and outside ``torch.compile``
    (inductor lowers convolutions to oneDNN by itself, with prepacked weights). CUDA: never.
    """
    return (device_type == "cpu" and dtype == torch.float32 and not autocast and not compiling
            and mkldnn_available)


def batch2_backward(direct: bool, needs_grad: bool, groups: int, backend: str, backend_at_batch_2: str) -> bool:
    """Whether a direct oneDNN convolution (:func:`onednn_direct`) of a batch-1 input should run its
    backward at batch 2 (the sample beside a zero one): where autograd will need it, where
    ``aten.convolution_backward`` would run ``backend`` (the name ``torch._C._select_conv_backend`` gives
    for the input) = ``"Slow3d"``, the single-threaded native kernel, and where it takes oneDNN
    (``backend_at_batch_2`` = ``"Mkldnn"``) at batch 2. PyTorch keeps its native kernel at every batch
    below 16 for a 1 x 1 kernel on one thread, where it is the faster; grouped convs always take oneDNN."""
    return direct and needs_grad and groups == 1 and backend == "Slow3d" and backend_at_batch_2 == "Mkldnn"


def bf16_guard(device_type: str, compute_dtype: torch.dtype, weight_grad: bool, spatial: Sequence[int],
               extent: Sequence[int]) -> bool:
    """Whether a convolution must run in fp32 to keep oneDNN's CPU bf16 weight gradient away from an
    input ``spatial`` (D, H, W) smaller than the kernel's ``extent`` (dilation * (k - 1) + 1 per axis)
    along some axis, where that kernel returns garbage (module docstring). Only on a CPU, for bf16
    (``compute_dtype``: autocast's dtype inside autocast, else the input's), and only when the weight
    gradient will be computed (``weight_grad``); inference keeps bf16."""
    return (device_type == "cpu" and compute_dtype == torch.bfloat16 and weight_grad
            and any(s < k for s, k in zip(spatial, extent)))


class _Batch2Backward(torch.autograd.Function):
    """oneDNN's convolution forward of a batch-1 input; its backward by oneDNN at batch 2: the sample beside
    a zero one, whose gradients are zero and add nothing to the weight's and the bias's (groups = 1)."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(input, weight)
        ctx.geometry = (list(stride), list(padding), list(dilation))
        ctx.has_bias = bias is not None
        return torch.ops.aten.mkldnn_convolution(input, weight, bias, padding, stride, dilation, 1)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        x2, g2 = (torch.cat([t, torch.zeros_like(t)]) for t in (x, grad))  # (2, C, D, H, W), (2, O, D', H', W')
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.convolution_backward(g2, x2, w, [w.shape[0]] if ctx.has_bias else None, stride,
                                                         padding, dilation, False, [0, 0, 0], 1, wanted)
        return (dx[:1] if wanted[0] else None), dw if wanted[1] else None, db if wanted[2] else None, None, None, None


@contextlib.contextmanager
def pytorch_choice(forward: bool = True) -> Iterator[None]:
    """Within this context the layers leave the choice of kernel and precision to PyTorch (its batch-1 slow
    path included, and no :func:`bf16_guard`): the baseline that ``benchmarks/bench_speed.py`` measures the
    direct path against, and the path the memory estimator follows (CUDA's). With ``forward=False`` only the
    backward's (the forward and the guard stay ours): the baseline of the batch-1 backward in
    ``benchmarks/bench_training.py``."""
    global _direct_enabled, _batch2_enabled, _guard_enabled
    previous = _direct_enabled, _batch2_enabled, _guard_enabled
    if forward:
        _direct_enabled = _guard_enabled = False
    _batch2_enabled = False
    try:
        yield
    finally:
        _direct_enabled, _batch2_enabled, _guard_enabled = previous


def _direct(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # asked first: dynamo then reads nothing else here (no graph break,
        return False                   # which would recompile per layer and make the conv arguments dynamic)
    return _direct_enabled and onednn_direct(x.device.type, x.dtype, torch.is_autocast_enabled("cpu"), False,
                         torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: Sequence[int] = (1, 1, 1), padding: Sequence[int] = (0, 0, 0),
           dilation: Sequence[int] = (1, 1, 1), groups: int = 1) -> torch.Tensor:
    """``F.conv3d`` (per-axis ``stride``, ``padding``, ``dilation``) through oneDNN where
    :func:`onednn_direct` says so, its backward at batch 2 where :func:`batch2_backward` says so,
    in fp32 where :func:`bf16_guard` says so. ``input`` (B, C_in, D, H, W), ``weight``
    (C_out, C_in / groups, kz, ky, kx); returns (B, C_out, D', H', W') (fp32 where guarded)."""
    autocast = torch.is_autocast_enabled("cpu")
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
    compute_dtype = torch.get_autocast_dtype("cpu") if autocast else input.dtype
    if _guard_enabled and bf16_guard(input.device.type, compute_dtype, torch.is_grad_enabled() and weight.requires_grad,
                  input.shape[2:], extent):
        with torch.autocast("cpu", enabled=False):
            return conv3d(input.float(), weight.float(), None if bias is None else bias.float(),
                          stride, padding, dilation, groups)
    if _direct(input):
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
        backends = ["", ""]
        if needs_grad and input.shape[0] == 1:
            backends = [torch._C._select_conv_backend(x, weight, bias, list(stride), list(padding), list(dilation),
                                                      False, [0, 0, 0], groups).name
                        for x in (input, input.expand(2, *input.shape[1:]))]
        if _batch2_enabled and batch2_backward(True, needs_grad, groups, *backends):
            return _Batch2Backward.apply(input, weight, bias, stride, padding, dilation)
        return torch.ops.aten.mkldnn_convolution(input, weight, bias, padding, stride, dilation, groups)
    return F.conv3d(input, weight, bias, stride, padding, dilation, groups)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN for fp32 CPU inputs of any batch size (see the module docstring)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d``; with kernel == stride, no padding and no groups (a U-Net's up-sampling), fp32
    CPU inputs are computed as one matrix product per input voxel: every voxel becomes its own
    ``kernel`` block of the output, ``out[b, o, z*s + i, ...] = sum_c x[b, c, z, ...] w[c, o, i, ...] + bias[o]``."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        blockwise = (output_size is None and self.kernel_size == self.stride and self.groups == 1
                     and not any(self.padding) and not any(self.output_padding) and self.dilation == (1, 1, 1))
        if not (blockwise and _direct(input)):
            return super().forward(input, output_size)
        b, _, d, h, w = input.shape
        o, (sz, sy, sx) = self.out_channels, self.kernel_size
        x = input.permute(0, 2, 3, 4, 1).reshape(-1, self.in_channels)  # (B*D*H*W, C)
        y = (x @ self.weight.reshape(self.in_channels, -1)).view(b, d, h, w, o, sz, sy, sx)
        y = y.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, o, d * sz, h * sy, w * sx)  # blocks into place
        return y if self.bias is None else y + self.bias.view(1, o, 1, 1, 1)
