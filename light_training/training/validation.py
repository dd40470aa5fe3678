"""Validation's scores: the per-class Dice of all validation patches together (nnU-Net's "pseudo Dice"),
from true/false positive and false negative counts that the ranks add up, and the batches' padding."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["dice_counts", "dice_from_counts", "validation_scalars", "pad_batch"]


def dice_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """True positives, false positives and false negatives of every foreground class: class maps ``pred``
    and ``target`` (any equal shapes) -> (3, num_classes - 1) float64, on their device."""
    counts = torch.zeros(3, num_classes - 1, dtype=torch.float64, device=pred.device)
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        counts[0, c - 1] = (p & t).sum()
        counts[1, c - 1] = (p & ~t).sum()
        counts[2, c - 1] = (~p & t).sum()
    return counts


def dice_from_counts(counts: torch.Tensor | np.ndarray) -> np.ndarray:
    """Dice 2 tp / (2 tp + fp + fn) per class from :func:`dice_counts` (summed over patches); NaN for a
    class absent from both the target and the prediction."""
    tp, fp, fn = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")


def validation_scalars(counts: torch.Tensor, class_names: Sequence[str], has_boundary: bool) -> dict[str, float]:
    """``val/dice_<class>`` and their mean ``val/pseudo_dice`` (classes absent from every patch and
    prediction left out) from ``counts`` (2, 3, K - 1): the segmentation's and the boundary branch's
    :func:`dice_counts` summed over the patches; ``val/boundary_dice`` too when ``has_boundary``."""
    dice = dice_from_counts(counts[0])
    scalars = {f"val/dice_{name}": float(d) for name, d in zip(class_names, dice)}
    scalars["val/pseudo_dice"] = _nanmean(dice)
    if has_boundary:
        scalars["val/boundary_dice"] = _nanmean(dice_from_counts(counts[1]))
    return scalars


def pad_batch(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` (N, ...) with its last item repeated up to ``size`` items (N <= size): a compiled model
    then sees one batch size, not one graph more for a short last batch."""
    if len(array) >= size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])
