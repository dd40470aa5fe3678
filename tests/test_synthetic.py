"""Synthetic AIIB2023 and BraTS2023 cases: raw layouts, labels, geometry, determinism; the rename script."""
import subprocess
import sys

import numpy as np
import pytest

from light_training.io import read_image, read_label, read_volume
from light_training.synthetic import (MIN_GENERATIONS, airway_tree, generate_aiib2023, generate_brats2023,
                                      synthetic_ct)

AIIB_SHAPE, BRATS_SHAPE = (40, 48, 48), (32, 40, 36)
SEQUENCES = ["t1n", "t1c", "t2w", "t2f"]


@pytest.fixture(scope="module")
def aiib(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out, generate_aiib2023(out, num_cases=3, seed=0, shape=AIIB_SHAPE)


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out, generate_brats2023(out, num_cases=4, seed=0, shape=BRATS_SHAPE)


def test_aiib_layout_labels_and_geometry(aiib):
    out, cases = aiib
    assert cases == ["AIIB23_1", "AIIB23_2", "AIIB23_3"]
    root = out / "AIIB23_Train_T1"
    assert sorted(p.name for p in (root / "img").iterdir()) == sorted(f"{c}.nii.gz" for c in cases)
    directions = []
    for case in cases:
        ct, geometry = read_volume(root / "img" / f"{case}.nii.gz")
        label, _ = read_label(root / "gt" / f"{case}.nii.gz", geometry)
        assert ct.dtype == np.int16 and set(np.unique(label)) == {0, 1}
        assert all(a >= b for a, b in zip(ct.shape, AIIB_SHAPE))
        z, y, x = geometry.spacing
        assert 0.4 < z < 0.6 and 0.6 < y < 0.8 and y == x  # anisotropic like the real scans
        assert all(o != 0 for o in geometry.origin)
        directions.append(geometry.direction)
        lungs = ct[(ct > -950) & (ct < -700)]
        assert abs(np.median(lungs) + 850) < 30
    assert any(d != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) for d in directions)


def test_airway_lumen_inside_wall():
    rng = np.random.default_rng(3)
    ct, label, branches = synthetic_ct(rng, (64, 80, 80), (0.5, 0.7, 0.7))
    assert max(b.generation for b in branches) >= MIN_GENERATIONS
    trachea = branches[0]
    assert trachea.generation == 0 and trachea.radius == max(b.radius for b in branches)
    radii = {}
    for b in branches:
        radii.setdefault(b.generation, []).append(b.radius)
    means = [np.mean(radii[g]) for g in sorted(radii)]
    assert all(a > b for a, b in zip(means, means[1:]))  # tapering
    # the trachea's centre line is air, its wall is soft tissue
    z, y, x = (np.array([(trachea.start + trachea.end) / 2]) / np.array([0.5, 0.7, 0.7])).round().astype(int)[0]
    assert ct[z, y, x] < -900 and label[z, y, x] == 1
    wall_x = int(round((trachea.start[2] + trachea.radius + 0.2 * trachea.radius + 0.4) / 0.7))
    assert -400 < ct[z, y, wall_x] < 100 and label[z, y, wall_x] == 0


def test_tree_varies_with_the_seed():
    a = airway_tree(np.random.default_rng(0), np.array([50.0, 80.0, 80.0]))
    b = airway_tree(np.random.default_rng(1), np.array([50.0, 80.0, 80.0]))
    assert len(a) != len(b) or not np.allclose(a[-1].end, b[-1].end)


def test_brats_layout_labels_and_shared_geometry(brats):
    out, cases = brats
    assert cases == [f"BraTS-GLI-{n:05d}-000" for n in range(4)]
    root = out / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    present = set()
    for case in cases:
        files = sorted(p.name for p in (root / case).iterdir())
        assert files == sorted(f"{case}-{s}.nii.gz" for s in SEQUENCES + ["seg"])
        image, geometry = read_image([root / case / f"{case}-{s}.nii.gz" for s in SEQUENCES])  # checks geometry
        label, _ = read_label(root / case / f"{case}-seg.nii.gz", geometry)
        assert geometry.spacing == (1.0, 1.0, 1.0) and geometry.shape == BRATS_SHAPE
        assert np.all(image[:, image.sum(0) == 0] == 0) and (image.sum(0) == 0).any()  # zero background
        brain = image[0] > 0
        assert np.all(brain[label > 0])
        present |= set(np.unique(label).tolist())
        for region, sequence, brighter in [(3, "t1c", True), (2, "t2f", True), (1, "t1c", False)]:
            if (label == region).any():
                inside = image[SEQUENCES.index(sequence)][label == region].mean()
                healthy = image[SEQUENCES.index(sequence)][brain & (label == 0)].mean()
                assert (inside > healthy) == brighter, (case, region, sequence)
    assert present == {0, 1, 2, 3}


def test_brats_cases_without_enhancing_tumour_exist(tmp_path):
    generate_brats2023(tmp_path, num_cases=12, seed=0, shape=(16, 20, 18))
    root = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    has_et = [3 in read_volume(p)[0] for p in sorted(root.glob("*/*-seg.nii.gz"))]
    assert not all(has_et) and any(has_et)


def test_deterministic(tmp_path):
    for seed, folder in [(0, "a"), (0, "b"), (1, "c")]:
        generate_aiib2023(tmp_path / folder, num_cases=1, seed=seed, shape=(24, 32, 32))
        generate_brats2023(tmp_path / folder, num_cases=1, seed=seed, shape=(20, 24, 24))
    def arrays(folder):
        return [read_volume(p)[0] for p in sorted((tmp_path / folder).rglob("*.nii.gz"))]
    a, b, c = arrays("a"), arrays("b"), arrays("c")
    assert len(a) == 7
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a, c))


def test_cli(tmp_path, repo_root):
    run = subprocess.run([sys.executable, "-m", "light_training.synthetic", "--dataset=brats2023", "--num_cases=2",
                          f"--out={tmp_path}", "--shape=(16,20,18)"], cwd=repo_root, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(list(tmp_path.rglob("*-seg.nii.gz"))) == 2
    bad = subprocess.run([sys.executable, "-m", "light_training.synthetic", "--datset=aiib2023"], cwd=repo_root,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--dataset" in bad.stderr


def test_rename_script_twice(tmp_path, repo_root):
    generate_brats2023(tmp_path, num_cases=2, seed=0, shape=(16, 20, 18))
    root = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    script = repo_root / "brats2023" / "1_rename_mri_data_brats2023.py"
    before = {p.name: p.stat().st_size for p in root.rglob("*.nii.gz")}
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script), f"--data_dir={root}"], cwd=repo_root,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    for case in ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]:
        assert sorted(p.name for p in (root / case).iterdir()) == sorted(f"{s}.nii.gz" for s in SEQUENCES + ["seg"])
        assert (root / case / "t1c.nii.gz").stat().st_size == before[f"{case}-t1c.nii.gz"]
    assert "0 file(s) renamed" in run.stdout
    (root / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"x")
    clash = subprocess.run([sys.executable, str(script), f"--data_dir={root}"], cwd=repo_root,
                           capture_output=True, text=True)
    assert clash.returncode != 0 and "BraTS-GLI-00000-000" in clash.stderr
