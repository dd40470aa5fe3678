"""Synthetic AIIB2023 and BraTS2023 datasets: raw layouts, labels, geometry, contrast, determinism, CLI."""
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from light_training.io import read_image, read_label, read_volume
from light_training.synthetic.generate import generate_aiib2023, generate_brats2023
from light_training.synthetic.ct import synthesize_ct
from light_training.synthetic.mri import SEQUENCES, synthesize_mri

AIIB_SHAPE, BRATS_SHAPE = (40, 48, 46), (32, 40, 36)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
BRATS_DIR = "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"


@pytest.fixture(scope="module")
def aiib(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out / "AIIB23_Train_T1", generate_aiib2023(out, num_cases=3, seed=0, shape=AIIB_SHAPE)


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out / BRATS_DIR, generate_brats2023(out, num_cases=4, seed=0, shape=BRATS_SHAPE)


@pytest.fixture(scope="module")
def ct_case():
    """A CT big enough for the airway to show 5 generations: (64, 80, 80) at (0.5, 0.7, 0.7) mm."""
    spacing = np.array([0.5, 0.7, 0.7])
    image, label, tree = synthesize_ct(np.random.default_rng(1), (64, 80, 80), spacing)
    return image, label, tree, spacing


def test_aiib_layout_labels_and_geometry(aiib):
    root, cases = aiib
    assert cases == ["AIIB23_1", "AIIB23_2", "AIIB23_3"]
    for folder in ("img", "gt"):
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(f"{c}.nii.gz" for c in cases)
    directions = []
    for case in cases:
        ct, geometry = read_volume(root / "img" / f"{case}.nii.gz")
        label, _ = read_label(root / "gt" / f"{case}.nii.gz", geometry)  # same geometry as the image
        assert ct.dtype == np.int16 and read_volume(root / "gt" / f"{case}.nii.gz")[0].dtype == np.uint8
        assert ct.shape == AIIB_SHAPE and set(np.unique(label).tolist()) == {0, 1}
        z, y, x = geometry.spacing
        assert 0.45 <= z <= 0.55 and 0.6 <= y <= 0.8 and y == x  # anisotropic like the real scans
        assert all(abs(o) > 1 for o in geometry.origin)
        rotation = np.reshape(geometry.direction, (3, 3))
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
        directions.append(geometry.direction)
        assert -1024 <= ct.min() and ct.max() < 3072
        assert np.percentile(ct[label == 1], 95) < -400  # the lumen is dark, even in thin branches
    assert directions[0] == IDENTITY and directions[1] != IDENTITY  # every third case (index 1, 4, ...)


def test_aiib_flipped_case_keeps_the_anatomy_in_place(tmp_path):
    """A case stored head first (z flipped) is the same physical image: the trachea is still at the top."""
    generate_aiib2023(tmp_path, num_cases=2, seed=3, shape=AIIB_SHAPE)
    upright, _ = read_label(tmp_path / "AIIB23_Train_T1" / "gt" / "AIIB23_1.nii.gz")
    flipped, geometry = read_label(tmp_path / "AIIB23_Train_T1" / "gt" / "AIIB23_2.nii.gz")
    assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # this seed's case 2: "LPI"
    for label, superior in ((upright, -1), (flipped, 0)):
        components, count = ndimage.label(label[superior])
        assert count == 1 and (components > 0).sum() >= 5  # the trachea leaves the field of view at the top


def test_ct_hounsfield_units(ct_case):
    image, label, tree, spacing = ct_case
    trachea = tree[0]
    assert trachea.generation == 0 and trachea.parent == -1
    # a slice through the trachea: lumen near -1000 HU inside a wall near -100 HU inside soft tissue
    z = int(round((trachea.end[0] + image.shape[0] * spacing[0]) / 2 / spacing[0]))
    start, end = np.asarray(trachea.start), np.asarray(trachea.end)
    axis = start + (z * spacing[0] - start[0]) / (end[0] - start[0]) * (end - start)
    yy, xx = np.mgrid[0:image.shape[1], 0:image.shape[2]]
    distance = np.hypot(yy * spacing[1] - axis[1], xx * spacing[2] - axis[2])
    r = trachea.radius_start
    assert image[z][distance < 0.6 * r].mean() < -950
    assert -250 < image[z][(distance > 1.05 * r) & (distance < 1.3 * r + 0.35)].mean() < 0
    assert label[z][distance < 0.9 * r].all() and not label[z][distance > 1.1 * r].any()
    lungs = image[(image > -950) & (image < -700)]
    assert abs(np.median(lungs) + 850) < 30
    assert (image == -1024).sum() + (image < -950).sum() > 0  # air outside the body


def test_airway_tree_has_five_tapering_generations(ct_case):
    image, label, tree, spacing = ct_case
    generations = np.array([b.generation for b in tree])
    assert generations.max() >= 5
    for g in range(1, 6):
        assert (generations == g).sum() >= 2, g  # bifurcations on both sides
    radii = [np.mean([b.radius_start for b in tree if b.generation == g]) for g in range(generations.max() + 1)]
    assert all(a > b for a, b in zip(radii, radii[1:]))  # tapering
    assert radii[0] / 0.7 > 3  # the trachea is several voxels wide
    angles = []
    for b in tree[1:]:
        parent = tree[b.parent]
        np.testing.assert_allclose(b.start, parent.end)  # children start where the parent ends
        u, v = np.subtract(parent.end, parent.start), np.subtract(b.end, b.start)
        angles.append(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))))
    assert 15 < np.mean(angles) < 60 and np.std(angles) > 5  # varied branching angles
    # every branch down to generation 5 is drawn in the label ...
    for b in tree:
        middle = np.round((np.asarray(b.start) + b.end) / 2 / spacing).astype(int)
        if b.generation <= 5 and np.all(middle >= 0) and np.all(middle < label.shape):
            assert label[tuple(middle)] == 1, b
    # ... and its skeleton branches at least 16 times: more than a tree of 4 generations can (15)
    skeleton = skeletonize(label.astype(bool))
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - 1
    branch_points = ndimage.label(skeleton & (neighbours >= 3), np.ones((3, 3, 3)))[1]
    assert branch_points >= 16


