"""3-D convolutions that run through oneDNN on a CPU whatever the batch size.

PyTorch's CPU convolution picks oneDNN (mkldnn) for fp32 only when its heuristic expects oneDNN to win:
batch > 1, or batch x channels x depth x height above 20,480 (``ConvParams::use_mkldnn``). A batch-1
call on a deep, small feature map (a sliding window, one mirror at a time) falls to the single-threaded
native ``aten::slow_conv3d_forward`` instead: 88-90 % of a tiny-model window's sampling time, 3-5x
slower than oneDNN on the same call (``benchmarks/bench_speed.py``, row "eager batch 1"). bf16 always
takes oneDNN, which is why a CPU with bf16 units never showed it.

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

__all__ = ["onednn_direct", "pytorch_choice", "conv3d", "Conv3d", "ConvTranspose3d"]

_direct_enabled = True  # False only inside pytorch_choice()


def onednn_direct(device_type: str, dtype: torch.dtype, autocast: bool, compiling: bool,
                  mkldnn_available: bool) -> bool:
    """Whether a convolution should call oneDNN itself instead of going through ``F.conv3d``'s choice.

    Only fp32 on a CPU with oneDNN, outside autocast (autocast casts ``F.conv3d``'s inputs to bf16/fp16,
    which take oneDNN anyway; a direct call would silently run fp32) and outside ``torch.compile``
    (inductor lowers convolutions to oneDNN by itself, with prepacked weights). CUDA: never.
    """
    return (device_type == "cpu" and dtype == torch.float32 and not autocast and not compiling
            and mkldnn_available)


@contextlib.contextmanager
def pytorch_choice() -> Iterator[None]:
    """Within this context the layers leave the choice of kernel to PyTorch (its batch-1 slow path
    included): the baseline that ``benchmarks/bench_speed.py`` measures the direct path against."""
    global _direct_enabled
    previous, _direct_enabled = _direct_enabled, False
    try:
        yield
    finally:
        _direct_enabled = previous


def _direct(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # asked first: dynamo then reads nothing else here (no graph break,
        return False                   # which would recompile per layer and make the conv arguments dynamic)
    return _direct_enabled and onednn_direct(x.device.type, x.dtype, torch.is_autocast_enabled("cpu"), False,
                         torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: Sequence[int] = (1, 1, 1), padding: Sequence[int] = (0, 0, 0),
           dilation: Sequence[int] = (1, 1, 1), groups: int = 1) -> torch.Tensor:
    """``F.conv3d`` (per-axis ``stride``, ``padding``, ``dilation``) through oneDNN where
    :func:`onednn_direct` says so. ``input`` (B, C_in, D, H, W), ``weight`` (C_out, C_in / groups, kz, ky, kx)."""
    if _direct(input):
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
