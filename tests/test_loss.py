"""Tests for light_training/training/loss.py: values worked out by hand, the lambda ramp, per-voxel weighting,
the boundary DC+CE, the plain U-Net's loss and the dispatch by output."""
import math

import pytest
import torch

from diffunet import DiffUNetOutput, PlainUNetOutput
from light_training.training.loss import dice_ce, diffunet_loss, training_loss, uncertainty_lambda, unet_loss


def _output(logits, boundary_logits=None, boundary_target=None, uncertainty=None):
    b, _, *spatial = logits.shape
    if boundary_logits is None:
        boundary_logits = torch.zeros_like(logits)
    if boundary_target is None:
        boundary_target = torch.zeros(b, *spatial, dtype=torch.long)
    return DiffUNetOutput(logits, boundary_logits, boundary_target, uncertainty)


def test_lambda_ramp():
    assert uncertainty_lambda(0, 100) == pytest.approx(math.exp(-10))
    assert uncertainty_lambda(50, 100) == pytest.approx(math.exp(-2.5))
    assert uncertainty_lambda(100, 100) == pytest.approx(1.0)
    assert uncertainty_lambda(150, 100) == pytest.approx(1.0)  # clipped
    with pytest.raises(ValueError, match="max_epoch"):
        uncertainty_lambda(1, 0)


def test_loss_values_by_hand():
    logits = torch.zeros(1, 2, 2, 2, 3)  # CE = log 2 on every voxel
    label = torch.randint(0, 2, (1, 2, 2, 3))
    u = torch.full((1, 2, 2, 3), 0.5)
    out = diffunet_loss(_output(logits, uncertainty=u), label, epoch=50, max_epoch=100)
    assert set(out) == {"loss", "ce", "boundary_ce", "boundary_dice_loss", "uncertainty_ce", "lambda"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    log2 = math.log(2)
    assert float(out["ce"]) == pytest.approx(log2)
    assert float(out["boundary_ce"]) == pytest.approx(log2)
    # boundary target all background, p = 1/2 for class 1 on 12 voxels: Dice = 1e-5 / (6 + 1e-5)
    assert float(out["boundary_dice_loss"]) == pytest.approx(1 - 1e-5 / (6 + 1e-5))
    assert float(out["uncertainty_ce"]) == pytest.approx(0.5 * log2)
    expected = 2 * log2 + float(out["boundary_dice_loss"]) + math.exp(-2.5) * 0.5 * log2
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)


def test_uncertainty_weights_each_voxel():
    # voxel 0 is wrong (high CE) and uncertain, voxel 1 is right and certain
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]]).T.reshape(1, 2, 1, 1, 2)
    label = torch.tensor([1, 1]).view(1, 1, 1, 2)
    u = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none").flatten()
    out = diffunet_loss(_output(logits, uncertainty=u), label, epoch=1, max_epoch=1)
    assert float(out["uncertainty_ce"]) == pytest.approx(float(ce[0]) / 2)
    assert float(out["uncertainty_ce"]) != pytest.approx(float(ce.mean() * u.mean()))  # the release's product


def test_no_uncertainty_gives_zero_term_and_gradients_flow():
    logits = torch.randn(2, 3, 2, 3, 4, requires_grad=True)
    boundary = torch.randn(2, 3, 2, 3, 4, requires_grad=True)
    label = torch.randint(0, 3, (2, 2, 3, 4))
    out = diffunet_loss(_output(logits, boundary, label), label, epoch=10, max_epoch=10)
    assert float(out["uncertainty_ce"]) == 0
    assert float(out["loss"].detach()) == pytest.approx(float(out["ce"] + out["boundary_ce"] + out["boundary_dice_loss"]))
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0 and boundary.grad.abs().sum() > 0


def test_bad_label_shape_raises():
    with pytest.raises(ValueError, match="label must be"):
        diffunet_loss(_output(torch.zeros(1, 2, 2, 2, 2)), torch.zeros(1, 2, 2, dtype=torch.long), 0, 1)


def test_soft_dice_by_hand_is_nnunet_batch_dice():
    """Soft Dice over the foreground classes, tp/fp/fn summed over the whole batch (nnU-Net's batch Dice)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, 5)
    target = torch.randint(0, 3, (2, 3, 4, 5))
    dice_loss, ce = dice_ce(logits, target)
    p = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float()
    tp = (p * onehot).sum((0, 2, 3, 4))[1:]
    denominator = (p.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)))[1:]
    expected = 1 - ((2 * tp + 1e-5) / (denominator + 1e-5)).mean()
    assert float(dice_loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(ce) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)), rel=1e-6)


def test_boundary_dice_term_rewards_the_boundary_not_the_background():
    """A branch that predicts no boundary at all has a low CE on a thin target, but its Dice term is 1."""
    target = torch.zeros(1, 1, 1, 100, dtype=torch.long)
    target[..., :3] = 1  # 3 % boundary voxels
    collapsed = torch.zeros(1, 2, 1, 1, 100)
    collapsed[:, 0] = 5.0  # confident background everywhere
    right = collapsed.clone()
    right[:, :, ..., :3] = torch.tensor([0.0, 5.0]).view(1, 2, 1, 1, 1)
    dice_collapsed, ce_collapsed = dice_ce(collapsed, target)
    dice_right, _ = dice_ce(right, target)
    assert float(ce_collapsed) < 0.2 and float(dice_collapsed) > 0.95
    assert float(dice_right) < 0.15  # soft probabilities of 0.993 and 0.007: Dice 0.9


def test_unet_loss_and_dispatch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, 4, requires_grad=True)
    label = torch.randint(0, 3, (2, 2, 3, 4))
    out = unet_loss(PlainUNetOutput(logits), label)
    assert set(out) == {"loss", "ce", "dice_loss"}
    dice, ce = dice_ce(logits, label)
    assert out["loss"].item() == pytest.approx((dice + ce).item())
    assert training_loss(PlainUNetOutput(logits), label, 0, 1).keys() == out.keys()
    assert "boundary_dice_loss" in training_loss(_output(logits.detach()), label, 0, 1)
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="PlainUNetOutput"):
        training_loss(logits, label, 0, 1)
