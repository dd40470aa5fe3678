"""Patches, foreground oversampling, padding, augmentation, worker seeding and splits."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from light_training.training.augmentation import enlarged_patch_size, make_training_stream, training_transforms
from light_training.training.dataloading import (OVERSAMPLE_FOREGROUND_PERCENT, PatchLoader, ValidationPatches,
                                        choose_patch_start, crop_patch)
from light_training.training.splits import fold_cases, held_out_cases, load_or_create_splits, make_splits, splits_path


def write_case(data_dir: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    """A case in the preprocessed format: <case>_image.npy (C,Z,Y,X), <case>_label.npy, <case>.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    label = label.astype(np.uint8)
    np.save(data_dir / f"{case}_image.npy", image.astype(np.float32))
    np.save(data_dir / f"{case}_label.npy", label.astype(np.uint8))
    locations = {str(c): np.argwhere(label == c).tolist() for c in np.unique(label) if c != 0}
    (data_dir / f"{case}.json").write_text(json.dumps({"case": case, "class_locations": locations}))


@pytest.fixture
def small_foreground(tmp_path: Path) -> Path:
    """Two 2-channel cases 41x38x45 whose foreground (classes 1 and 2) is one 2x2x2 block each,
    so that a random 16^3 patch rarely contains foreground."""
    data_dir = tmp_path / "fullres" / "train"
    rng = np.random.default_rng(0)
    for i in range(2):
        label = np.zeros((41, 38, 45), np.uint8)
        label[3:5, 30:32, 4:6] = 1
        label[35:37, 2:4, 40:42] = 2
        image = rng.normal(size=(2, *label.shape)) + label
        write_case(data_dir, f"case{i}", image, label)
    return data_dir


def test_crop_patch_pads_outside_the_case():
    image = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7) + 1
    label = np.ones((5, 6, 7), np.uint8)
    patch, seg = crop_patch(image, label, start=(-2, 3, 1), size=(9, 4, 8))
    assert patch.shape == (2, 9, 4, 8) and patch.dtype == np.float32
    assert seg.shape == (9, 4, 8) and seg.dtype == np.uint8
    np.testing.assert_array_equal(patch[:, 2:7, 0:3, 0:6], image[:, 0:5, 3:6, 1:7])
    assert np.all(patch[:, :2] == 0) and np.all(patch[:, 7:] == 0) and np.all(patch[:, :, 3:] == 0)
    assert np.all(patch[..., 6:] == 0) and seg.sum() == 5 * 3 * 6 and np.all(seg[:2] == 0)


def test_patch_start_keeps_patch_in_case_or_case_in_patch():
    rng = np.random.default_rng(1)
    for _ in range(200):
        start = choose_patch_start((40, 10, 25), (16, 16, 25), rng)
        assert 0 <= start[0] <= 24 and -6 <= start[1] <= 0 and start[2] == 0
    # centred on a voxel as far as the case allows; the voxel is always inside the patch
    np.testing.assert_array_equal(choose_patch_start((40, 40, 40), (16, 16, 16), rng, (20, 1, 39)), [12, 0, 24])


def test_patch_shapes_dtypes_and_padding_of_a_small_case(tmp_path: Path):
    data_dir = tmp_path / "train"
    write_case(data_dir, "tiny", np.ones((1, 7, 9, 11)), np.ones((7, 9, 11)))
    loader = PatchLoader(data_dir, ["tiny"], (16, 16, 16), batch_size=3, seed=0)
    batch = next(loader)
    assert batch["data"].shape == (3, 1, 16, 16, 16) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (3, 1, 16, 16, 16) and batch["seg"].dtype == np.uint8
    # the whole case lies inside each patch; the rest is padding (image 0, label 0)
    assert np.all(batch["data"].sum(axis=(1, 2, 3, 4)) == 7 * 9 * 11)
    assert np.all(batch["seg"].sum(axis=(1, 2, 3, 4)) == 7 * 9 * 11)


def test_foreground_fraction_is_near_the_oversampling_rate(small_foreground: Path):
    loader = PatchLoader(small_foreground, ["case0", "case1"], (16, 16, 16), batch_size=2, seed=3)
    n, with_foreground, forced = 0, 0, 0
    for _ in range(300):
        batch = next(loader)
        with_foreground += int(np.sum(batch["seg"].reshape(2, -1).max(1) > 0))
        forced += int(batch["foreground"].sum())
        n += 2
    # forced patches always contain foreground; random ones contain it rarely (2 tiny blocks in corners)
    assert abs(forced / n - OVERSAMPLE_FOREGROUND_PERCENT) < 0.05
    assert OVERSAMPLE_FOREGROUND_PERCENT - 0.05 < with_foreground / n < OVERSAMPLE_FOREGROUND_PERCENT + 0.1
    assert with_foreground >= forced


