"""The uncertainty maps: total predictive entropy and mutual information over the members (every mirror x
every DDIM step), worked out by hand from the members, through the mirrored sliding-window predictor."""
import itertools
import math

import numpy as np
import pytest
import torch

from diffunet import DiffUNet, PlainUNet
from diffunet.pure import normalized_entropy
from diffunet.uncertainty import MemberMean, SampleOutput, uncertainty_from_means, uncertainty_map
from light_training.inference.prediction import InferenceSettings, predict_volume

CPU = torch.device("cpu")


def test_maps_by_hand():
    # two members at one voxel: certain of class 0 and certain of class 1
    members = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 2, 1, 1, 1)
    mean = MemberMean()
    mean.add(members)
    member_probs, member_entropy = mean.result()
    output = SampleOutput(member_probs, member_probs, member_entropy, 2)
    assert float(uncertainty_map("total", output)) == pytest.approx(1.0)  # H([.5, .5]) / log 2
    assert float(uncertainty_map("mutual_information", output)) == pytest.approx(1.0)  # all disagreement
    # two identical uncertain members: total = own entropy, no disagreement
    p = torch.tensor([0.8, 0.2]).view(1, 1, 2, 1, 1, 1)
    mean = MemberMean()
    mean.add(p)
    mean.add(p)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    output = SampleOutput(p[0], *mean.result(), 2)
    assert float(uncertainty_map("total", output)) == pytest.approx(h, rel=1e-5)
    assert float(uncertainty_map("mutual_information", output)) == pytest.approx(0.0, abs=1e-6)
    assert float(uncertainty_map("fused_entropy", output)) == pytest.approx(h, rel=1e-5)
    with pytest.raises(ValueError, match="mutual_information"):
        uncertainty_from_means("variance", p[0], p[0, :, 0])


def _members_by_hand(model, image, flips):
    """Every mirror x step member of a one-window prediction, from the denoiser's recorded logits."""
    record = []
    forward = model.denoiser.forward
    model.denoiser.forward = lambda *a: record.append(forward(*a).float()) or record[-1]
    members = []
    for f in flips:
        record.clear()
        model.sample(image.flip(f) if f else image)
        members += [torch.softmax(r, 1).flip(f) if f else torch.softmax(r, 1) for r in record]
    model.denoiser.forward = forward
    return torch.stack(members)  # (F * T, 1, K, ...)


@pytest.mark.parametrize("kind", ["total", "mutual_information", "fused_entropy"])
def test_predictor_map_is_the_entropy_over_every_mirror_and_step(kind):
    torch.manual_seed(0)
    model = DiffUNet(1, 3, preset="tiny", steps=3).eval()
    image = torch.randn(1, 16, 16, 16)
    axes = (0, 2)
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=axes, precision="fp32", progress=False,
                                 batch_mirrors=False, uncertainty=kind)
    torch.manual_seed(1)
    probs, uncertainty = predict_volume(model, image, settings, CPU)
    flips = [c for r in range(3) for c in itertools.combinations([2 + a for a in axes], r)]
    torch.manual_seed(1)  # the same starting noise, mirror by mirror
    with torch.no_grad():
        members = _members_by_hand(model, image[None], flips)
    assert members.shape[0] == 4 * 3
    total = normalized_entropy(members.mean(0))[0]
    if kind == "total":
        expected = total
    elif kind == "mutual_information":
        expected = (total - normalized_entropy(members, dim=2).mean(0)[0]).clamp(min=0)
    else:  # the mean over mirrors of the entropy of each mirror's PURE-fused prediction
        torch.manual_seed(1)
        fused = []
        with torch.no_grad():
            for f in flips:
                p = model.sample(image[None].flip(f) if f else image[None])[0]
                fused.append(normalized_entropy(p.flip(f) if f else p)[0])
        expected = torch.stack(fused).mean(0)
    torch.testing.assert_close(uncertainty, expected, atol=1e-5, rtol=1e-4)
    assert 0 <= float(uncertainty.min()) and float(uncertainty.max()) <= 1
    assert float(uncertainty.max()) > 0


def test_mutual_information_is_zero_for_one_member_and_grows_with_mirrors():
    torch.manual_seed(0)
    model = PlainUNet(1, 2, preset="tiny").eval()
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    maps = {}
    for axes in [(), (0, 1, 2)]:
        settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=axes, precision="fp32", progress=False,
                                     uncertainty="mutual_information")
        maps[axes] = predict_volume(model, image, settings, CPU)[1]
    assert float(maps[()].abs().max()) < 1e-6  # one pass, no mirror: nothing to disagree
    assert float(maps[(0, 1, 2)].max()) > 1e-4
