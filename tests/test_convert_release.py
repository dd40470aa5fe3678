"""The release converter: a state dict with the original release's key names and shapes lands tensor by tensor
in DiffUNet. tests/reference/release_state_dict_*.txt list the keys and shapes of the release's ``DiffUNet(1, 2)``
and ``DiffUNet(4, 4)`` state dicts, as its own code builds them."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from light_training.checkpoint import build_model, load_checkpoint
from light_training.release import RELEASE_INFERENCE, RELEASE_PATCH_SIZE, convert_state_dict

REFERENCE = Path(__file__).resolve().parent / "reference"


def release_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the release's keys; keys that name one tensor in the release (a decoder's copy
    of its encoder, nnU-Net's all_modules views) get the same tensor."""
    g = torch.Generator().manual_seed(seed)
    state, tensors = {}, {}
    for line in (REFERENCE / f"release_state_dict_{name}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        canonical = (key.replace("decoder.encoder.", "encoder.").replace("all_modules.0.", "conv.")
                     .replace("all_modules.1.", "norm."))
        if canonical not in tensors:
            tensors[canonical] = torch.randn(tuple(int(v) for v in re.findall(r"\d+", shape)), generator=g)
        state[key] = tensors[canonical]
    return state


def _block(rest: str) -> str:
    """A denoiser block's parts: conv0 -> first, convs -> rest, temb_proj -> time_proj.1."""
    return rest.replace("conv0.", "first.").replace("convs.", "rest.").replace("temb_proj.", "time_proj.1.")


def expected_name(key: str) -> str | None:
    """Where a release tensor should land, written out plainly (independently of the converter's rules)."""
    key = key.replace("decoder.encoder.", "encoder.")
    if (".seg_layers." in key and ".seg_layers.4." not in key) or ".transforms.5." in key:
        return None  # deep-supervision heads, the bottleneck MBA conv
    if m := re.fullmatch(r"denoise_model\.encoder\.stages\.(\d+)\.0\.(.*)", key):
        return f"denoiser.stages.{m[1]}." + _block(m[2])
    if m := re.fullmatch(r"denoise_model\.decoder\.stages\.(\d+)\.(.*)", key):
        return f"denoiser.decoder.blocks.{m[1]}." + _block(m[2])
    for old, new in [("edge_model.encoder.", "boundary.encoder."),
                     ("edge_model.decoder.stages.", "boundary.decoder.blocks."),
                     ("edge_model.decoder.transpconvs.", "boundary.decoder.up."),
                     ("edge_model.decoder.seg_layers.4.", "boundary.decoder.head."),
                     ("denoise_model.encoder.transforms.", "denoiser.mba.convs."),
                     ("denoise_model.decoder.transpconvs.", "denoiser.decoder.up."),
                     ("denoise_model.decoder.seg_layers.4.", "denoiser.decoder.head."),
                     ("denoise_model.embedding_table.", "label_embedding.table."),
                     ("denoise_model.time_mlp.0.weights", "denoiser.time_embedding.freqs"),
                     ("denoise_model.time_mlp.1.", "denoiser.time_embedding.mlp.0."),
                     ("denoise_model.time_mlp.3.", "denoiser.time_embedding.mlp.2.")]:
        if key.startswith(old):
            return new + key[len(old):]
    raise AssertionError(f"the test does not know {key}")


@pytest.mark.parametrize("name,in_channels,num_classes", [("DiffUNet_1_2", 1, 2), ("DiffUNet_4_4", 4, 4)])
def test_every_release_tensor_lands_where_it_should(name, in_channels, num_classes):
    release = release_state(name)
    model, report = convert_state_dict(release)  # loads with strict=True
    assert model.config["in_channels"] == in_channels and model.config["num_classes"] == num_classes
    assert model.config["features"] == [32, 64, 128, 256, 320, 320] and model.config["strides"] == [1, 2, 2, 2, 2, 2]
    assert {k: model.config[k] for k in RELEASE_INFERENCE} == RELEASE_INFERENCE
    ours = model.state_dict()
    landed = set()
    for key, tensor in release.items():
        target = expected_name(key)
        if target is None:
            continue
        assert target in ours, (key, target)
        torch.testing.assert_close(ours[target], tensor, rtol=0, atol=0, msg=f"{key} -> {target}")
        landed.add(target)
    assert landed == set(ours)  # every tensor of ours came from the release
    dropped = {line.split(" ")[0] for line in report.dropped}
    assert dropped == {k for k in release if expected_name(k) is None}
    heads = 2 * sum(num_classes * c + num_classes for c in (320, 256, 128, 64))  # both U-Nets' lower heads
    assert report.dropped_parameters == 205_120 + heads  # 208,208 for DiffUNet(1, 2)
    unique = {t.data_ptr() for t in ours.values()}
    assert len(report.aliases) == len(release) - len(dropped) - len(unique)


