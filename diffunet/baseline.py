"""The plain U-Net baseline: the denoiser's U-Net shape fed only the image, without diffusion.

The ablation every reviewer asks for: the same features, strides and conv blocks as Diff-UNet's denoiser
(nnU-Net's plain 3D U-Net), with the image as its only input (no noised label, no time, no boundary
branch, no MBA), trained with nnU-Net's Dice + cross-entropy and predicted in one pass, through the
same sliding windows and mirroring as Diff-UNet (:mod:`light_training.inference.prediction`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from diffunet.presets import (ARCHITECTURE_KEYS, _suggest, check_image, check_patch_size, resolve_config, stage_kernels,
                              stage_strides)
from diffunet.pure import normalized_entropy
from diffunet.uncertainty import SampleOutput, uncertainty_map
from diffunet.unet import ImageUNet

__all__ = ["PlainUNet", "PlainUNetOutput"]


@dataclass
class PlainUNetOutput:
    """Training forward output: ``logits`` (B, K, D, H, W)."""
    logits: torch.Tensor


class PlainUNet(nn.Module):
    """The baseline U-Net (in_channels image channels, num_classes classes with background).

    ``preset``: "paper" or "tiny" (:mod:`diffunet.presets`), of which only the U-Net shape is used;
    ``overrides``: ``features``, ``strides``, ``convs_per_stage``, ``kernel_size``.
    ``PlainUNet(**model.config)`` rebuilds the architecture.
    """

    def __init__(self, in_channels: int, num_classes: int, preset: str = "paper", **overrides: Any):
        super().__init__()
        for key in overrides:
            if key not in ARCHITECTURE_KEYS:
                raise ValueError(f"unknown PlainUNet option {key!r}{_suggest(key, ARCHITECTURE_KEYS)}; "
                                 f"options are {sorted(ARCHITECTURE_KEYS)}")
        full = resolve_config(in_channels, num_classes, preset, **overrides)  # checks the shape
        self.config = {k: full[k] for k in ("in_channels", "num_classes", "preset", *ARCHITECTURE_KEYS)}
        c = self.config
        self.num_classes = c["num_classes"]
        self.unet = ImageUNet(c["in_channels"], self.num_classes, c["features"], stage_strides(c["strides"]),
                              c["convs_per_stage"], stage_kernels(c["kernel_size"], len(c["features"])))

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ValueError (listing sizes that work) unless the network can divide ``patch_size`` (z, y, x)."""
        check_patch_size(patch_size, self.config["strides"])

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> PlainUNetOutput:
        """Training forward: ``image`` (B, C, D, H, W) -> logits. ``label`` is not used (the call matches
        :meth:`DiffUNet.forward`, so the trainer calls every network alike)."""
        check_image(image, self.config)
        return PlainUNetOutput(self.unet(image)[0])

    @torch.no_grad()
    def sample_members(self, image: torch.Tensor, steps: int | None = None, rand_steps: int | None = None,
                       fusion: str | None = None, generator: torch.Generator | None = None,
                       return_boundary: bool = False) -> SampleOutput:
        """One pass: ``image`` (B, C, D, H, W) -> :class:`~diffunet.uncertainty.SampleOutput` with the softmax
        as the fused prediction and as the single member. The sampling arguments are accepted so that
        validation and prediction call every network alike, and ignored (nothing to sample or fuse);
        there is no boundary branch (``boundary_logits`` None)."""
        check_image(image, self.config)
        probs = torch.softmax(self.unet(image)[0].float(), dim=1)
        return SampleOutput(probs, probs, normalized_entropy(probs), 1)

    @torch.no_grad()
    def sample(self, image: torch.Tensor, steps: int | None = None, rand_steps: int | None = None,
               fusion: str | None = None, generator: torch.Generator | None = None,
               uncertainty: str = "total") -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities ``(B, K, D, H, W)`` float32 and the ``uncertainty`` map ``(B, D, H, W)`` (one member:
        "total" and "fused_entropy" are its entropy, "mutual_information" is 0)."""
        output = self.sample_members(image)
        return output.probs, uncertainty_map(uncertainty, output)
