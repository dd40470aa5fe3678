"""Prediction from a folder of raw scans checks every scan before the first window (issue 11).

Scans written with nibabel (RAS) and SimpleITK (LPS), good and broken, .nii and .nii.gz.
"""
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from diffunet import build_network
from light_training.checkpoint import load_checkpoint, save_checkpoint
from light_training.datasets import load_dataset
from light_training.io import Geometry, read_volume, write_volume
from light_training.planning.dataset_plan import plan_dataset
from light_training.preprocessing.raw_cases import find_raw_cases
from light_training.stages.predict import check_scans
from light_training.synthetic.generate import AIIB_FOLDER, BRATS_FOLDER, generate_aiib2023, generate_brats2023


def nibabel_scan(path, array_xyz: np.ndarray, affine=None) -> None:
    """A scan as nibabel writes it: RAS affine with a non-zero origin, 1 mm."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    affine[:3, 3] = (-20.0, 35.5, 4.0)
    nib.save(nib.Nifti1Image(array_xyz, affine), str(path))


@pytest.fixture(scope="module")
def aiib_scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    generate_aiib2023(root / "raw", num_cases=2, shape=(24, 32, 32))
    scans = root / "scans"
    scans.mkdir()
    image, geometry = read_volume(root / "raw" / AIIB_FOLDER / "img" / "AIIB23_1.nii.gz")
    write_volume(image, geometry, scans / "good_sitk.nii.gz")  # SimpleITK, LPS
    nibabel_scan(scans / "good_nib.nii", np.ascontiguousarray(image.T).astype(np.int16))  # nibabel, RAS, .nii
    nibabel_scan(scans / "flat.nii.gz", np.zeros((20, 20), np.int16))  # a 2-D image
    with_nan = image.T.astype(np.float64)
    with_nan[3:5, 4:6, 5] = np.nan
    nibabel_scan(scans / "nan.nii.gz", with_nan)
    data = (scans / "good_sitk.nii.gz").read_bytes()
    (scans / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    return root, scans


def test_every_problem_is_listed_at_once(aiib_scans):
    _, scans = aiib_scans
    description = load_dataset("aiib2023")
    raw_cases = find_raw_cases(scans, description, with_labels=False)
    assert [r.case for r in raw_cases] == ["flat", "good_nib", "good_sitk", "nan", "truncated"]
    good, bad = check_scans(raw_cases, description)
    assert [r.case for r in good] == ["good_nib", "good_sitk"]
    assert set(bad) == {"flat", "nan", "truncated"}
    assert "flat.nii.gz" in bad["flat"] and "3-D" in bad["flat"]
    assert "nan.nii.gz" in bad["nan"] and "NaN" in bad["nan"]
    assert "truncated.nii.gz" in bad["truncated"]
    good, bad = check_scans(raw_cases, description, nonfinite="replace")
    assert "nan" in [r.case for r in good] and "nan" not in bad


def test_brats_missing_sequence_and_grids(tmp_path):
    generate_brats2023(tmp_path, num_cases=3, shape=(16, 20, 18))
    root = tmp_path / BRATS_FOLDER
    cases = sorted(p.name for p in root.iterdir())
    (root / cases[0] / f"{cases[0]}-t2w.nii.gz").unlink()
    image, geometry = read_volume(root / cases[1] / f"{cases[1]}-t1c.nii.gz")
    moved = Geometry(geometry.spacing, (5.0, 0.0, 0.0), geometry.direction, geometry.shape)
    write_volume(image, moved, root / cases[1] / f"{cases[1]}-t1c.nii.gz")
    good, bad = check_scans(find_raw_cases(root, "brats2023", with_labels=False), load_dataset("brats2023"))
    assert [r.case for r in good] == [cases[2]]
    assert "missing sequence t2w" in bad[cases[0]]
    assert f"{cases[1]}-t1c.nii.gz" in bad[cases[1]] and "does not match" in bad[cases[1]]


def tiny_checkpoint(raw_dir, path):
    """A self-describing checkpoint of an untrained tiny model for the plan of ``raw_dir``."""
    plans = plan_dataset(find_raw_cases(raw_dir, "aiib2023"), "aiib2023")
    model = build_network("diffunet", 1, 2, preset="tiny")
    save_checkpoint({"model_class": type(model).__name__, "model_config": dict(model.config),
                     "model": model.state_dict(), "plans": plans,
                     "config": {"patch_size": [16, 16, 16], "fold": 0}}, path)


def test_script_lists_problems_then_skips_them(aiib_scans, repo_root):
    root, scans = aiib_scans
    torch.manual_seed(0)
    tiny_checkpoint(root / "raw" / AIIB_FOLDER, root / "tiny.pt")
    save_dir = root / "out"
    args = [sys.executable, "3_predict_aiib2023.py", f"--input_dir={scans}", f"--checkpoint={root / 'tiny.pt'}",
            f"--save_dir={save_dir}", "--device=cpu", "--mirror_axes=[]", "--torch_compile=False"]
    result = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "3 of 5 scan(s) cannot be predicted" in result.stderr
    for case in ("flat", "nan", "truncated"):
        assert f"  {case}: " in result.stderr
    assert not save_dir.exists() or not list(save_dir.iterdir())  # nothing written
    result = subprocess.run(args + ["--skip_bad_cases=True"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in save_dir.glob("*.nii*")) == ["good_nib.nii.gz", "good_sitk.nii.gz"]
    assert "skipped 3 scan(s)" in result.stdout
    assert not [p for p in save_dir.iterdir() if p.name.startswith(".")]  # no temporary files left
    # each prediction lies on its own scan's grid, whichever library wrote the scan
    for name, source in (("good_nib", "good_nib.nii"), ("good_sitk", "good_sitk.nii.gz")):
        assert read_volume(save_dir / f"{name}.nii.gz")[1] == read_volume(scans / source)[1]


def test_seed_gives_every_case_the_same_noise(aiib_scans, repo_root, tmp_path):
    root, scans = aiib_scans
    torch.manual_seed(0)
    tiny_checkpoint(root / "raw" / AIIB_FOLDER, tmp_path / "tiny.pt")
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("a", "b"):
        (twins / f"{name}.nii.gz").write_bytes((scans / "good_sitk.nii.gz").read_bytes())
    args = [sys.executable, "3_predict_aiib2023.py", f"--input_dir={twins}", f"--checkpoint={tmp_path / 'tiny.pt'}",
            f"--save_dir={tmp_path / 'out'}", "--device=cpu", "--mirror_axes=[]", "--torch_compile=False",
            "--save_uncertainty=True", "--seed=3"]
    result = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # the seed is reset for every case: two copies of one scan get the same noise, so the same (noisy) uncertainty
    first, second = (read_volume(tmp_path / "out" / f"{name}_uncertainty.nii.gz")[0] for name in ("a", "b"))
    assert first.std() > 0
    np.testing.assert_array_equal(first, second)


def test_real_scans_shipped_by_nibabel_keep_their_geometry(aiib_scans, repo_root, tmp_path):
    """Real MR scans written by other software (nibabel's test data): big-endian int16 in LAS and big-endian
    float32 in RAS with a non-zero origin. Each prediction lies on its scan's exact grid, read by nibabel."""
    from nibabel.testing import data_path

    root, _ = aiib_scans
    torch.manual_seed(0)
    tiny_checkpoint(root / "raw" / AIIB_FOLDER, tmp_path / "tiny.pt")
    checkpoint = load_checkpoint(tmp_path / "tiny.pt")
    checkpoint["plans"]["target_spacing"] = [4.0, 4.0, 4.0]  # a few windows per scan: this test is about geometry
    save_checkpoint(checkpoint, tmp_path / "coarse.pt")
    scans = tmp_path / "real"
    scans.mkdir()
    for name in ("anatomical.nii", "reoriented_anat_moved.nii"):
        (scans / name).write_bytes((Path(data_path) / name).read_bytes())
    args = [sys.executable, "3_predict_aiib2023.py", f"--input_dir={scans}", f"--checkpoint={tmp_path / 'coarse.pt'}",
            f"--save_dir={tmp_path / 'out'}", "--device=cpu", "--mirror_axes=[]", "--torch_compile=False",
            "--save_uncertainty=True"]
    result = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("anatomical", "reoriented_anat_moved"):
        source = nib.load(scans / f"{name}.nii")
        assert source.header.endianness == ">"  # what makes these files worth a test
        for written in (f"{name}.nii.gz", f"{name}_uncertainty.nii.gz"):
            output = nib.load(tmp_path / "out" / written)
            assert output.shape == source.shape, written
            np.testing.assert_allclose(output.affine, source.affine, atol=1e-4, err_msg=written)
            assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(source.affine)
