"""Tests for diffunet/: shapes, gradients, MBA, boundary targets, sampling (members, time input, the release's
fusion), PURE, MC-Diff grouping, parameter count, overfitting (segmentation and boundary branch)."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from diffunet import DiffUNet, boundary_target
from diffunet.mba import MBA, affinity_fusion
from diffunet.diffusion import logsnr_cosine
from diffunet.pure import StepFusion, fuse_steps, normalized_entropy, pure_step_weight, pure_weights, weighted_mean
from light_training.training.loss import diffunet_loss
from light_training.training.validation import dice_counts, dice_from_counts

ORIGINAL_PARAMETERS = 63_042_720  # DiffUNet(1, 2) of the original release


def _batch(in_channels=1, num_classes=2, shape=(16, 16, 24), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, (batch, *shape), generator=g)
    image = torch.randn(batch, in_channels, *shape, generator=g) + label[:, None].float()
    return image, label


def _sphere(shape=(16, 16, 16), radius=5.0):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [(s - 1) / 2 for s in shape]
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius ** 2).astype(np.int64)


# ----------------------------------------------------------------------------- shapes and config
@pytest.mark.parametrize("in_channels,num_classes", [(1, 2), (4, 4), (1, 4), (4, 2)])
def test_tiny_shapes(in_channels, num_classes):
    torch.manual_seed(0)
    model = DiffUNet(in_channels, num_classes, preset="tiny")
    image, label = _batch(in_channels, num_classes, shape=(24, 16, 32))
    out = model(image, label)
    assert out.logits.shape == (2, num_classes, 24, 16, 32)
    assert out.boundary_logits.shape == (2, num_classes, 24, 16, 32)
    assert out.boundary_target.shape == (2, 24, 16, 32) and out.boundary_target.dtype == torch.int64
    assert out.uncertainty.shape == (2, 24, 16, 32)
    probs, uncertainty = model.sample(image)
    assert probs.shape == (2, num_classes, 24, 16, 32) and uncertainty.shape == (2, 24, 16, 32)
    assert torch.allclose(probs.sum(1), torch.ones(2, 24, 16, 32), atol=1e-5)


@pytest.mark.parametrize("in_channels,num_classes", [(1, 2), (4, 4)])
def test_paper_preset_forward_shapes(in_channels, num_classes):
    torch.manual_seed(0)
    model = DiffUNet(in_channels, num_classes)  # paper preset; 32 x 32 x 64 leaves a 1 x 1 x 2 bottleneck
    image, label = _batch(in_channels, num_classes, shape=(32, 32, 64), batch=1)
    with torch.no_grad():
        out = model(image, label)
    assert out.logits.shape == out.boundary_logits.shape == (1, num_classes, 32, 32, 64)
    assert out.uncertainty.shape == (1, 32, 32, 64)
    probs, uncertainty = model.sample(image, steps=2)
    assert probs.shape == (1, num_classes, 32, 32, 64) and uncertainty.shape == (1, 32, 32, 64)


def test_paper_parameter_count():
    model = DiffUNet(1, 2)
    n = sum(p.numel() for p in model.parameters())
    # the release also holds 208,208 parameters it never uses (see diffunet/model.py)
    assert n == ORIGINAL_PARAMETERS - 205_120 - 2 * 1_544
    assert abs(n - ORIGINAL_PARAMETERS) / ORIGINAL_PARAMETERS < 0.01


def test_config_rebuilds_same_architecture():
    model = DiffUNet(4, 4, preset="tiny", steps=5, fusion="mean", boundary_width=2)
    config = json.loads(json.dumps(model.config))
    rebuilt = DiffUNet(**config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())


def test_per_stage_kernels_and_strides_build_a_planned_network():
    """A thick-slice plan: 1x3x3 kernels and no z pooling on the top stages; the config is JSON-able, rebuilds the
    same weights, the convs have the planned kernels, and an int kernel_size (older checkpoints) still builds."""
    from diffunet import PlainUNet
    from diffunet.presets import preset_features, stage_kernels

    kernels, strides = [[1, 3, 3], [1, 3, 3], 3, 3], [1, [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    torch.manual_seed(0)
    model = DiffUNet(1, 3, preset="tiny", kernel_size=kernels, strides=strides)
    config = json.loads(json.dumps(model.config))
    assert config["kernel_size"] == [[1, 3, 3], [1, 3, 3], 3, 3]
    rebuilt = DiffUNet(**config)
    rebuilt.load_state_dict(model.state_dict())  # strict: same shapes everywhere
    assert model.boundary.encoder.stages[0][0].convs[0].conv.weight.shape[2:] == (1, 3, 3)
    assert model.denoiser.stages[1].first.conv.weight.shape[2:] == (1, 3, 3)
    assert model.denoiser.decoder.blocks[-1].first.conv.weight.shape[2:] == (1, 3, 3)  # the top decoder stage
    assert model.denoiser.decoder.blocks[0].first.conv.weight.shape[2:] == (3, 3, 3)
    image, label = _batch(1, 3, shape=(12, 16, 24), batch=1)  # z only divisible by 4: z pooled twice
    out = model(image, label)
    assert out.logits.shape == (1, 3, 12, 16, 24)
    model.check_patch_size((12, 16, 24))
    assert PlainUNet(1, 3, preset="tiny", kernel_size=kernels, strides=strides)(image).logits.shape == (1, 3, 12, 16, 24)
    assert stage_kernels(3, 2) == [(3, 3, 3), (3, 3, 3)]
    assert DiffUNet(1, 2, preset="tiny", kernel_size=3).config["kernel_size"] == 3
    assert preset_features("paper", 7) == [32, 64, 128, 256, 320, 320, 320]
    assert preset_features("tiny", 6) == [8, 16, 32, 64, 80, 80]
    for bad in ([3, 3, 3], [[1, 3, 3], [1, 3], 3, 3], [2, 3, 3, 3], 4):
        with pytest.raises(ValueError, match="kernel_size"):
            DiffUNet(1, 2, preset="tiny", kernel_size=bad)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="fusion"):
        DiffUNet(1, 2, preset="tiny", fusoin="pure")
    with pytest.raises(ValueError, match="preset"):
        DiffUNet(1, 2, preset="huge")
    with pytest.raises(ValueError, match="segmentation"):
        DiffUNet(1, 2, preset="tiny", add_boundary_logits=True)
    with pytest.raises(ValueError, match="fusion"):
        DiffUNet(1, 2, preset="tiny", fusion="max")
    with pytest.raises(ValueError, match="sampling_time_input"):
        DiffUNet(1, 2, preset="tiny", sampling_time_input="snr")


def test_patch_size_check():
    tiny, paper = DiffUNet(1, 2, preset="tiny"), DiffUNet(1, 2)
    tiny.check_patch_size((16, 24, 32))
    paper.check_patch_size((128, 128, 128))
    with pytest.raises(ValueError, match=r"multiples of \(8, 8, 8\)"):
        tiny.check_patch_size((17, 16, 16))
    with pytest.raises(ValueError, match="single voxel"):
        tiny.check_patch_size((8, 8, 8))
    with pytest.raises(ValueError, match=r"multiples of \(32, 32, 32\)"):
        paper.check_patch_size((48, 64, 64))
    with pytest.raises(ValueError, match="patch size"):
        tiny(torch.zeros(1, 1, 12, 16, 16), torch.zeros(1, 12, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="patch size"):
        tiny.sample(torch.zeros(1, 1, 12, 16, 16))


def test_bad_inputs_raise():
    model = DiffUNet(1, 2, preset="tiny")
    image, label = _batch()
    with pytest.raises(ValueError, match="image must be"):
        model(image.repeat(1, 2, 1, 1, 1), label)
    with pytest.raises(ValueError, match="label must be"):
        model(image, label[:, :8])
    with pytest.raises(ValueError, match="class indices"):
        model(image, label + 1)


# ----------------------------------------------------------------------------- gradients and MBA
def test_gradients_reach_both_branches_and_mba():
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny")
    image, label = _batch()
    out = model(image, label)
    out.logits.float().pow(2).mean().backward()  # denoiser output only
    enc_conv = model.boundary.encoder.stages[0][0].convs[0].conv
    assert enc_conv.weight.grad is not None and enc_conv.weight.grad.abs().sum() > 0  # through MBA
    assert model.boundary.decoder.head.weight.grad is None  # not on the denoiser's path
    mba_w = model.denoiser.mba.convs[0].weight.grad
    c = model.config["features"][0]
    assert mba_w[:, :c].abs().sum() > 0 and mba_w[:, c:].abs().sum() > 0  # denoiser and boundary halves
    assert model.denoiser.stages[0].first.conv.weight.grad.abs().sum() > 0
    assert model.denoiser.stages[0].time_proj[1].weight.grad.abs().sum() > 0
    assert model.denoiser.time_embedding.freqs.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    out = model(image, label)
    diffunet_loss(out, label, epoch=5, max_epoch=10)["loss"].backward()
    assert model.boundary.decoder.head.weight.grad.abs().sum() > 0
    assert model.label_embedding.table.weight.grad.abs().sum() > 0


def _perturb_boundary(model):
    with torch.no_grad():
        for p in model.boundary.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("mba", [False, True])
def test_mba_off_ignores_boundary_features(mba):
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny", mba=mba)
    assert (model.denoiser.mba is None) == (not mba)
    image, label = _batch()
    torch.manual_seed(1)
    before = model(image, label).logits.detach()
    torch.manual_seed(1)
    sampled_before = model.sample(image)[0]
    _perturb_boundary(model)
    torch.manual_seed(1)
    after = model(image, label).logits.detach()
    torch.manual_seed(1)
    sampled_after = model.sample(image)[0]
    assert torch.equal(before, after) == (not mba)
    assert torch.equal(sampled_before, sampled_after) == (not mba)


def test_mba_split_conv_equals_conv_on_concat():
    torch.manual_seed(0)
    mba = MBA([4, 6])
    b = torch.randn(2, 4, 5, 6, 7)
    x = torch.randn(6, 4, 5, 6, 7)  # 3 copies of the boundary batch
    prepared = mba.prepare([b, torch.randn(2, 6, 2, 3, 3)])
    expected = mba.convs[0](torch.cat([x, b.repeat(3, 1, 1, 1, 1)], dim=1))
    assert torch.allclose(mba.fuse(0, x, prepared), expected, atol=1e-5)


def test_affinity_fusion_matches_distance_softmax():
    torch.manual_seed(0)
    x, b = torch.randn(4, 8, 2, 3, 2), torch.randn(2, 8, 2, 3, 2)
    out = affinity_fusion(x, b)
    for n in range(4):
        q, kv = x[n].flatten(1).T, b[n % 2].flatten(1).T  # (L, C)
        weights = torch.softmax(-torch.cdist(q, kv) ** 2 / math.sqrt(8), dim=1)
        assert torch.allclose(out[n].flatten(1).T, weights @ kv, atol=1e-4)


# ----------------------------------------------------------------------------- boundary targets
def test_boundary_target_cube_by_hand():
    label = torch.zeros(1, 7, 7, 7, dtype=torch.long)
    label[0, 1:6, 1:6, 1:6] = 2
    target = boundary_target(label)
    expected = torch.zeros_like(label)
    expected[0, 1:6, 1:6, 1:6] = 2
    expected[0, 2:5, 2:5, 2:5] = 0  # interior: all 26 neighbours share the label
    assert torch.equal(target, expected)
    target2 = boundary_target(label, width=2)
    assert int(target2[0, 3, 3, 3]) == 0 and int(target2[0, 2, 3, 3]) == 2  # centre is 3 voxels from background
    assert int((target2 > 0).sum()) == 124
    border = torch.ones(1, 5, 5, 5, dtype=torch.long)  # fills the patch: no neighbour of another label
    assert int(boundary_target(border).sum()) == 0


def test_boundary_target_matches_scipy_filters():
    rng = np.random.default_rng(0)
    label = ndimage.zoom(rng.integers(0, 4, (5, 6, 7)), 3, order=0)  # blocky multi-class map
    for width in (1, 2):
        size = 2 * width + 1
        edge = (ndimage.maximum_filter(label, size, mode="nearest") != label) | \
               (ndimage.minimum_filter(label, size, mode="nearest") != label)
        expected = np.where(edge & (label > 0), label, 0)
        got = boundary_target(torch.from_numpy(label)[None], width)[0].numpy()
        assert np.array_equal(got, expected)


def test_segmentation_target_mode_and_release_fusion():
    torch.manual_seed(0)
    model = DiffUNet(1, 3, preset="tiny", boundary_target="segmentation", add_boundary_logits=True, fusion="mean")
    image, label = _batch(num_classes=3)
    assert torch.equal(model(image, label).boundary_target, label)
    probs, uncertainty = model.sample(image)
    assert torch.allclose(probs.sum(1), torch.ones_like(uncertainty), atol=1e-5)


# ----------------------------------------------------------------------------- sampling, PURE, uncertainty
def test_sampling_is_deterministic_under_a_seed():
    model = DiffUNet(1, 2, preset="tiny", rand_steps=2)
    image, _ = _batch()
    torch.manual_seed(3)
    p1, u1 = model.sample(image)
    torch.manual_seed(3)
    p2, u2 = model.sample(image)
    assert torch.equal(p1, p2) and torch.equal(u1, u2)
    p3, _ = model.sample(image, generator=torch.Generator().manual_seed(3))
    p4, _ = model.sample(image, generator=torch.Generator().manual_seed(4))
    assert torch.equal(p3, model.sample(image, generator=torch.Generator().manual_seed(3))[0])
    assert not torch.equal(p3, p4)


def test_sample_under_autocast_and_channels_last():
    model = DiffUNet(1, 2, preset="tiny")
    image = _batch()[0].contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs, uncertainty = model.sample(image, steps=2, rand_steps=2)
    assert probs.dtype == uncertainty.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones_like(uncertainty), atol=1e-5)
    assert 0 <= float(uncertainty.min()) and float(uncertainty.max()) <= 1


def test_pure_equals_mean_when_weights_are_equal():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 4, 5, 6, 7), dim=2)  # (T, B, K, ...)
    assert torch.allclose(weighted_mean(probs, torch.full((3, 2, 5, 6, 7), 2.5)), probs.mean(0), atol=1e-6)
    uniform = torch.full((2, 1, 3, 2, 2, 2), 1 / 3)  # u = 1 everywhere -> w = exp(0) = 1 for every step
    assert torch.allclose(pure_weights(uniform), torch.ones(2, 1, 2, 2, 2))
    logits = torch.randn(3, 2, 4, 5, 6, 7)
    assert torch.allclose(fuse_steps(logits, "pure"),
                          weighted_mean(torch.softmax(logits, 2), pure_weights(torch.softmax(logits, 2))), atol=1e-6)


@pytest.mark.parametrize("certain_first", [True, False])
def test_pure_moves_toward_the_certain_step(certain_first):
    certain = torch.tensor([4.0, -4.0]).view(1, 2, 1, 1, 1)  # confident class 0
    uncertain = torch.tensor([-0.2, 0.2]).view(1, 2, 1, 1, 1)  # leaning to class 1
    steps = [certain, uncertain] if certain_first else [uncertain, certain]
    logits = torch.stack(steps)  # (T=2, B=1, K=2, 1, 1, 1)
    mean = torch.softmax(logits, 2).mean(0)
    pure = fuse_steps(logits, "pure")
    assert pure[0, 0] > mean[0, 0] + 0.02
    # the weights by hand: w_i = exp(sigmoid((i + 1) / 2) * (1 - u_i))
    probs = torch.softmax(logits, 2)
    u = normalized_entropy(probs[:, 0])
    w = torch.exp(torch.sigmoid(torch.tensor([0.5, 1.0])).view(2, 1, 1, 1) * (1 - u))
    assert torch.allclose(pure, (w[:, None, None] * probs).sum(0) / w.sum(0), atol=1e-6)


def test_pure_weight_by_hand_and_one_implementation():
    probs = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1, 1)
    u = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    for step, steps in [(0, 3), (2, 3), (4, 5)]:
        expected = math.exp((1 / (1 + math.exp(-(step + 1) / steps))) * (1 - u))
        assert float(pure_step_weight(probs, step, steps)) == pytest.approx(expected, rel=1e-6)
    stacked = torch.softmax(torch.randn(4, 1, 3, 2, 2, 2), dim=2)
    assert torch.equal(pure_weights(stacked), torch.stack([pure_step_weight(p, i, 4) for i, p in enumerate(stacked)]))


def test_other_fusions():
    logits = torch.randn(3, 1, 2, 2, 2, 2)
    assert torch.allclose(fuse_steps(logits, "mean"), torch.softmax(logits.mean(0), 1), atol=1e-6)
    assert torch.allclose(fuse_steps(logits, "last"), torch.softmax(logits[-1], 1), atol=1e-6)
    with pytest.raises(ValueError, match="fusion"):
        StepFusion(3, "median")


def test_uncertainty_range_and_confident_zero():
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 3, 3, 3)), 4).permute(0, 4, 1, 2, 3).float()
    assert torch.equal(normalized_entropy(one_hot), torch.zeros(2, 3, 3, 3))
    assert torch.allclose(normalized_entropy(torch.full((1, 4, 2, 2, 2), 0.25)), torch.ones(1, 2, 2, 2))
    torch.manual_seed(0)
    model = DiffUNet(1, 3, preset="tiny")
    image, label = _batch(num_classes=3)
    u_train = model(image, label).uncertainty
    _, u_sample = model.sample(image)
    for u in (u_train, u_sample):
        assert float(u.min()) >= 0 and float(u.max()) <= 1 and float(u.max()) > 0
    assert DiffUNet(1, 3, preset="tiny", mc_diff=False)(image, label).uncertainty is None


def _record_denoiser(model, record):
    """Wrap the denoiser so that every call's time input and logits are kept."""
    forward = model.denoiser.forward

    def recording(image, x_t, t, boundary=None):
        logits = forward(image, x_t, t, boundary)
        record.append((t.clone(), logits.float().clone()))
        return logits
    model.denoiser.forward = recording