def test_brats_layout_labels_and_shared_geometry(brats):
    root, cases = brats
    assert cases == [f"BraTS-GLI-{n:05d}-000" for n in range(4)]
    present = set()
    for n, case in enumerate(cases):
        assert sorted(p.name for p in (root / case).iterdir()) == sorted(
            f"{case}-{s}.nii.gz" for s in (*SEQUENCES, "seg"))
        image, geometry = read_image([root / case / f"{case}-{s}.nii.gz" for s in SEQUENCES])  # checks geometry
        label, _ = read_label(root / case / f"{case}-seg.nii.gz", geometry)
        assert read_volume(root / case / f"{case}-t1c.nii.gz")[0].dtype == np.int16
        assert geometry.spacing == (1.0, 1.0, 1.0) and geometry.shape == BRATS_SHAPE
        brain = image[0] > 0
        for channel in image:  # a skull-stripped brain on an exactly zero background, the same in all sequences
            assert np.array_equal(channel > 0, brain) and channel.min() == 0
        assert 0.1 < brain.mean() < 0.6 and np.all(brain[label > 0])
        values = set(np.unique(label).tolist())
        assert {0, 2} <= values and values <= {0, 1, 2, 3}
        assert (3 in values) == (n % 4 != 3)  # every fourth case has no enhancing tumour
        assert (label > 0).sum() > 0.03 * brain.sum()  # big enough for a tiny model to find
        present |= values
    assert present == {0, 1, 2, 3}


def test_brats_contrast_per_sequence(brats):
    root, cases = brats
    for case in cases:
        image, _ = read_image([root / case / f"{case}-{s}.nii.gz" for s in SEQUENCES])
        label = read_label(root / case / f"{case}-seg.nii.gz")[0]
        t1n, t1c, t2w, t2f = image
        healthy = (image[0] > 0) & (label == 0)
        for sequence in (t2w, t2f):  # edema bright on t2w and FLAIR
            assert sequence[label == 2].mean() > 1.2 * sequence[healthy].mean(), case
        assert t1n[label == 2].mean() < t1n[healthy].mean()  # and dark on T1
        if (label == 3).any():  # enhancing tumour bright on t1c, necrosis dark on t1c and bright on t2w
            assert t1c[label == 3].mean() > 1.5 * t1c[healthy].mean(), case
            if (label == 1).any():  # (a small necrosis takes some of its bright rim by partial volume)
                assert t1c[label == 1].mean() < 0.8 * t1c[label == 3].mean(), case
                assert t2w[label == 1].mean() > t2w[healthy].mean(), case


