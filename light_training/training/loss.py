"""Training losses: Diff-UNet's (segmentation CE + boundary DC+CE + MC-Diff uncertainty-weighted CE) and the
plain U-Net baseline's (DC+CE); :func:`training_loss` picks the one of the network's output.

Diff-UNet: L = CE(pred, y) + [DC + CE](boundary_logits, boundary_target) + lambda(epoch) mean_v(CE_v(pred, y) u_v),
lambda(epoch) = exp(-10 (1 - epoch / max_epoch)^2): the uncertainty term ramps up over training.

Differences from the original release: there the third term is mean(CE) * mean(u) (the already averaged
CE times the mean uncertainty, which re-weights the whole batch but not the uncertain voxels); here the
CE of each voxel is weighted by that voxel's uncertainty, as the paper describes. The boundary branch is
trained with soft Dice + CE (nnU-Net's DC+CE) rather than CE alone: a boundary target covers a few percent
of the voxels, and with CE alone the branch learnt to predict no boundary at all.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from diffunet import DiffUNetOutput, PlainUNetOutput

__all__ = ["uncertainty_lambda", "dice_ce", "diffunet_loss", "unet_loss", "training_loss"]

# nnU-Net's soft Dice: foreground classes, tp/fp/fn summed over the batch ("batch Dice"), smooth 1e-5
_SOFT_DICE = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)


def uncertainty_lambda(epoch: float, max_epoch: float) -> float:
    """lambda = exp(-10 (1 - epoch / max_epoch)^2); epoch / max_epoch is clipped to [0, 1]."""
    if max_epoch <= 0:
        raise ValueError(f"max_epoch must be > 0, got {max_epoch}")
    progress = min(max(epoch / max_epoch, 0.0), 1.0)
    return math.exp(-10.0 * (1.0 - progress) ** 2)


def _check_label(logits: torch.Tensor, label: torch.Tensor) -> None:
    if label.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"label must be (B, D, H, W) = {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(label.shape)}")


def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nnU-Net's DC+CE terms: soft Dice loss 1 - Dice of softmax(``logits``) (B, K, D, H, W) against the
    class map ``target`` (B, D, H, W) over the foreground classes with tp/fp/fn summed over the batch,
    and the mean cross-entropy. Computed in float32 (outside autocast). Returns (dice_loss, ce), scalars.
    A class absent from the target and predicted nowhere scores Dice 1 (loss 0)."""
    _check_label(logits, target)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits, target = logits.float(), target.long()
        return _SOFT_DICE(logits, target[:, None]), F.cross_entropy(logits, target)


def diffunet_loss(output: DiffUNetOutput, label: torch.Tensor, epoch: float, max_epoch: float
                  ) -> dict[str, torch.Tensor]:
    """Loss of one Diff-UNet training forward.

    Args:
        output: a :class:`diffunet.DiffUNetOutput` (``logits`` and ``boundary_logits`` (B, K, D, H, W),
            ``boundary_target`` (B, D, H, W) int64, ``uncertainty`` (B, D, H, W) or None).
        label: ``(B, D, H, W)`` int64 class indices.
        epoch, max_epoch: for the ramp lambda(epoch).
    Returns:
        scalar float32 tensors ``loss`` (total, differentiable), ``ce``, ``boundary_ce``,
        ``boundary_dice_loss``, ``uncertainty_ce`` (the weighted CE before lambda; 0 when ``uncertainty`` is
        None), ``lambda``.
    """
    logits = output.logits
    _check_label(logits, label)
    label = label.long()
    ce_voxel = F.cross_entropy(logits.float(), label, reduction="none")  # (B, D, H, W), float32
    ce = ce_voxel.mean()
    boundary_dice, boundary_ce = dice_ce(output.boundary_logits, output.boundary_target)
    if output.uncertainty is None:
        uncertainty_ce = torch.zeros((), device=ce.device)
    else:
        # the uncertainty comes from no-grad passes: a weight, not a quantity to optimise
        uncertainty_ce = (ce_voxel * output.uncertainty.detach().float()).mean()
    lam = ce.new_full((), uncertainty_lambda(epoch, max_epoch))  # a fill on the device, no host copy
    loss = ce + boundary_ce + boundary_dice + lam * uncertainty_ce
    return {"loss": loss, "ce": ce.detach(), "boundary_ce": boundary_ce.detach(),
            "boundary_dice_loss": boundary_dice.detach(), "uncertainty_ce": uncertainty_ce.detach(), "lambda": lam}


def unet_loss(output: PlainUNetOutput, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """The plain U-Net's DC+CE on the segmentation: scalar ``loss`` (differentiable), ``ce``, ``dice_loss``."""
    dice, ce = dice_ce(output.logits, label)
    return {"loss": ce + dice, "ce": ce.detach(), "dice_loss": dice.detach()}


def training_loss(output: DiffUNetOutput | PlainUNetOutput, label: torch.Tensor, epoch: float,
                  max_epoch: float) -> dict[str, torch.Tensor]:
    """The loss of the network that produced ``output``: :func:`diffunet_loss` or :func:`unet_loss`."""
    if isinstance(output, DiffUNetOutput):
        return diffunet_loss(output, label, epoch, max_epoch)
    if isinstance(output, PlainUNetOutput):
        return unet_loss(output, label)
    raise TypeError(f"no loss for a {type(output).__name__}; expected DiffUNetOutput or PlainUNetOutput")