def test_aliases_must_agree():
    release = release_state("DiffUNet_1_2")
    key = "edge_model.decoder.encoder.stages.2.0.convs.1.conv.weight"
    release[key] = release[key] + 1
    with pytest.raises(ValueError, match="should hold the same tensor"):
        convert_state_dict(release)


def test_command_writes_a_checkpoint_that_loads_like_ours(tmp_path, repo_root):
    torch.save({"module." + k: v for k, v in release_state("DiffUNet_1_2").items()}, tmp_path / "release.pt")
    with pytest.raises(ValueError, match="convert_release"):  # the raw release file: the loader says what to do
        load_checkpoint(tmp_path / "release.pt")
    torch.save({"state_dict": release_state("DiffUNet_1_2")}, tmp_path / "wrapped.pt")  # as Lightning-style saves wrap it
    with pytest.raises(ValueError, match="convert_release"):
        load_checkpoint(tmp_path / "wrapped.pt")

    def convert(*args):
        return subprocess.run([sys.executable, "tools/convert_release.py", f"--source={tmp_path / 'release.pt'}",
                               *args], cwd=repo_root, capture_output=True, text=True, timeout=300)
    result = convert(f"--output={tmp_path / 'ours.pt'}", "--channel_names=CT", "--label_names=background,airway",
                     "--dataset=aiib2023")
    assert result.returncode == 0, result.stderr
    assert "dropped 20 release keys, 208,208 parameters" in result.stdout and "transforms.5.weight" in result.stdout
    checkpoint = load_checkpoint(tmp_path / "ours.pt")
    assert checkpoint["plans"]["channel_names"] == ["CT"] and checkpoint["plans"]["labels"] == [0, 1]
    # the window prediction reads from every checkpoint: the paper's patch, or the one given
    assert checkpoint["config"]["patch_size"] == RELEASE_PATCH_SIZE == [128, 128, 128]
    model = build_model(checkpoint)
    assert sum(p.numel() for p in model.parameters()) == 62_834_512
    result = convert(f"--output={tmp_path / 'small.pt'}", "--patch_size=[64,96,96]")
    assert result.returncode == 0 and load_checkpoint(tmp_path / "small.pt")["config"]["patch_size"] == [64, 96, 96]
    result = convert(f"--output={tmp_path / 'bad.pt'}", "--channel_names=a,b")
    assert result.returncode == 1 and "1 channel" in result.stderr and not (tmp_path / "bad.pt").exists()


def test_converted_weights_sample_what_the_release_sampled():
    """Against the release's own output, not our reading of it: tests/reference/release_sample_DiffUNet_1_2.npz
    holds ``softmax(DiffUNet(1, 2)(x, ddim=True))[0, 1]`` of the release's code (github.com/ge-xing/DiffUNet,
    diffunet/diffunet_model.py) with the weights ``release_state("DiffUNet_1_2")``, ``x`` the 64^3 normal
    image below and ``torch.manual_seed(7)`` before the call: the central 16^3 voxels, the volume mean and
    the count above 0.5. (The release's code cannot be committed here; it produced these numbers once.)"""
    release = release_state("DiffUNet_1_2")
    model, _ = convert_state_dict(release)
    assert {k: model.config[k] for k in ("sampling_time_input", "fusion", "add_boundary_logits", "steps",
                                         "rand_steps", "bit_scale")} == {
        "sampling_time_input": "logsnr", "fusion": "mean", "add_boundary_logits": True, "steps": 3,
        "rand_steps": 1, "bit_scale": 0.001}  # the release's inference, written out here
    x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    with torch.no_grad():
        probs, _ = model.sample(x)
    reference = np.load(REFERENCE / "release_sample_DiffUNet_1_2.npz")
    p1 = probs[0, 1].numpy()
    np.testing.assert_allclose(p1[24:40, 24:40, 24:40], reference["p1"], atol=1e-4)
    assert abs(p1.mean() - reference["mean"]) < 1e-5 and abs(int((p1 > 0.5).sum()) - reference["positive"]) <= 2
    assert 0.05 < reference["p1"].mean() < 0.95 and reference["p1"].std() > 0.1  # not a saturated output