def test_brats_necrosis_dark_on_t1c_at_default_size():
    images, label, lesions = synthesize_mri(np.random.default_rng(0), (64, 80, 72), 0)
    assert lesions[0].enhancing and lesions[0].necrotic
    necrosis = ndimage.binary_erosion(label == 1)
    healthy = (images["t1c"] > 0) & (label == 0)
    assert necrosis.sum() > 10
    assert images["t1c"][necrosis].mean() < 0.7 * images["t1c"][healthy].mean()
    assert images["t2w"][necrosis].mean() > 1.4 * images["t2w"][healthy].mean()


def test_brats_several_lesions_sometimes():
    counts = [len(synthesize_mri(np.random.default_rng([0, 1, i]), (24, 28, 26), i)[2]) for i in range(6)]
    assert counts[1] >= 2 and counts[4] >= 2 and counts[0] == 1  # every third case (index 1, 4, ...)


def test_deterministic_per_case_and_seed(tmp_path):
    def arrays(folder):
        return {p.relative_to(folder).as_posix(): read_volume(p) for p in sorted(folder.rglob("*.nii.gz"))}
    runs = {}
    for name, seed, num_cases, processes in [("a", 0, 2, 1), ("b", 0, 2, 2), ("c", 1, 2, 1), ("d", 0, 1, 1)]:
        # "b": the same cases generated in two processes
        assert generate_aiib2023(tmp_path / name, num_cases=num_cases, seed=seed, shape=(20, 24, 22),
                                 processes=processes) == [f"AIIB23_{i + 1}" for i in range(num_cases)]
        generate_brats2023(tmp_path / name, num_cases=num_cases, seed=seed, shape=(18, 22, 20), processes=processes)
        runs[name] = arrays(tmp_path / name)
    a, b, c, d = runs["a"], runs["b"], runs["c"], runs["d"]
    assert len(a) == 2 * 2 + 2 * 5 and a.keys() == b.keys() == c.keys()
    for key in a:
        assert a[key][0].tobytes() == b[key][0].tobytes() and a[key][1] == b[key][1], key
    assert all(a[key][0].tobytes() != c[key][0].tobytes() for key in a if "img" in key or "t1n" in key)
    for key in d:  # a case does not depend on how many cases are generated
        assert d[key][0].tobytes() == a[key][0].tobytes(), key


def test_aiib_shapes_vary_by_default_and_bad_arguments_are_named(tmp_path):
    cases = generate_aiib2023(tmp_path, num_cases=3, seed=0)
    shapes = {read_volume(tmp_path / "AIIB23_Train_T1" / "img" / f"{case}.nii.gz")[1].shape for case in cases}
    assert len(shapes) > 1 and all(abs(s[0] - 96) <= 8 and abs(s[1] - 112) <= 8 for s in shapes)
    with pytest.raises(ValueError, match=r"shape=\(8, 8, 8\)"):
        generate_aiib2023(tmp_path, num_cases=1, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="num_cases=0"):
        generate_brats2023(tmp_path, num_cases=0)


def test_cli(tmp_path, repo_root):
    def run(*args):
        return subprocess.run([sys.executable, "tools/generate_synthetic.py", *args], cwd=repo_root,
                              capture_output=True, text=True, timeout=120)
    result = run("--dataset=brats2023", "--num_cases=2", f"--out={tmp_path}", "--shape=(16,20,18)", "--seed=3")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / BRATS_DIR).glob("*/*-seg.nii.gz"))) == 2 and "wrote 2 brats2023 cases" in result.stdout
    result = run("--dataset=aiib2023", "--num_cases=1", f"--out={tmp_path}", "--shape=[16,18,20]")
    assert result.returncode == 0, result.stderr
    assert read_volume(tmp_path / "AIIB23_Train_T1" / "img" / "AIIB23_1.nii.gz")[0].shape == (16, 18, 20)
    result = run("--help")
    assert result.returncode == 0
    assert all(f"--{name}" in result.stdout for name in ("dataset", "num_cases", "out", "seed", "shape"))
    result = run("--datset=aiib2023")
    assert result.returncode != 0 and "did you mean --dataset?" in result.stderr
    result = run("--dataset=ct")
    assert result.returncode != 0 and "aiib2023" in result.stderr
    result = run("--num_cases=two")
    assert result.returncode != 0 and "--num_cases=two" in result.stderr
