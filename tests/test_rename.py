"""brats2023/1_rename_mri_data_brats2023.py on a synthetic BraTS2023 folder: renames, twice is harmless, clashes."""
import hashlib
import json
import subprocess
import sys

from light_training.synthetic.generate import BRATS_FOLDER, generate_brats2023

SCRIPT = "brats2023/1_rename_mri_data_brats2023.py"
PARTS = ["t1n", "t1c", "t2w", "t2f", "seg"]
CASES = ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]


def rename(repo_root, data_dir):
    return subprocess.run([sys.executable, SCRIPT, f"--data_dir={data_dir}"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.nii.gz")}


def test_rename_then_rename_again(tmp_path, repo_root):
    generate_brats2023(tmp_path, num_cases=2, seed=0, shape=(16, 20, 18))
    root = tmp_path / BRATS_FOLDER
    before = digests(root)
    result = rename(repo_root, root)
    assert result.returncode == 0, result.stderr
    assert "2 case(s) in" in result.stdout and "10 file(s) renamed, 0 already renamed, 0 missing" in result.stdout
    for case in CASES:
        assert sorted(p.name for p in (root / case).iterdir()) == sorted(f"{part}.nii.gz" for part in PARTS)
    after = digests(root)
    expected = {f"{case}/{part}.nii.gz": before[f"{case}/{case}-{part}.nii.gz"] for case in CASES for part in PARTS}
    assert after == expected  # the same bytes under the new names
    config = json.loads((root / "1_rename_mri_data_brats2023_config.json").read_text())
    assert config == {"dataset": "brats2023", "data_dir": str(root)}
    result = rename(repo_root, root)  # twice: nothing to do, nothing changed
    assert result.returncode == 0, result.stderr
    assert "0 file(s) renamed, 10 already renamed" in result.stdout
    assert digests(root) == after
    # the generator writes a case again in the original naming, without leaving the renamed files behind
    generate_brats2023(tmp_path, num_cases=1, seed=0, shape=(16, 20, 18))
    assert sorted(p.name for p in (root / CASES[0]).iterdir()) == sorted(f"{CASES[0]}-{p}.nii.gz" for p in PARTS)
    assert "5 file(s) renamed, 5 already renamed" in rename(repo_root, root).stdout


def test_clash_names_the_folder_and_renames_nothing(tmp_path, repo_root):
    generate_brats2023(tmp_path, num_cases=2, seed=0, shape=(16, 20, 18))
    root = tmp_path / BRATS_FOLDER
    clash = root / CASES[1] / "t2f.nii.gz"
    clash.write_bytes((root / CASES[1] / f"{CASES[1]}-t2f.nii.gz").read_bytes())
    (root / CASES[0] / f"{CASES[0]}-seg.nii.gz").unlink()  # a case without its label (validation data)
    before = digests(root)
    result = rename(repo_root, root)
    assert result.returncode != 0
    assert CASES[1] in result.stderr and "t2f.nii.gz" in result.stderr and CASES[0] not in result.stderr
    assert digests(root) == before  # nothing renamed
    clash.unlink()
    result = rename(repo_root, root)
    assert result.returncode == 0, result.stderr
    assert "9 file(s) renamed, 0 already renamed, 1 missing" in result.stdout and f"{CASES[0]}: label" in result.stdout


def test_missing_folder_and_help(tmp_path, repo_root):
    result = rename(repo_root, tmp_path / "nowhere")
    assert result.returncode != 0 and "nowhere: no such folder" in result.stderr
    result = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=repo_root, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--data_dir" in result.stdout
    assert "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData" in result.stdout
