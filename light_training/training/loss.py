"""Diff-UNet training loss: segmentation CE + boundary CE + MC-Diff uncertainty-weighted CE.

L = CE(pred, y) + CE(boundary_logits, boundary_target) + lambda(epoch) * mean_v(CE_v(pred, y) * u_v),
lambda(epoch) = exp(-10 (1 - epoch / max_epoch)^2): the uncertainty term ramps up over training.

Difference from the original release: there the third term is mean(CE) * mean(u) (the already averaged
CE times the mean uncertainty, which re-weights the whole batch but not the uncertain voxels). Here the
CE of each voxel is weighted by that voxel's uncertainty, as the paper describes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["uncertainty_lambda", "diffunet_loss"]


def uncertainty_lambda(epoch: float, max_epoch: float) -> float:
    """lambda = exp(-10 (1 - epoch / max_epoch)^2); epoch / max_epoch is clipped to [0, 1]."""
    if max_epoch <= 0:
        raise ValueError(f"max_epoch must be > 0, got {max_epoch}")
    progress = min(max(epoch / max_epoch, 0.0), 1.0)
    return math.exp(-10.0 * (1.0 - progress) ** 2)


def diffunet_loss(output, label: torch.Tensor, epoch: float, max_epoch: float) -> dict[str, torch.Tensor]:
    """Loss of one training forward.

    Args:
        output: a :class:`diffunet.DiffUNetOutput` (``logits`` and ``boundary_logits`` (B, K, D, H, W),
            ``boundary_target`` (B, D, H, W) int64, ``uncertainty`` (B, D, H, W) or None).
        label: ``(B, D, H, W)`` int64 class indices.
        epoch, max_epoch: for the ramp lambda(epoch).
    Returns:
        scalar float32 tensors ``loss`` (total, differentiable), ``ce``, ``boundary_ce``,
        ``uncertainty_ce`` (the weighted CE before lambda; 0 when ``uncertainty`` is None), ``lambda``.
    """
    logits = output.logits
    if label.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"label must be (B, D, H, W) = {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(label.shape)}")
    label = label.long()
    ce_voxel = F.cross_entropy(logits.float(), label, reduction="none")  # (B, D, H, W), float32
    ce = ce_voxel.mean()
    boundary_ce = F.cross_entropy(output.boundary_logits.float(), output.boundary_target.long())
    if output.uncertainty is None:
        uncertainty_ce = torch.zeros((), device=ce.device)
    else:
        # the uncertainty comes from no-grad passes: a weight, not a quantity to optimise
        uncertainty_ce = (ce_voxel * output.uncertainty.detach().float()).mean()
    lam = torch.tensor(uncertainty_lambda(epoch, max_epoch), device=ce.device)
    loss = ce + boundary_ce + lam * uncertainty_ce
    return {"loss": loss, "ce": ce.detach(), "boundary_ce": boundary_ce.detach(),
            "uncertainty_ce": uncertainty_ce.detach(), "lambda": lam}
