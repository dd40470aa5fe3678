"""Resampling rules: target shapes, the thick-slice axis, label safety, exact integer round trips."""
import numpy as np

from light_training.preprocessing.resampling import anisotropic_axis, resample_channels, resample_label, shape_for_spacing


def test_shape_for_spacing():
    assert shape_for_spacing((17, 18, 19), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (17, 18, 19)
    assert shape_for_spacing((10, 100, 100), (3.0, 0.7, 0.7), (1.0, 1.4, 1.4)) == (30, 50, 50)
    assert shape_for_spacing((1, 5, 5), (1.0, 1.0, 1.0), (4.0, 1.0, 1.0)) == (1, 5, 5)  # never 0


def test_anisotropic_axis():
    assert anisotropic_axis((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None
    assert anisotropic_axis((0.5, 0.7, 0.7), (0.5, 0.7, 0.7)) is None  # AIIB2023: ratio 1.4
    assert anisotropic_axis((5.0, 0.8, 0.8), (1.0, 1.0, 1.0)) == 0  # thick slices in the source
    assert anisotropic_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # ... or in the target
    assert anisotropic_axis((4.0, 4.0, 1.0), (1.0, 1.0, 1.0)) is None  # two coarse axes: no slice axis


def test_constant_image_and_probabilities_stay_consistent():
    image = np.full((2, 7, 8, 9), 3.5, np.float32)
    out = resample_channels(image, (11, 5, 13), order=3)
    assert out.shape == (2, 11, 5, 13) and out.dtype == np.float32
    np.testing.assert_allclose(out, 3.5, rtol=1e-5)
    rng = np.random.default_rng(0)
    probabilities = rng.random((3, 7, 8, 9)).astype(np.float32)
    probabilities /= probabilities.sum(0)
    for axis in (None, 0):
        out = resample_channels(probabilities, (13, 11, 6), order=1, axis=axis)
        np.testing.assert_allclose(out.sum(0), 1, atol=1e-5)
        assert out.min() >= 0


def test_label_resampling_is_label_safe_and_inverts_integer_zooms():
    label = np.zeros((9, 10, 11), np.uint8)
    label[2:7, 3:8, 2:9] = 1
    label[4:6, 4:6, 4:7] = 3  # no label 2: none may appear between 1 and 3
    up = resample_label(label, (18, 20, 22))
    assert up.dtype == np.uint8 and set(np.unique(up)) == {0, 1, 3}
    np.testing.assert_array_equal(resample_label(up, label.shape), label)  # x2 and back is exact
    thick = resample_label(label, (27, 10, 11), axis=0)  # nearest along z: every slice repeated 3 times
    np.testing.assert_array_equal(thick, np.repeat(label, 3, axis=0))
    np.testing.assert_array_equal(resample_label(thick, label.shape, axis=0), label)
    assert resample_label(np.full((4, 4, 4), 2, np.uint8), (5, 6, 7)).tolist() == np.full((5, 6, 7), 2).tolist()
