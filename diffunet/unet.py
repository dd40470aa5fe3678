"""The 3D U-Nets of nnU-Net's plain shape: the image U-Net (boundary branch, plain baseline) and the
time-conditioned denoiser.

Every conv block is nnU-Net's conv (with bias) -> instance norm (affine) -> LeakyReLU, built from
dynamic_network_architectures; down-sampling by strided convs, up-sampling by transposed convs,
no deep supervision.
"""
from __future__ import annotations

from typing import Any

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn

from diffunet.conv import Conv3d, ConvTranspose3d
from diffunet.diffusion import TimeEmbedding
from diffunet.mba import MBA

__all__ = ["conv_settings", "TimeConvBlocks", "Decoder", "ImageUNet", "DenoiseUNet"]


def conv_settings() -> dict[str, Any]:
    """nnU-Net's plain conv block settings (the release's values)."""
    return {"conv_bias": True, "norm_op": nn.InstanceNorm3d, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True}}


class TimeConvBlocks(nn.Module):
    """``num_convs`` conv blocks; a linear projection of SiLU(time embedding) is added after the first."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int, kernel_size, stride, time_dim: int):
        super().__init__()
        settings = conv_settings()
        self.first = ConvDropoutNormReLU(Conv3d, in_channels, out_channels, kernel_size, stride, **settings)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels))
        self.rest = nn.Sequential(*[ConvDropoutNormReLU(Conv3d, out_channels, out_channels, kernel_size, 1,
                                                        **settings) for _ in range(num_convs - 1)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, D, H, W), ``temb`` (B, time_dim) -> (B, C_out, D', H', W')."""
        x = self.first(x)
        x = x + self.time_proj(temb)[:, :, None, None, None]
        return self.rest(x)


class Decoder(nn.Module):
    """U-Net decoder: per stage transposed conv up, concat with the skip, conv blocks (time-conditioned
    when ``time_dim`` is set) with the kernel of the skip's encoder stage (nnU-Net's rule); a 1x1x1 conv
    to ``num_classes`` logits on the top stage only. ``kernels``: per stage (z, y, x), top first."""

    def __init__(self, features: list[int], strides: list, num_classes: int, convs_per_stage: int,
                 kernels: list, time_dim: int | None = None):
        super().__init__()
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for s in range(len(features) - 1, 0, -1):  # bottleneck first
            below, skip = features[s], features[s - 1]
            self.up.append(ConvTranspose3d(below, skip, strides[s], strides[s], bias=True))
            if time_dim is None:
                self.blocks.append(StackedConvBlocks(convs_per_stage, Conv3d, 2 * skip, skip, kernels[s - 1], 1,
                                                     **conv_settings()))
            else:
                self.blocks.append(TimeConvBlocks(convs_per_stage, 2 * skip, skip, kernels[s - 1], 1, time_dim))
        self.head = Conv3d(features[0], num_classes, kernel_size=1)

    def forward(self, skips: list[torch.Tensor], temb: torch.Tensor | None = None) -> torch.Tensor:
        """``skips``: encoder outputs top stage first, bottleneck last -> logits (B, K, D, H, W)."""
        x = skips[-1]
        for up, block, skip in zip(self.up, self.blocks, reversed(skips[:-1])):
            x = torch.cat([up(x), skip], dim=1)
            x = block(x) if temb is None else block(x, temb)
        return self.head(x)


class ImageUNet(nn.Module):
    """nnU-Net's plain U-Net on the image: logits, plus its encoder features of every stage (for MBA).
    Diff-UNet's boundary branch, and the plain U-Net baseline (:mod:`diffunet.baseline`).
    ``strides``, ``kernels``: per stage (z, y, x) tuples, top first."""

    def __init__(self, in_channels: int, num_classes: int, features: list[int], strides: list,
                 convs_per_stage: int, kernels: list):
        super().__init__()
        self.encoder = PlainConvEncoder(in_channels, len(features), features, Conv3d, list(kernels), strides,
                                        convs_per_stage, return_skips=True, **conv_settings())
        self.decoder = Decoder(features, strides, num_classes, convs_per_stage, kernels)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, D, H, W)`` -> encoder features per stage, top first."""
        return self.encoder(image)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, C, D, H, W)`` -> boundary logits ``(B, K, D, H, W)`` and the encoder features."""
        skips = self.encoder(image)
        return self.decoder(skips), skips


class DenoiseUNet(nn.Module):
    """Denoiser: concat(image, x_t) and time t -> class logits; encoder features fused with the boundary
    features by MBA after every stage (``mba=False``: no boundary input at all)."""

    def __init__(self, in_channels: int, num_classes: int, features: list[int], strides: list,
                 convs_per_stage: int, kernels: list, time_dim: int, time_fourier_dim: int, mba: bool):
        super().__init__()
        self.time_embedding = TimeEmbedding(time_dim, time_fourier_dim)
        self.stages = nn.ModuleList()
        channels = in_channels + num_classes
        for feat, stride, kernel in zip(features, strides, kernels):
            self.stages.append(TimeConvBlocks(convs_per_stage, channels, feat, kernel, stride, time_dim))
            channels = feat
        self.mba = MBA(features) if mba else None
        self.decoder = Decoder(features, strides, num_classes, convs_per_stage, kernels, time_dim)

    def forward(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                boundary: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Args:
            image: ``(N, C, D, H, W)``; x_t: ``(N, K, D, H, W)`` noised label embedding; t: ``(N,)`` in [0, 1].
            boundary: :meth:`MBA.prepare` output for the boundary batch B (N a multiple of B); ignored
                when the model was built with ``mba=False``.
        Returns:
            logits ``(N, K, D, H, W)``.
        """
        temb = self.time_embedding(t)  # (N, time_dim)
        x = torch.cat([image, x_t.to(image.dtype)], dim=1)  # (N, C + K, D, H, W)
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x, temb)
            if self.mba is not None:
                x = self.mba.fuse(s, x, boundary)
            skips.append(x)
        return self.decoder(skips, temb)
