"""Preprocessing: discovery, plan statistics, normalisation, the exact way back, bad cases, reruns, scripts."""
import gzip
import subprocess
import sys

import numpy as np
import pytest

from light_training.io import Geometry, ImageReadError, read_image, read_json, read_label, write_volume
from light_training.preprocessing.normalization import foreground_mask
from light_training.preprocessing.raw_cases import check_nifti_file
from light_training.preprocessing.raw_cases import find_raw_cases
from light_training.preprocessing.preprocess import list_cases, load_case, preprocess_case, preprocess_dataset, restore_to_original
from light_training.planning.dataset_plan import plan_dataset, prepare_plans
from light_training.plans import plans_path
from light_training.preprocessing.resampling import anisotropic_axis
from light_training.synthetic.generate import generate_aiib2023, generate_brats2023

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
TILTED = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SEQUENCES = ["t1n", "t1c", "t2w", "t2f"]


def ellipsoid(shape, centre, radii):
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def make_ct(shape=(17, 18, 19), seed=0):
    """A CT-like (HU) image with a zero-padded first slice and an 'airway' (label 1) of ~100 HU."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-800, 60, shape).round().astype(np.int16)
    label = ellipsoid(shape, [s / 2 for s in shape], [s / 3.5 for s in shape]).astype(np.uint8)
    image[label == 1] = rng.normal(100, 30, int(label.sum())).round()
    image[0] = 0  # padding outside the scanned field: cropped away
    return image, label


def write_aiib(raw_dir, cases, spacing=(0.5, 0.703125, 0.703125), shape=(17, 18, 19)):
    for i, case in enumerate(cases):
        image, label = make_ct(shape, seed=i)
        geometry = Geometry(tuple(spacing), (-10.0 * i, 5.0, 20.5), TILTED if i % 2 else IDENTITY, shape)
        write_volume(image, geometry, raw_dir / "img" / f"{case}.nii.gz")
        write_volume(label, geometry, raw_dir / "gt" / f"{case}.nii.gz")
    return raw_dir


def make_mri(shape=(15, 16, 17), seed=0):
    """4 sequences inside an ellipsoidal 'brain' (0 outside) and a tumour labelled 2 (edema) / 1 / 3."""
    rng = np.random.default_rng(seed)
    brain = ellipsoid(shape, [s / 2 for s in shape], [s / 2.4 for s in shape])
    image = np.zeros((4, *shape), np.float32)
    for c in range(4):
        image[c][brain] = rng.normal(300 + 100 * c, 40, int(brain.sum())).clip(1)
    centre = [s / 2 for s in shape]
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(shape, centre, [s / 4.5 for s in shape])] = 2
    label[ellipsoid(shape, centre, [s / 7 for s in shape])] = 1
    label[ellipsoid(shape, centre, [s / 12 for s in shape])] = 3
    return image, label


def write_brats(raw_dir, cases, renamed=(), shape=(15, 16, 17)):
    for i, case in enumerate(cases):
        image, label = make_mri(shape, seed=i)
        geometry = Geometry((1.0, 1.0, 1.0), (3.0, -4.0, 5.0 * i), IDENTITY, shape)
        prefix = "" if case in renamed else f"{case}-"
        for c, name in enumerate(SEQUENCES):
            write_volume(image[c].astype(np.int16), geometry, raw_dir / case / f"{prefix}{name}.nii.gz")
        write_volume(label, geometry, raw_dir / case / f"{prefix}seg.nii.gz")
    return raw_dir


def run_pipeline(raw_dir, out_dir, dataset, target_spacing=None, skip_bad_cases=False, overwrite=False,
                 num_processes=0):
    raw_cases = find_raw_cases(raw_dir, dataset)
    plans = prepare_plans(plans_path(out_dir), raw_cases, dataset, target_spacing, num_processes, overwrite,
                          skip_bad_cases)
    return plans, preprocess_dataset(raw_cases, plans, out_dir, num_processes, overwrite, skip_bad_cases)


def test_find_raw_cases_layouts(tmp_path):
    write_brats(tmp_path / "brats", ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"], renamed=["BraTS-GLI-00001-000"])
    cases = find_raw_cases(tmp_path / "brats", "brats2023")
    assert [c.case for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert [p.name for p in cases[0].image_files] == [f"BraTS-GLI-00000-000-{s}.nii.gz" for s in SEQUENCES]
    assert [p.name for p in cases[1].image_files] == [f"{s}.nii.gz" for s in SEQUENCES]
    assert cases[1].label_file.name == "seg.nii.gz"
    assert find_raw_cases(tmp_path / "brats", "brats2023", with_labels=False)[0].label_file is None
    write_aiib(tmp_path / "aiib", ["AIIB23_1", "AIIB23_2"])
    cases = find_raw_cases(tmp_path / "aiib", "aiib2023")
    assert [c.label_file.parent.name for c in cases] == ["gt", "gt"]
    # prediction folders: img/<case>.nii.gz, or the files directly in the folder
    for folder in (tmp_path / "aiib", tmp_path / "aiib" / "img"):
        assert [c.case for c in find_raw_cases(folder, "aiib2023", with_labels=False)] == ["AIIB23_1", "AIIB23_2"]
    with pytest.raises(ValueError, match="no such folder"):
        find_raw_cases(tmp_path / "nowhere", "aiib2023")
    with pytest.raises(ValueError, match="not a shipped description"):
        find_raw_cases(tmp_path / "aiib", "kits")
    # a file stored as .nii beside a label stored as .nii.gz is one case (matched by name)
    write_aiib(tmp_path / "mixed", ["AIIB23_7"])
    (tmp_path / "mixed" / "img" / "AIIB23_7.nii.gz").rename(tmp_path / "mixed" / "img" / "AIIB23_7.nii")
    (mixed,) = find_raw_cases(tmp_path / "mixed", "aiib2023")
    assert mixed.image_files[0].name == "AIIB23_7.nii" and mixed.label_file.name == "AIIB23_7.nii.gz"
    assert mixed.label_file.is_file()


def test_plan_statistics_and_target_spacing(tmp_path):
    raw_dir = tmp_path / "raw"
    for i, spacing in enumerate([(0.5, 0.703125, 0.703125), (0.625, 0.75, 0.75), (1.0, 0.5, 0.5)]):
        write_aiib(tmp_path / f"part{i}", [f"AIIB23_{i}"], spacing=spacing, shape=(17, 18, 19 + i))
        for sub in ("img", "gt"):
            (raw_dir / sub).mkdir(parents=True, exist_ok=True)
            (tmp_path / f"part{i}" / sub / f"AIIB23_{i}.nii.gz").rename(raw_dir / sub / f"AIIB23_{i}.nii.gz")
    cases = find_raw_cases(raw_dir, "aiib2023")
    assert plan_dataset(cases, "aiib2023")["target_spacing"] == [0.5, 0.70410156, 0.70410156]  # the description's
    plans = plan_dataset(cases, "aiib2023", target_spacing=[])
    assert plans["target_spacing"] == pytest.approx([0.625, 0.703125, 0.703125])  # the median per axis
    assert plans["target_spacing_source"] == "median spacing"
    assert plans["cases"]["AIIB23_2"]["spacing"] == pytest.approx([1.0, 0.5, 0.5])
    assert plans["cases"]["AIIB23_2"]["shape"] == [17, 18, 21]
    assert plans["cases"]["AIIB23_2"]["shape_after_crop"] == [16, 18, 21]  # the zero slice is cropped
    assert plans["cases"]["AIIB23_0"]["label_values"] == [0, 1]
    # few voxels: every foreground voxel is sampled, so the statistics are exact
    values = np.concatenate([make_ct((17, 18, 19 + i), seed=0)[0][make_ct((17, 18, 19 + i), seed=0)[1] == 1]
                             for i in range(3)]).astype(np.float64)
    stats = plans["intensity_properties"][0]
    assert stats["num_samples"] == values.size
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std())
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(values, 0.5))
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(values, 99.5))
    assert plans["num_classes"] == 2 and plans["normalization"] == ["CT"] and plans["channel_names"] == ["CT"]
    constant = plan_dataset(cases, "aiib2023", target_spacing=[0.5, 0.7, 0.7], num_processes=2)
    assert constant["target_spacing"] == [0.5, 0.7, 0.7] and constant["cases"] == plans["cases"]
    assert constant["median_shape"] == np.median([[16 * 0.5 / 0.5, 18 * 0.703125 / 0.7, 19 * 0.703125 / 0.7],
                                                  [16 * 0.625 / 0.5, 18 * 0.75 / 0.7, 20 * 0.75 / 0.7],
                                                  [16 * 1.0 / 0.5, 18 * 0.5 / 0.7, 21 * 0.5 / 0.7]],
                                                 axis=0).round().tolist()
    with pytest.raises(ValueError, match="target_spacing"):
        plan_dataset(cases, "aiib2023", target_spacing=[1, 1])


def test_ct_clipped_and_zscored_on_foreground(tmp_path):
    write_aiib(tmp_path / "raw", ["AIIB23_1", "AIIB23_2"])
    plans = plan_dataset(find_raw_cases(tmp_path / "raw", "aiib2023"), "aiib2023",
                         target_spacing=[0.5, 0.703125, 0.703125])
    image, label = make_ct()
    geometry = Geometry((0.5, 0.703125, 0.703125), (0.0, 0.0, 0.0), IDENTITY, image.shape)
    data, seg, properties = preprocess_case(image[None].astype(np.float32), geometry, label, plans, case="x")
    stats = plans["intensity_properties"][0]
    expected = (np.clip(image[1:], stats["percentile_00_5"], stats["percentile_99_5"]) - stats["mean"]) / stats["std"]
    assert data.shape == (1, 16, 18, 19) and data.dtype == np.float32 and seg.dtype == np.uint8
    np.testing.assert_allclose(data[0], expected, rtol=1e-5, atol=1e-5)
    low, high = [(stats[k] - stats["mean"]) / stats["std"] for k in ("percentile_00_5", "percentile_99_5")]
    np.testing.assert_allclose(data[0][seg == 0], low, rtol=1e-5)  # air (-800 HU) is clipped to the airway's range
    assert data.max() <= high + 1e-5 and abs(data[0][seg == 1].mean()) < 0.2
    assert properties["crop_box"] == [[1, 17], [0, 18], [0, 19]]
    locations = np.array(properties["class_locations"]["1"])
    assert len(locations) == seg.sum() and np.all(seg[tuple(locations.T)] == 1)


def test_mri_zscore_inside_brain_background_zero(tmp_path):
    write_brats(tmp_path / "raw", ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"])
    cases = find_raw_cases(tmp_path / "raw", "brats2023")
    image, label = make_mri()
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY, label.shape)
    for target in ([1, 1, 1], [1.3, 1.2, 1.1]):
        plans = plan_dataset(cases, "brats2023", target_spacing=target)
        assert plans["normalization"] == ["ZScore"] * 4 and plans["num_classes"] == 4
        data, seg, properties = preprocess_case(image, geometry, label, plans, case="x")
        assert data.shape[0] == 4 and set(np.unique(seg)) <= {0, 1, 2, 3}
        brain = np.any(data != 0, axis=0)
        assert brain.sum() < 0.7 * brain.size  # an ellipsoid fills ~52 % of its box: the corners are background
        for c in range(4):
            assert data[c][0, 0, 0] == 0 and data[c][-1, -1, -1] == 0
            assert abs(data[c][brain].mean()) < 0.05
            # normalised before resampling (as nnU-Net): interpolating the noise lowers its std a little
            assert abs(data[c][brain].std() - 1) < (1e-3 if target == [1, 1, 1] else 0.3)
    plans = plan_dataset(cases, "brats2023", target_spacing=[1, 1, 1])
    data, _, properties = preprocess_case(image, geometry, label, plans, case="x")
    cropped = image[0][tuple(slice(lo, hi) for lo, hi in properties["crop_box"])]
    inside = cropped != 0
    brain = image[0][image[0] != 0].astype(np.float64)
    np.testing.assert_allclose(data[0][inside], (cropped[inside] - brain.mean()) / brain.std(), rtol=1e-4, atol=1e-4)
    assert np.all(data[0][~inside] == 0)


def test_inverse_is_exact_when_spacing_equals_target(tmp_path):
    write_brats(tmp_path / "raw", ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"])
    plans, summary = run_pipeline(tmp_path / "raw", tmp_path / "out" / "train", "brats2023", target_spacing=[1, 1, 1])
    assert summary.done == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    original, geometry = read_label(tmp_path / "raw" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz")
    image, seg, properties = load_case(tmp_path / "out" / "train", "BraTS-GLI-00001-000")
    assert seg.shape == image.shape[1:] == tuple(properties["shape_after_crop"]) != geometry.shape  # cropped
    assert Geometry.from_dict(properties["geometry"]) == geometry
    np.testing.assert_array_equal(restore_to_original(np.asarray(seg), properties, is_label=True), original)
    probabilities = np.eye(4, dtype=np.float32)[np.asarray(seg)].transpose(3, 0, 1, 2)  # (K, z, y, x) one-hot
    restored = restore_to_original(probabilities, properties, is_label=False)
    assert restored.shape == (4, *geometry.shape)
    np.testing.assert_array_equal(restored.argmax(0), original)
    np.testing.assert_allclose(restored.sum(0), 1, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        restore_to_original(np.zeros((3, 3, 3)), properties, is_label=True)


def test_inverse_after_anisotropic_resampling(tmp_path):
    shape, spacing, target = (12, 40, 44), (2.5, 0.75, 0.75), [1.0, 0.6, 0.6]  # float32-exact spacings
    assert anisotropic_axis(spacing, target) == 0  # thick slices: z is resampled separately
    geometry = Geometry(spacing, (-3.0, 7.5, 100.0), TILTED, shape)
    rng = np.random.default_rng(1)
    image = rng.normal(0, 50, (1, *shape)).astype(np.float32) - 500
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(shape, (6, 20, 22), (4.5, 15, 17))] = 1
    label[ellipsoid(shape, (6, 20, 24), (3.2, 8, 9))] = 2  # a second class inside the first
    plans = {"dataset": "test", "channel_names": ["CT"], "labels": [0, 1, 2], "normalization": ["CT"],
             "target_spacing": target, "intensity_properties": [{"percentile_00_5": -700, "percentile_99_5": 0,
                                                                 "mean": -500, "std": 50}],
             "resampling": {"image_order": 3, "anisotropy_threshold": 3.0}}
    data, seg, properties = preprocess_case(image, geometry, label, plans, case="aniso")
    assert seg.shape == data.shape[1:] == (30, 50, 55)
    restored = restore_to_original(seg, properties, is_label=True)
    write_volume(restored, Geometry.from_dict(properties["geometry"]), tmp_path / "restored.nii.gz")
    back, back_geometry = read_label(tmp_path / "restored.nii.gz")
    assert back_geometry == geometry and back_geometry.mismatch(geometry) is None
    for value in (1, 2):
        a, b = back == value, label == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.98, value


def test_check_nifti_file_catches_what_simpleitk_hides(tmp_path):
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY, (17, 18, 19))
    values = np.random.default_rng(0).normal(0, 100, geometry.shape).astype(np.float32)  # noise: cut in the voxels
    write_volume(values.round().astype(np.int16), geometry, tmp_path / "int.nii.gz")
    write_volume(values, geometry, tmp_path / "float.nii.gz")
    for name in ("int.nii.gz", "float.nii.gz"):
        check_nifti_file(tmp_path / name)  # complete files pass
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ImageReadError, match=f"cut_{name}: unreadable or truncated"):
            check_nifti_file(tmp_path / f"cut_{name}")
    # a complete file in two gzip members (its last 4 bytes are not the whole size) still passes
    raw = gzip.decompress((tmp_path / "int.nii.gz").read_bytes())
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    check_nifti_file(tmp_path / "members.nii.gz")
    values[1, 2, 3] = np.inf
    write_volume(values, geometry, tmp_path / "inf.nii.gz")
    with pytest.raises(ImageReadError, match="inf.nii.gz: 1 NaN/Inf"):
        check_nifti_file(tmp_path / "inf.nii.gz")


def test_synthetic_datasets_plan_preprocess_and_invert(tmp_path):
    generate_aiib2023(tmp_path / "raw", num_cases=3, shape=(16, 20, 22))
    raw_dir = tmp_path / "raw" / "AIIB23_Train_T1"
    cases = find_raw_cases(raw_dir, "aiib2023")
    labels = {c.case: read_label(c.label_file) for c in cases}
    spacings = [geometry.spacing for _, geometry in labels.values()]
    plans = plan_dataset(cases, "aiib2023", target_spacing=[])
    assert plans["target_spacing"] == pytest.approx(np.median(spacings, axis=0).tolist())
    stats = plans["intensity_properties"][0]
    assert stats["num_samples"] == sum(int(label.sum()) for label, _ in labels.values())
    assert stats["percentile_00_5"] < stats["mean"] < stats["percentile_99_5"]
    # with the spacing of AIIB23_2 as the target, that case comes back exactly, the others on their grid
    own = list(labels["AIIB23_2"][1].spacing)
    _, summary = run_pipeline(raw_dir, tmp_path / "aiib" / "train", "aiib2023", target_spacing=own)
    assert summary.done == ["AIIB23_1", "AIIB23_2", "AIIB23_3"]
    for case, (label, geometry) in labels.items():
        _, seg, properties = load_case(tmp_path / "aiib" / "train", case)
        restored = restore_to_original(np.asarray(seg), properties, is_label=True)
        assert restored.shape == geometry.shape and Geometry.from_dict(properties["geometry"]) == geometry
        if case == "AIIB23_2":
            np.testing.assert_array_equal(restored, label)
    generate_brats2023(tmp_path / "raw", num_cases=2, shape=(16, 18, 20))
    raw_dir = tmp_path / "raw" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    plans, summary = run_pipeline(raw_dir, tmp_path / "brats" / "train", "brats2023", target_spacing=[1, 1, 1])
    assert plans["channel_names"] == SEQUENCES and len(summary.done) == 2
    for raw in find_raw_cases(raw_dir, "brats2023"):
        image, seg, properties = load_case(tmp_path / "brats" / "train", raw.case)
        original = read_label(raw.label_file)[0]
        np.testing.assert_array_equal(restore_to_original(np.asarray(seg), properties, is_label=True), original)
        sequences = read_image(raw.image_files)[0]
        cropped = sequences[(slice(None), *[slice(lo, hi) for lo, hi in properties["crop_box"]])]
        assert np.all(np.asarray(image)[:, ~foreground_mask(cropped)] == 0)  # the background stays 0


BAD_INPUTS = {
    "truncated": "unreadable or truncated",
    "missing_sequence": "missing sequence t2f",
    "shape_mismatch": "label does not match its image",
    "geometry_mismatch": "origin",
    "nan": "NaN/Inf",
    "label_values": r"label values \[5\] outside the expected \[0, 1, 2, 3\]",
    "empty": "no foreground",
}


def break_case(folder, problem):
    case = folder.name
    t2f, seg = folder / f"{case}-t2f.nii.gz", folder / f"{case}-seg.nii.gz"
    image, label = make_mri()
    geometry = read_label(seg)[1]
    if problem == "truncated":
        t2f.write_bytes(t2f.read_bytes()[:300])
    elif problem == "missing_sequence":
        t2f.unlink()
    elif problem == "shape_mismatch":
        write_volume(label[:-1], Geometry(geometry.spacing, geometry.origin, geometry.direction, label[:-1].shape), seg)
    elif problem == "geometry_mismatch":
        write_volume(label, Geometry(geometry.spacing, (0.0, 0.0, 9.0), geometry.direction, label.shape), seg)
    elif problem == "nan":
        t2f_image = image[3].copy()
        t2f_image[7, 8, 8] = np.nan
        write_volume(t2f_image, geometry, t2f)
    elif problem == "label_values":
        label[7, 8, 8] = 5
        write_volume(label, geometry, seg)
    elif problem == "empty":
        for name in SEQUENCES:
            write_volume(np.zeros(label.shape, np.int16), geometry, folder / f"{case}-{name}.nii.gz")


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_case_is_named_and_leaves_nothing(tmp_path, problem):
    raw, out = tmp_path / "raw", tmp_path / "out" / "train"
    write_brats(raw, ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"])
    break_case(raw / "BraTS-GLI-00001-000", problem)
    workers = 2 if problem == "label_values" else 0  # the process pool stops the same way
    with pytest.raises(ValueError, match=f"BraTS-GLI-00001-000: .*{BAD_INPUTS[problem]}"):
        run_pipeline(raw, out, "brats2023", target_spacing=[1, 1, 1], num_processes=workers)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []
    plans, summary = run_pipeline(raw, out, "brats2023", target_spacing=[1, 1, 1], skip_bad_cases=True,
                                  num_processes=workers)
    assert list(summary.failed) == ["BraTS-GLI-00001-000"] and "BraTS-GLI-00001-000" in plans["bad_cases"]
    assert summary.done == list_cases(out) == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert not list(out.glob("BraTS-GLI-00001-000*")) and not list(out.glob(".*"))


def test_case_broken_after_planning_is_removed_entirely(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out" / "train"
    write_aiib(raw, ["AIIB23_1", "AIIB23_2"])
    run_pipeline(raw, out, "aiib2023", target_spacing=[0.5, 0.703125, 0.703125])
    image, label = make_ct()
    label[3, 3, 3] = 2
    write_volume(label, Geometry((0.5, 0.703125, 0.703125), (-10.0, 5.0, 20.5), TILTED, label.shape),
                 raw / "gt" / "AIIB23_2.nii.gz")
    plans = read_json(plans_path(out))
    summary = preprocess_dataset(find_raw_cases(raw, "aiib2023"), plans, out, overwrite=True, skip_bad_cases=True)
    assert "label values [2]" in summary.failed["AIIB23_2"] and summary.done == ["AIIB23_1"]
    assert list_cases(out) == ["AIIB23_1"] and not list(out.glob("AIIB23_2*"))


def test_rerun_skips_finished_cases_and_redoes_stale_ones(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out" / "train"
    write_aiib(raw, ["AIIB23_1", "AIIB23_2", "AIIB23_3"])
    _, first = run_pipeline(raw, out, "aiib2023", target_spacing=[0.5, 0.703125, 0.703125], num_processes=2)
    assert first.done == ["AIIB23_1", "AIIB23_2", "AIIB23_3"] and first.skipped == []
    stamp = (out / "AIIB23_1_image.npy").stat().st_mtime_ns
    (out / "AIIB23_3.json").unlink()  # as if interrupted before the properties were written
    _, second = run_pipeline(raw, out, "aiib2023", target_spacing=[0.5, 0.703125, 0.703125])
    assert second.done == ["AIIB23_3"] and second.skipped == ["AIIB23_1", "AIIB23_2"]
    assert (out / "AIIB23_1_image.npy").stat().st_mtime_ns == stamp
    plans, third = run_pipeline(raw, out, "aiib2023", target_spacing=[0.5, 0.8, 0.8])  # another plan
    assert third.done == ["AIIB23_1", "AIIB23_2", "AIIB23_3"]
    assert load_case(out, "AIIB23_1")[0].shape == (1, 16, 16, 17)
    assert load_case(out, "AIIB23_1")[2]["plans_hash"] == plans["plans_hash"]
    _, fourth = run_pipeline(raw, out, "aiib2023", target_spacing=[0.5, 0.8, 0.8], overwrite=True)
    assert len(fourth.done) == 3
    with pytest.raises(ValueError, match="plan of 'aiib2023', not 'brats2023'"):
        run_pipeline(raw, out, "brats2023")


def run_script(repo_root, script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=repo_root, capture_output=True, text=True, timeout=120)


def test_scripts_end_to_end(tmp_path, repo_root):
    generate_aiib2023(tmp_path / "raw_data", num_cases=2, shape=(16, 18, 20))
    raw, out = tmp_path / "raw_data" / "AIIB23_Train_T1", tmp_path / "fullres" / "train"
    result = run_script(repo_root, "1_preprocessing_aiib2023.py", f"--raw_dir={raw}", f"--output_dir={out}",
                        "--num_processes=1")
    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped" in result.stdout
    assert list_cases(out) == ["AIIB23_1", "AIIB23_2"]
    assert read_json(tmp_path / "fullres" / "plans.json")["target_spacing"] == [0.5, 0.70410156, 0.70410156]
    assert read_json(out / "1_preprocessing_aiib2023_config.json")["num_processes"] == 1
    result = run_script(repo_root, "1_preprocessing_aiib2023.py", f"--raw_dir={raw}", f"--output_dir={out}",
                        "--num_processes=1")
    assert result.returncode == 0 and "0 done, 2 skipped" in result.stdout

    braw, bout = tmp_path / "brats", tmp_path / "brats_fullres" / "train"
    write_brats(braw, ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"],
                renamed=["BraTS-GLI-00002-000"])
    break_case(braw / "BraTS-GLI-00001-000", "nan")
    args = [f"--raw_dir={braw}", f"--output_dir={bout}", "--num_processes=1"]
    result = run_script(repo_root, "brats2023/2_preprocessing_brats2023.py", *args)
    assert result.returncode != 0
    assert "BraTS-GLI-00001-000: " in result.stderr and "t2f.nii.gz: 1 NaN/Inf voxel(s)" in result.stderr
    result = run_script(repo_root, "brats2023/2_preprocessing_brats2023.py", *args, "--skip_bad_cases=True")
    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped (already done), 1 failed" in result.stdout and "BraTS-GLI-00001-000" in result.stdout
    assert list_cases(bout) == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    result = run_script(repo_root, "brats2023/2_preprocessing_brats2023.py", f"--raw_dir={braw}",
                        f"--output_dir={out}")
    assert result.returncode != 0 and "plan of 'aiib2023'" in result.stderr
