"""The plain U-Net baseline and build_network: it trains with DC+CE, validates and checkpoints through the
same Trainer as Diff-UNet, and predicts a volume in one pass per window and mirror."""
import numpy as np
import pytest
import torch

from diffunet import DiffUNet, PlainUNet, build_network
from light_training.checkpoint import build_model, load_checkpoint, save_checkpoint
from light_training.inference.prediction import InferenceSettings, predict_volume
from light_training.plans import Plans
from light_training.training.step import TrainSettings
from light_training.training.trainer import Trainer

CPU = torch.device("cpu")


def _sphere_batch(batch=2, shape=(16, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    label = (((z - 7.5) ** 2 + (y - 7.5) ** 2 + (x - 7.5) ** 2) < 25).long()[None].repeat(batch, 1, 1, 1)
    image = label[:, None].float() + 0.5 * torch.randn(batch, 1, *shape, generator=g)
    return image, label


class _Patches:
    """Stands in for ValidationPatches: fixed (image, label) numpy batches."""

    def __init__(self, image, label):
        self.image, self.label = image.numpy(), label.numpy()

    def __len__(self):
        return len(self.image)

    def batches(self, batch_size, rank=0, world_size=1):
        yield self.image, self.label


def test_build_network_variants_and_options():
    unet = build_network("unet", 4, 3, preset="tiny", mba=False, mc_diff=True, boundary_target="boundary")
    assert isinstance(unet, PlainUNet) and unet.config["features"] == [8, 16, 32, 64]
    assert PlainUNet(**unet.config).config == unet.config
    diff = build_network("diffunet", 4, 3, preset="tiny", mba=False, mc_diff=None)
    assert isinstance(diff, DiffUNet) and diff.config["mba"] is False and diff.config["mc_diff"] is True
    with pytest.raises(ValueError, match="'diffunet', 'unet'"):
        build_network("nnunet", 1, 2)
    with pytest.raises(ValueError, match="mba"):
        build_network("unet", 1, 2, preset="tiny", mbaa=True)
    with pytest.raises(ValueError, match="PlainUNet option"):
        PlainUNet(1, 2, preset="tiny", steps=3)
    # the baseline is the denoiser's U-Net shape without the label and time inputs: fewer parameters
    n_unet = sum(p.numel() for p in PlainUNet(1, 2).parameters())
    n_denoiser = sum(p.numel() for p in DiffUNet(1, 2).denoiser.parameters())
    assert 0.9 * n_denoiser < n_unet < n_denoiser


def test_baseline_trains_validates_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = build_network("unet", 1, 2, preset="tiny")
    settings = TrainSettings(max_epoch=4, num_iterations_per_epoch=1, batch_size=2, precision="fp32")
    trainer = Trainer(model, settings, tmp_path, Plans.from_json({"label_names": ["background", "ball"]}), {}, CPU)
    image, label = _sphere_batch()
    batch = {"image": image, "label": label}
    losses = [trainer.train_step(batch, 0) for _ in range(15)]
    assert set(losses[0]) == {"loss", "ce", "dice_loss"}
    assert losses[-1]["loss"] < 0.5 * losses[0]["loss"], [t["loss"] for t in losses]
    scalars, slices = trainer.validate(_Patches(image, label))
    assert scalars["val/pseudo_dice"] > 0.8 and "val/boundary_dice" not in scalars
    assert set(slices) == {"image", "label", "prediction", "uncertainty"}
    save_checkpoint(trainer.state(1), tmp_path / "model" / "latest.pt")
    checkpoint = load_checkpoint(tmp_path / "model" / "latest.pt")
    assert checkpoint["model_class"] == "PlainUNet"
    rebuilt = build_model(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.sample(image)[0], model.eval().sample(image)[0], rtol=0, atol=0)


def test_diffunet_validation_reports_the_boundary_dice(tmp_path):
    torch.manual_seed(0)
    model = build_network("diffunet", 1, 2, preset="tiny", steps=2)
    settings = TrainSettings(max_epoch=4, num_iterations_per_epoch=1, batch_size=2, precision="fp32")
    trainer = Trainer(model, settings, tmp_path, Plans.from_json({"label_names": ["background", "ball"]}), {}, CPU)
    image, label = _sphere_batch()
    scalars, _ = trainer.validate(_Patches(image, label))
    assert 0 <= scalars["val/boundary_dice"] <= 1


def test_baseline_predicts_a_volume_in_one_pass_per_window_and_mirror(monkeypatch):
    torch.manual_seed(0)
    model = PlainUNet(1, 3, preset="tiny").eval()
    calls = []
    forward = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(0, 1), precision="fp32", progress=False,
                                 fusion="pure", steps=5)  # sampling settings mean nothing to a plain U-Net
    probs, uncertainty = predict_volume(model, image, settings, CPU)
    assert calls == [1, 1, 1, 1]  # one window, 4 mirrors, one pass each
    assert probs.shape == (3, 16, 16, 16) and uncertainty.shape == (16, 16, 16)
    torch.testing.assert_close(probs.sum(0), torch.ones(16, 16, 16), atol=1e-5, rtol=0)
    flips = [(), (2,), (3,), (2, 3)]
    with torch.no_grad():
        x = torch.from_numpy(image)[None]
        expected = torch.stack([torch.softmax(forward(x.flip(f) if f else x)[0], 1).flip(f) if f
                                else torch.softmax(forward(x)[0], 1) for f in flips]).mean(0)[0]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)