def test_augmentation_keeps_shapes_and_label_values(small_foreground: Path):
    patch = (16, 20, 24)
    read = enlarged_patch_size(patch)
    assert all(r > p for r, p in zip(read, patch))
    loader = PatchLoader(small_foreground, ["case0", "case1"], patch, batch_size=4, read_size=read,
                         oversample_foreground_percent=1.0, seed=0)
    transform = training_transforms(patch)
    np.random.seed(0)
    with_foreground, changed = 0, 0
    margin = [(r - p) // 2 for r, p in zip(read, patch)]
    for _ in range(6):
        raw = next(loader)
        centre = raw["seg"][:, 0, margin[0]:margin[0] + patch[0], margin[1]:margin[1] + patch[1],
                            margin[2]:margin[2] + patch[2]].copy()
        out = transform(**raw)
        assert out["image"].shape == (4, 2, *patch) and out["image"].dtype == np.float32
        assert out["label"].shape == (4, *patch) and out["label"].dtype == np.uint8
        assert set(np.unique(out["label"]).tolist()) <= {0, 1, 2}
        assert np.isfinite(out["image"]).all()
        with_foreground += int(np.sum(out["label"].reshape(4, -1).max(1) > 0))
        changed += int(np.sum(np.any((out["label"] != centre).reshape(4, -1), axis=1)))
    assert with_foreground >= 20  # foreground-centred patches keep their foreground through the transforms
    assert changed >= 12  # mirrored (p 0.5 per axis), rotated or scaled


def test_workers_are_seeded_differently_and_reproducibly(small_foreground: Path):
    def first_batches(seed):
        with make_training_stream(small_foreground, ["case0", "case1"], (16, 16, 16), 2, augmentation=True,
                                  num_workers=2, seed=seed) as stream:
            return [next(stream)["image"] for _ in range(4)]
    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)  # same seed: same batches, in the same order
    assert not torch.equal(a[0], a[1])  # worker 0 and worker 1 differ
    assert not torch.equal(a[0], c[0])  # another seed differs


def test_validation_patches_are_fixed_and_foreground_centred(small_foreground: Path):
    val = ValidationPatches(small_foreground, ["case0", "case1"], (16, 16, 16), num_patches=6, seed=0)
    again = ValidationPatches(small_foreground, ["case0", "case1"], (16, 16, 16), num_patches=6, seed=0)
    assert len(val) == 6 and [b[0] for b in val.boxes] == ["case0", "case1"] * 3
    for (case, start), (case2, start2) in zip(val.boxes, again.boxes):
        assert case == case2 and np.array_equal(start, start2)
    image, label, _ = val[0]
    assert image.shape == (2, 16, 16, 16) and label.max() > 0
    shares = [sum(len(x) for x, _ in val.batches(4, rank, 2)) for rank in (0, 1)]
    assert shares == [3, 3]


def test_unknown_case_is_named(small_foreground: Path):
    with pytest.raises(ValueError, match="nope"):
        PatchLoader(small_foreground, ["case0", "nope"], (16, 16, 16), 2)


def test_splits_are_deterministic_written_once_and_keep_the_test_list(tmp_path: Path):
    cases = [f"c{i:02d}" for i in range(12)]
    split = make_splits(cases, test_cases=["c00", "c01"])
    assert split == make_splits(list(reversed(cases)), test_cases=["c01", "c00"])
    vals = [set(f["val"]) for f in split["folds"]]
    assert set().union(*vals) == set(cases) - {"c00", "c01"} and sum(map(len, vals)) == 10
    for fold in split["folds"]:
        assert not set(fold["train"]) & set(fold["val"]) and not {"c00", "c01"} & set(fold["train"])

    data_dir = tmp_path / "fullres" / "train"
    for case in cases[:7]:
        write_case(data_dir, case, np.zeros((1, 3, 3, 3)), np.zeros((3, 3, 3)))
    train, val = fold_cases(data_dir, 1, test_cases=["c00"])
    assert splits_path(data_dir) == tmp_path / "fullres" / "splits.json" and splits_path(data_dir).is_file()
    assert held_out_cases(data_dir, 1) == ["c00"]
    assert sorted(train + val) == cases[1:7]
    assert load_or_create_splits(data_dir) == json.loads(splits_path(data_dir).read_text())
    with pytest.raises(ValueError, match="test list"):
        fold_cases(data_dir, 1, test_cases=["c01"])
    with pytest.raises(ValueError, match="fold must be one of 0..4"):
        fold_cases(data_dir, 5)
