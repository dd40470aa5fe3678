"""Sliding-window prediction: equivalence with a direct call, the fusion override, and exact geometry of what is
written."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffunet import DiffUNet
from light_training.io import Geometry, read_volume, write_volume
from light_training.preprocessing.raw_cases import find_raw_cases
from light_training.planning.dataset_plan import plan_dataset
from light_training.inference.prediction import (InferenceSettings, predict_volume, prepare_for_inference,
                                                  save_prediction)
from light_training.compilation import compile_for_inference
from light_training.preprocessing.preprocess import preprocess_case
from light_training.io import read_image

CPU = torch.device("cpu")


def tiny_model(in_channels=1, num_classes=2) -> DiffUNet:
    torch.manual_seed(0)
    return DiffUNet(in_channels, num_classes, preset="tiny").eval()


def test_one_window_equals_a_direct_call():
    model = tiny_model()
    image = torch.randn(1, 16, 24, 16)
    settings = InferenceSettings(patch_size=(16, 24, 16), mirror_axes=(), precision="fp32",
                                 channels_last=False, progress=False)
    torch.manual_seed(1)
    probs, uncertainty = predict_volume(model, image, settings, CPU)
    torch.manual_seed(1)
    with torch.no_grad():
        direct_probs, direct_unc = model.sample(image[None])
    assert probs.shape == (2, 16, 24, 16) and uncertainty.shape == (16, 24, 16)
    torch.testing.assert_close(probs, direct_probs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncertainty, direct_unc[0], atol=1e-5, rtol=1e-5)


def test_compiled_model_samples_like_the_eager_one():
    image = torch.randn(1, 1, 16, 16, 16)
    outputs = []
    for model in (tiny_model(), compile_for_inference(tiny_model())):
        torch.manual_seed(1)
        with torch.inference_mode():
            outputs.append(model.sample(image))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=1e-4, rtol=1e-4)
    # every network call of the sampling is compiled, the boundary encoder's too (it is called alone)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        model.sample(image)
    names = [event.key for event in prof.key_averages()]
    assert any(n.startswith("Torch-Compiled Region") for n in names)
    assert not [n for n in names if n in ("aten::convolution", "aten::mkldnn_convolution")], names


def test_mirroring_and_larger_volume_give_probabilities():
    model = tiny_model(4, 4)
    image = np.random.default_rng(0).normal(size=(4, 17, 26, 19)).astype(np.float32)
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(0, 2), sw_batch_size=2,
                                 precision="fp32", progress=False)
    probs, uncertainty = predict_volume(model, image, settings, CPU)
    assert probs.shape == (4, 17, 26, 19)
    torch.testing.assert_close(probs.sum(0), torch.ones(17, 26, 19), atol=1e-4, rtol=0)
    assert 0 <= float(uncertainty.min()) and float(uncertainty.max()) <= 1


def test_mirrors_one_call_or_one_call_each(monkeypatch):
    """Both ways of running the mirrored copies call the network as intended and give the same result
    (the starting noise of one call of 4 equals that of 4 calls of 1 under the same seed)."""
    model = tiny_model(1, 2)
    calls = []
    sample = model.sample_members
    monkeypatch.setattr(model, "sample_members",
                        lambda batch, **kw: calls.append(batch.shape[0]) or sample(batch, **kw))
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    results = {}
    for batched in (True, False):
        calls.clear()
        settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(0, 2), sw_batch_size=1,
                                     precision="fp32", progress=False, batch_mirrors=batched)
        torch.manual_seed(0)
        results[batched] = predict_volume(model, image, settings, CPU)
        assert calls == ([4] if batched else [1, 1, 1, 1])
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fusion_setting_overrides_the_models_own():
    image = torch.randn(1, 16, 16, 16)
    results = {}
    for fusion, model_fusion in [(None, "last"), ("last", "pure"), ("pure", "pure")]:
        torch.manual_seed(0)
        model = DiffUNet(1, 2, preset="tiny", fusion=model_fusion).eval()
        settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(), precision="fp32", progress=False,
                                     fusion=fusion)
        torch.manual_seed(1)
        results[fusion] = predict_volume(model, image, settings, CPU)[0]
    torch.testing.assert_close(results[None], results["last"], rtol=0, atol=0)  # same weights, same noise
    assert not torch.equal(results["last"], results["pure"])
    with pytest.raises(ValueError, match="fusion"):
        InferenceSettings(patch_size=(16, 16, 16), fusion="median")
    with pytest.raises(ValueError, match="uncertainty"):
        InferenceSettings(patch_size=(16, 16, 16), uncertainty="entropy")


def test_prediction_has_the_source_geometry(tmp_path):
    # a CT with non-identity direction, non-zero origin and anisotropic spacing, in the AIIB layout
    geometry = Geometry(spacing=(0.5, 0.703125, 0.75), origin=(-101.5, 42.25, -310.0),
                        direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), shape=(21, 18, 17))
    rng = np.random.default_rng(0)
    image = rng.normal(-800, 50, geometry.shape).astype(np.int16)
    label = np.zeros(geometry.shape, np.uint8)
    label[5:15, 6:12, 6:11] = 1
    image[label == 1] = -1000
    write_volume(image, geometry, tmp_path / "raw" / "img" / "AIIB23_7.nii.gz")
    write_volume(label, geometry, tmp_path / "raw" / "gt" / "AIIB23_7.nii.gz")
    raw_cases = find_raw_cases(tmp_path / "raw", "aiib2023")
    plans = plan_dataset(raw_cases, "aiib2023", target_spacing=[0.75, 0.75, 0.75])
    data, _, properties = preprocess_case(*read_image(raw_cases[0].image_files), None, plans, case="AIIB23_7")
    assert data.shape[1:] != geometry.shape  # really resampled
    model = tiny_model()
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(1,), progress=False)
    probs, uncertainty = predict_volume(model, data, settings, CPU)
    path = save_prediction(probs, uncertainty, properties, plans["labels"], tmp_path / "pred",
                           save_probabilities=True, save_uncertainty=True)
    source = sitk.ReadImage(str(tmp_path / "raw" / "img" / "AIIB23_7.nii.gz"))
    for written in [path, tmp_path / "pred" / "AIIB23_7_uncertainty.nii.gz"]:
        result = sitk.ReadImage(str(written))
        assert result.GetSize() == source.GetSize()
        assert result.GetSpacing() == source.GetSpacing()
        assert result.GetOrigin() == source.GetOrigin()
        assert result.GetDirection() == source.GetDirection()
    segmentation, _ = read_volume(path)
    assert set(np.unique(segmentation)) <= {0, 1}
    uncertainty_map, _ = read_volume(tmp_path / "pred" / "AIIB23_7_uncertainty.nii.gz")
    assert uncertainty_map.dtype == np.float32 and 0 <= uncertainty_map.min() and uncertainty_map.max() <= 1
    saved = np.load(tmp_path / "pred" / "AIIB23_7.npz")["probabilities"]
    assert saved.shape == (2, *geometry.shape)
    np.testing.assert_array_equal(saved.argmax(0), segmentation)


@pytest.mark.parametrize("channels_last, cast_weights", [(True, False), (False, True), (True, True)])
def test_channels_last_and_cast_weights_agree_with_fp32(channels_last, cast_weights):
    """The sweep's inference candidates (benchmarks/gpu_profile.py): channels_last_3d and bf16 weights give
    the fp32 prediction to bf16 rounding, at a tiny size on the CPU."""
    image = torch.randn(1, 16, 24, 16)
    outputs = []
    for settings in (InferenceSettings(patch_size=(16, 24, 16), mirror_axes=(), precision="fp32", progress=False),
                     InferenceSettings(patch_size=(16, 24, 16), mirror_axes=(), precision="bf16", progress=False,
                                       channels_last=channels_last, cast_weights=cast_weights)):
        model = prepare_for_inference(tiny_model(), settings, CPU)
        torch.manual_seed(1)
        outputs.append(predict_volume(model, image, settings, CPU)[0])
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == ({torch.bfloat16} if cast_weights else {torch.float32})
    if channels_last:
        assert model.boundary.encoder.stages[0][0].convs[0].conv.weight.is_contiguous(
            memory_format=torch.channels_last_3d)
    assert outputs[1].dtype == torch.float32
    assert (outputs[1] - outputs[0]).abs().max() < 0.05
    assert (outputs[1].argmax(0) == outputs[0].argmax(0)).float().mean() > 0.98


def test_cast_weights_in_fp32_is_refused():
    settings = InferenceSettings(patch_size=(16, 16, 16), precision="fp32", cast_weights=True)
    with pytest.raises(ValueError, match="nothing to cast"):
        prepare_for_inference(tiny_model(), settings, CPU)
