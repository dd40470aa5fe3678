"""A user's own dataset (nnU-Net's raw layout + dataset.json) through the four your_dataset/ scripts.

Two MRI channels, labels 1-3 and one region, 4 x 1 x 1 mm thick slices (the anisotropic resampling
path), the scripts' default folders, run from an empty working directory as a user would.
"""
import csv
import json
import subprocess
import sys

import numpy as np

from light_training.io import read_label, write_volume
from light_training.synthetic.generate import EXAMPLE_FOLDER, generate_example

CHAIN = ["your_dataset/1_preprocessing.py", "your_dataset/2_train_diffunet.py", "your_dataset/3_predict.py",
         "your_dataset/4_compute_metrics.py"]
TINY_TRAINING = ["--device=cpu", "--model_preset=tiny", "--patch_size=[16,32,32]", "--max_epoch=1",
                 "--num_iterations_per_epoch=2", "--num_workers=0", "--num_val_patches=2", "--batch_size=1"]
PREDICTION = ["--device=cpu", "--mirror_axes=[]", "--torch_compile=False", "--save_uncertainty=True"]


def script(repo_root, cwd, name, *args):
    return subprocess.run([sys.executable, str(repo_root / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_own_dataset_through_all_four_stages(tmp_path, repo_root):
    generate_example(tmp_path / "data" / "raw_data", num_cases=5, shape=(16, 40, 36), num_test=1)
    results = [script(repo_root, tmp_path, CHAIN[0], "--num_processes=0"),
               script(repo_root, tmp_path, CHAIN[1], *TINY_TRAINING),
               script(repo_root, tmp_path, CHAIN[2], *PREDICTION),
               script(repo_root, tmp_path, CHAIN[3], "--num_processes=0")]
    for name, result in zip(CHAIN, results):
        assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    plans = json.loads((tmp_path / "data" / EXAMPLE_FOLDER / "fullres" / "plans.json").read_text())
    assert plans["channel_names"] == ["T1c", "FLAIR"] and plans["labels"] == [0, 1, 2, 3]
    assert plans["target_spacing"] == [4.0, 1.0, 1.0]  # no target in the description: the median spacing
    assert (tmp_path / "logs" / EXAMPLE_FOLDER / "model" / "best.pt").is_file()
    predictions = tmp_path / "prediction_results" / EXAMPLE_FOLDER / "diffunet"
    (held_out,) = sorted(p for p in predictions.glob("case_*.nii.gz") if "_uncertainty" not in p.name)
    prediction, geometry = read_label(held_out)
    _, source = read_label(tmp_path / "data" / "raw_data" / EXAMPLE_FOLDER / "labelsTr" / held_out.name)
    assert geometry == source and set(np.unique(prediction)) <= {0, 1, 2, 3}
    with open(tmp_path / "prediction_results" / EXAMPLE_FOLDER / "result_metrics" / "diffunet.csv") as f:
        header = next(csv.reader(f))
    for column in ("necrosis_Dice", "edema_HD95", "enhancing_Dice", "tumor_Dice", "tumor_HD95"):
        assert column in header
    # a folder of new scans (imagesTs) predicts with the same script
    result = script(repo_root, tmp_path, CHAIN[2], *PREDICTION,
                    f"--input_dir=data/raw_data/{EXAMPLE_FOLDER}/imagesTs", "--save_dir=./new_scans")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "new_scans" / "test_000.nii.gz").is_file()


def test_bad_cases_stop_before_any_work(tmp_path, repo_root):
    root = tmp_path / "data" / "raw_data" / EXAMPLE_FOLDER
    generate_example(tmp_path / "data" / "raw_data", num_cases=3, shape=(16, 24, 20), num_test=0)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()  # a missing channel file
    label, geometry = read_label(root / "labelsTr" / "case_002.nii.gz")
    label[0, 0, 0] = 7  # a label value the description does not have
    write_volume(label, geometry, root / "labelsTr" / "case_002.nii.gz")
    result = script(repo_root, tmp_path, CHAIN[0], "--num_processes=0")
    assert result.returncode != 0
    assert "case_001" in result.stderr and "case_001_0001.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "data" / EXAMPLE_FOLDER / "fullres" / "train").glob("*.npy"))
    result = script(repo_root, tmp_path, CHAIN[0], "--num_processes=0", "--skip_bad_cases=True")
    assert result.returncode == 0, result.stderr
    assert "case_002" in result.stdout and "[7]" in result.stdout  # listed with what was wrong