@pytest.mark.parametrize("time_input", ["t", "logsnr"])
def test_sampling_time_input(time_input):
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny", steps=3, sampling_time_input=time_input).eval()
    record = []
    _record_denoiser(model, record)
    model.sample(_batch(batch=1)[0])
    t = torch.tensor([1.0, 2 / 3, 1 / 3])
    expected = logsnr_cosine(t) if time_input == "logsnr" else t
    assert torch.allclose(torch.stack([r[0][0] for r in record]), expected)


def test_members_and_the_release_fusion_by_hand():
    """Members: every start x step, softmax of its logits (+ the boundary logits with add_boundary_logits);
    the release's prediction: softmax(mean of the step logits + boundary logits)."""
    torch.manual_seed(0)
    model = DiffUNet(1, 3, preset="tiny", steps=2, rand_steps=2, fusion="mean", boundary_target="segmentation",
                     add_boundary_logits=True).eval()
    image = _batch(num_classes=3)[0]  # B = 2
    record = []
    _record_denoiser(model, record)
    output = model.sample_members(image, return_boundary=True)
    boundary_logits, _ = model.boundary(image)
    steps = torch.stack([r[1].unflatten(0, (2, 2)) for r in record])  # (T, R, B, K, ...)
    assert output.members == 4
    expected_probs = torch.softmax(steps.mean((0, 1)) + boundary_logits, dim=1)
    torch.testing.assert_close(output.probs, expected_probs, atol=1e-5, rtol=1e-5)
    members = torch.softmax(steps + boundary_logits, dim=3).flatten(0, 1)  # (T * R, B, K, ...)
    torch.testing.assert_close(output.member_probs, members.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.member_entropy, normalized_entropy(members, dim=2).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.boundary_logits, boundary_logits, atol=1e-5, rtol=1e-5)


