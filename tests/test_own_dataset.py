"""A user's own dataset (nnU-Net's raw layout + dataset.json) through the four your_dataset/ scripts.

Two MRI channels, labels 1-3 and one region, 4 x 1 x 1 mm thick slices (the anisotropic resampling
path and a planned anisotropic network), the scripts' default folders, run from an empty working
directory as a user would.
"""
import csv
import json
import subprocess
import sys

import numpy as np

from light_training.checkpoint import load_checkpoint
from light_training.io import read_label, write_volume
from light_training.synthetic.generate import EXAMPLE_FOLDER, generate_example

CHAIN = ["your_dataset/1_preprocessing.py", "your_dataset/2_train_diffunet.py", "your_dataset/3_predict.py",
         "your_dataset/4_compute_metrics.py"]
# no patch_size, batch_size or network: the plan's (tiny widths)
TINY_TRAINING = ["--device=cpu", "--model_preset=tiny", "--max_epoch=1", "--num_iterations_per_epoch=2",
                 "--num_workers=0", "--num_val_patches=2"]
PREDICTION = ["--device=cpu", "--mirror_axes=[]", "--torch_compile=False", "--save_uncertainty=True"]


def script(repo_root, cwd, name, *args):
    return subprocess.run([sys.executable, str(repo_root / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_own_dataset_through_all_four_stages(tmp_path, repo_root):
    """Thick slices: 32 slices of 4 mm (24 after cropping to the head), 56 x 52 of 1 mm."""
    generate_example(tmp_path / "data" / "raw_data", num_cases=5, shape=(32, 56, 52), num_test=1)
    results = [script(repo_root, tmp_path, CHAIN[0], "--num_processes=0"),
               script(repo_root, tmp_path, CHAIN[1], *TINY_TRAINING),
               script(repo_root, tmp_path, CHAIN[2], *PREDICTION),
               script(repo_root, tmp_path, CHAIN[3], "--num_processes=0")]
    for name, result in zip(CHAIN, results):
        assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    plans = json.loads((tmp_path / "data" / EXAMPLE_FOLDER / "fullres" / "plans.json").read_text())
    assert plans["channel_names"] == ["T1c", "FLAIR"] and plans["labels"] == [0, 1, 2, 3]
    assert plans["target_spacing"] == [4.0, 1.0, 1.0]  # no target in the description: the median spacing
    network, median = plans["network"], plans["median_shape"]
    assert 24 <= median[0] <= 40 and network["gpu_memory_target_gb"] == 20.0
    pooled = [sum(s[a] == 2 for s in network["strides"]) for a in range(3)]
    assert pooled[0] < pooled[1] and pooled[0] < pooled[2]  # z pooled fewer times than y and x
    assert network["kernel_sizes"][0] == [1, 3, 3] and all(k == [3, 3, 3] for k in network["kernel_sizes"][1:])
    assert all(p <= m for p, m in zip(network["patch_size"], median))  # the patch fits the median image
    assert 0 < network["estimated_peak_gib"] <= 20 and network["estimator_calls"] >= 1  # the real estimator's
    checkpoint = load_checkpoint(tmp_path / "logs" / EXAMPLE_FOLDER / "model" / "best.pt")
    config = checkpoint["model_config"]  # trained, and predicted with, the plan's network at tiny widths
    assert config["strides"] == network["strides"] and config["kernel_size"] == network["kernel_sizes"]
    assert config["features"] == [8, 16, 32, 64][:len(network["strides"])]
    assert checkpoint["config"]["patch_size"] == network["patch_size"]
    assert checkpoint["config"]["batch_size"] == network["batch_size"]
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
