"""Tests for light_training/loss.py: values worked out by hand, the lambda ramp, per-voxel weighting."""
import math

import pytest
import torch

from diffunet import DiffUNetOutput
from light_training.training.loss import diffunet_loss, uncertainty_lambda


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
    assert set(out) == {"loss", "ce", "boundary_ce", "uncertainty_ce", "lambda"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    log2 = math.log(2)
    assert float(out["ce"]) == pytest.approx(log2)
    assert float(out["boundary_ce"]) == pytest.approx(log2)
    assert float(out["uncertainty_ce"]) == pytest.approx(0.5 * log2)
    assert float(out["loss"]) == pytest.approx(2 * log2 + math.exp(-2.5) * 0.5 * log2, rel=1e-5)


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
    assert float(out["loss"].detach()) == pytest.approx(float(out["ce"] + out["boundary_ce"]))
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0 and boundary.grad.abs().sum() > 0


def test_bad_label_shape_raises():
    with pytest.raises(ValueError, match="label must be"):
        diffunet_loss(_output(torch.zeros(1, 2, 2, 2, 2)), torch.zeros(1, 2, 2, dtype=torch.long), 0, 1)