def test_mc_diff_groups_the_passes_by_patch():
    """The uncertainty of patch b averages the K passes of patch b (the release's reshape mixes patches)."""
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny", mc_samples=3)
    image, label = _batch(batch=2)
    record = []
    _record_denoiser(model, record)
    out = model(image, label)
    logits_k = record[1][1]  # the no-grad call: (K * B, ...), index k * B + b
    for b in range(2):
        mean = logits_k[[b, 2 + b, 4 + b]].mean(0, keepdim=True)
        torch.testing.assert_close(out.uncertainty[b:b + 1], normalized_entropy(torch.softmax(mean, 1)),
                                   atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- overfitting
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    label = torch.from_numpy(_sphere())[None]  # (1, 16, 16, 16)
    image = label[:, None].float() + 0.3 * torch.randn(1, 1, 16, 16, 16)
    model = DiffUNet(1, 2, preset="tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        loss = diffunet_loss(model(image, label), label, epoch=step, max_epoch=60)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.2 * losses[0], losses[::10]
    output = model.sample_members(image, return_boundary=True)
    assert float((output.probs.argmax(1) == label).float().mean()) > 0.95
    # the boundary branch learnt the shell: predicting all background would score a boundary Dice of 0
    target = model.boundary_labels(label)
    assert 0 < int((target > 0).sum()) < 0.15 * target.numel()
    boundary_dice = dice_from_counts(dice_counts(output.boundary_logits.argmax(1), target, 2))[0]
    assert boundary_dice > 0.7, boundary_dice
