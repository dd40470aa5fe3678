"""Boundary targets for the boundary branch (the paper's supervision), computed on the label's device."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["boundary_target"]


def boundary_target(label: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Keep the class of every labelled voxel that has a voxel of another label within ``width`` voxels
    (a (2 width + 1)^3 cube); every other voxel becomes 0.

    Args:
        label: ``(B, D, H, W)`` integer class map.
    Returns:
        ``(B, D, H, W)`` int64. Voxels outside the volume do not count as neighbours, so an object touching
        the patch border has no boundary there. Max/min pooling, so it runs wherever ``label`` lives.
    """
    if label.ndim != 4:
        raise ValueError(f"label must be (B, D, H, W), got shape {tuple(label.shape)}")
    if width < 1:
        raise ValueError(f"boundary width must be >= 1 voxel, got {width}")
    lab = label.long()
    as_float = lab[:, None].float()  # (B, 1, D, H, W); class indices are exact in float32
    k = 2 * width + 1
    # max_pool pads with -inf, so the padding never differs from the centre voxel
    upper = F.max_pool3d(as_float, k, stride=1, padding=width)
    lower = -F.max_pool3d(-as_float, k, stride=1, padding=width)
    edge = ((upper != as_float) | (lower != as_float))[:, 0]
    return torch.where(edge & (lab > 0), lab, torch.zeros_like(lab))
