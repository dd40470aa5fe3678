"""The metrics scripts on folder pairs of tiny NIfTI files, run as a user would."""
import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from light_training.io import Geometry, write_volume
from light_training.evaluation.metrics_aiib import AIIB_COLUMNS
from light_training.evaluation.metrics_brats import BRATS_COLUMNS
from light_training.evaluation.uncertainty import UNCERTAINTY_COLUMNS

AIIB_SCRIPT = "4_compute_metrics_aiib2023.py"
BRATS_SCRIPT = "brats2023/5_compute_metrics_brats2023.py"
# A grid that is not the identity: spacing (z, y, x), origin, a rotation about z.
GEOMETRY = Geometry(spacing=(0.5, 0.7, 0.7), origin=(-12.0, 30.5, 7.25),
                    direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), shape=(9, 10, 31))


def run(repo_root, script, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo_root / script), *map(str, args)], cwd=cwd or repo_root,
                          capture_output=True, text=True, timeout=120)


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def tube() -> np.ndarray:
    volume = np.zeros(GEOMETRY.shape, dtype=np.uint8)
    volume[3:6, 3:6, 2:28] = 1  # 234 voxels; see tests/test_metrics_aiib.py for the values
    return volume


@pytest.fixture
def aiib_folders(tmp_path):
    """Ground truth: three tubes. Predictions: AIIB23_1 cut (IoU 0.5, DLR 0.5, DBR 0), AIIB23_2 exact,
    AIIB23_10 empty; plus files that are no predictions."""
    gt_dir, pred_dir = tmp_path / "labels", tmp_path / "my_predictions"
    cut = tube()
    cut[:, :, 12:15] = 0
    for case, prediction in {"AIIB23_1": cut, "AIIB23_2": tube(), "AIIB23_10": np.zeros_like(cut)}.items():
        write_volume(tube(), GEOMETRY, gt_dir / f"{case}.nii.gz")
        write_volume(prediction, GEOMETRY, pred_dir / f"{case}.nii.gz")
    write_volume(np.ones(GEOMETRY.shape, np.float32), GEOMETRY, pred_dir / "AIIB23_1_uncertainty.nii.gz")
    (pred_dir / "AIIB23_1.npz").write_bytes(b"not read")
    (pred_dir / "3_predict_aiib2023_config.json").write_text("{}")
    return pred_dir, gt_dir


def test_aiib_script_on_a_folder_pair(repo_root, tmp_path, aiib_folders):
    pred_dir, gt_dir = aiib_folders
    out = tmp_path / "metrics"
    result = run(repo_root, AIIB_SCRIPT, f"--pred_dir={pred_dir}", f"--gt_dir={gt_dir}", f"--output_dir={out}",
                 "--num_processes=2")
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(out / "my_predictions.csv")  # named after the predictions' folder
    # an uncertainty map lies beside AIIB23_1: the uncertainty columns follow the AIIB ones
    assert header == ["case", "IoU", "DLR", "DBR", "precision", "leakages", *UNCERTAINTY_COLUMNS]
    assert [row["case"] for row in rows] == ["AIIB23_1", "AIIB23_2", "AIIB23_10"]  # natural order
    values = [{k: float(v) for k, v in row.items() if k in AIIB_COLUMNS} for row in rows]
    assert values[0] == pytest.approx({"IoU": 0.5, "DLR": 0.5, "DBR": 0.0, "precision": 1.0, "leakages": 0.0})
    assert values[1] == pytest.approx({"IoU": 1.0, "DLR": 1.0, "DBR": 1.0, "precision": 1.0, "leakages": 0.0})
    assert values[2] == {"IoU": 0.0, "DLR": 0.0, "DBR": 0.0, "precision": 0.0, "leakages": 0.0}
    summary = json.loads((out / "my_predictions_summary.json").read_text())
    assert set(summary) == {*AIIB_COLUMNS, *UNCERTAINTY_COLUMNS, "unscored", "scored_as_empty"}
    assert summary["unscored"] == {} and summary["scored_as_empty"] == []
    # IoU 0.5, 1, 0: mean 0.5, median 0.5, std sqrt((0 + 0.25 + 0.25) / 3); DBR 0, 1, 0: mean 1/3, median 0.
    assert summary["IoU"] == pytest.approx({"mean": 0.5, "std": math.sqrt(1 / 6), "median": 0.5})
    assert summary["DBR"] == pytest.approx({"mean": 1 / 3, "std": math.sqrt(2 / 9), "median": 0.0})
    config = json.loads((out / "my_predictions_config.json").read_text())
    assert config["pred_dir"] == str(pred_dir) and config["num_processes"] == 2
    assert "mean" in result.stdout and "AIIB23_10" in result.stdout  # the printed table


def test_aiib_script_default_layout_and_missing_predictions(repo_root, tmp_path, aiib_folders):
    pred_dir, gt_dir = aiib_folders
    # The original's layout, relative to the working directory: --pred=<name> and the raw ground truth.
    (tmp_path / "prediction_results").mkdir()
    pred_dir.rename(tmp_path / "prediction_results" / "diffunet")
    (tmp_path / "data" / "raw_data" / "AIIB23_Train_T1").mkdir(parents=True)
    gt_dir.rename(tmp_path / "data" / "raw_data" / "AIIB23_Train_T1" / "gt")
    (tmp_path / "prediction_results" / "diffunet" / "AIIB23_10.nii.gz").unlink()  # one case not predicted
    result = run(repo_root, AIIB_SCRIPT, "--pred=diffunet", "--num_processes=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _, rows = read_csv(tmp_path / "prediction_results" / "result_metrics" / "diffunet.csv")
    assert [row["case"] for row in rows] == ["AIIB23_1", "AIIB23_2"]  # skipped, and said so
    assert "not scored: 1 case(s)" in result.stdout and "AIIB23_10: no prediction" in result.stdout
    result = run(repo_root, AIIB_SCRIPT, "--missing_predictions=empty", "--num_processes=0", cwd=tmp_path)
    _, rows = read_csv(tmp_path / "prediction_results" / "result_metrics" / "diffunet.csv")
    assert [row["case"] for row in rows] == ["AIIB23_1", "AIIB23_2", "AIIB23_10"] and rows[2]["IoU"] == "0.0"
    result = run(repo_root, AIIB_SCRIPT, "--missing_predictions=error", cwd=tmp_path)
    assert result.returncode != 0 and "without prediction: AIIB23_10" in result.stderr


def test_aiib_script_lists_an_off_grid_case_and_refuses_orphans(repo_root, tmp_path, aiib_folders):
    pred_dir, gt_dir = aiib_folders
    out = tmp_path / "metrics"
    shifted = Geometry(GEOMETRY.spacing, (0.0, 0.0, 0.0), GEOMETRY.direction, GEOMETRY.shape)
    write_volume(tube(), shifted, pred_dir / "AIIB23_2.nii.gz")  # same array, another origin
    result = run(repo_root, AIIB_SCRIPT, f"--pred_dir={pred_dir}", f"--gt_dir={gt_dir}", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr  # the other cases are scored, this one is listed with the reason
    _, rows = read_csv(out / "my_predictions.csv")
    assert [row["case"] for row in rows] == ["AIIB23_1", "AIIB23_10"]
    reason = json.loads((out / "my_predictions_summary.json").read_text())["unscored"]["AIIB23_2"]
    assert "grid" in reason and "origin" in reason and "AIIB23_2.nii.gz" in reason
    (pred_dir / "AIIB23_2.nii.gz").unlink()
    write_volume(tube(), GEOMETRY, pred_dir / "AIIB23_99.nii.gz")  # a prediction without ground truth
    result = run(repo_root, AIIB_SCRIPT, f"--pred_dir={pred_dir}", f"--gt_dir={gt_dir}", f"--output_dir={out}")
    assert result.returncode != 0 and "without ground truth: AIIB23_99" in result.stderr


def brats_case(lesions: list[tuple[tuple[int, int, int], int, int]]) -> np.ndarray:
    """A (17, 40, 21) label map of cubes given as (corner, size, label)."""
    volume = np.zeros((17, 40, 21), dtype=np.uint8)
    for (z, y, x), size, value in lesions:
        volume[z:z + size, y:y + size, x:x + size] = value
    return volume


def test_brats_script_on_raw_layout(repo_root, tmp_path):
    geometry = Geometry((1.0, 1.0, 1.0), (-90.0, 120.0, -70.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), (17, 40, 21))
    raw, pred_dir, out = tmp_path / "raw", tmp_path / "diffunet", tmp_path / "metrics"
    two_lesions = brats_case([((3, 3, 3), 5, 1), ((3, 25, 3), 4, 1)])  # NCR: A 125 voxels, B 64
    cases = {"BraTS-GLI-00002-000": (two_lesions, brats_case([((3, 3, 3), 5, 1)])),  # B missed
             "BraTS-GLI-00010-000": (brats_case([((4, 4, 4), 6, 2), ((5, 5, 5), 4, 3)]),) * 2}  # exact
    for index, (case, (gt, prediction)) in enumerate(cases.items()):
        prefix = f"{case}-" if index == 0 else ""  # the challenge's names, and those after renaming
        for sequence in ("t1n", "t1c", "t2w", "t2f"):
            write_volume(np.zeros((17, 40, 21), np.int16), geometry, raw / case / f"{prefix}{sequence}.nii.gz")
        write_volume(gt, geometry, raw / case / f"{prefix}seg.nii.gz")
        write_volume(prediction, geometry, pred_dir / f"{case}.nii.gz")
    write_volume(np.zeros((17, 40, 21), np.float32), geometry, pred_dir / "BraTS-GLI-00002-000_uncertainty.nii.gz")
    write_volume(two_lesions, geometry, raw / "BraTS-GLI-00077-000" / "t1n.nii.gz")  # no label: not scored
    result = run(repo_root, BRATS_SCRIPT, f"--pred_dir={pred_dir}", f"--raw_dir={raw}", f"--output_dir={out}",
                 "--num_processes=2")
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(out / "diffunet.csv")
    assert header == ["case"] + [f"{r}_{m}" for r in ("WT", "TC", "ET") for m in (
        "Dice", "HD95", "LesionWise_Dice", "LesionWise_HD95", "Num_TP", "Num_FP", "Num_FN")] + list(UNCERTAINTY_COLUMNS)
    assert header[1:len(BRATS_COLUMNS) + 1] == list(BRATS_COLUMNS)
    missed, exact = rows
    assert missed["case"] == "BraTS-GLI-00002-000" and exact["case"] == "BraTS-GLI-00010-000"
    # Worked out in tests/test_metrics_brats.py::test_two_lesions_one_missed_and_empty_et.
    assert float(missed["WT_Dice"]) == pytest.approx(250 / 314)
    assert (float(missed["TC_LesionWise_Dice"]), float(missed["TC_LesionWise_HD95"])) == (0.5, 187.0)
    assert (missed["WT_Num_TP"], missed["WT_Num_FP"], missed["WT_Num_FN"]) == ("1", "0", "1")
    assert (float(missed["ET_Dice"]), float(missed["ET_HD95"]), float(missed["ET_LesionWise_Dice"])) == (1, 0, 1)
    # The exact case: every Dice 1 and HD95 0; WT is the 216-voxel cube, TC = ET the 64-voxel one: 1 TP each.
    assert all(float(exact[f"{r}_Dice"]) == 1.0 and float(exact[f"{r}_HD95"]) == 0.0 for r in ("WT", "TC", "ET"))
    assert [exact[f"{r}_Num_TP"] for r in ("WT", "TC", "ET")] == ["1", "1", "1"]
    summary = json.loads((out / "diffunet_summary.json").read_text())
    assert list(summary) == [*BRATS_COLUMNS, *UNCERTAINTY_COLUMNS, "unscored", "scored_as_empty"]
    assert summary["unscored"] == {}
    assert summary["WT_LesionWise_Dice"] == pytest.approx({"mean": 0.75, "std": 0.25, "median": 0.75})
    assert summary["WT_Num_FN"] == pytest.approx({"mean": 0.5, "std": 0.5, "median": 0.5})
    assert (out / "diffunet_config.json").is_file()
    assert "WT" in result.stdout and "LesionWise_Dice" in result.stdout


def test_summary_skips_nan_and_listing_ignores_other_files(tmp_path, aiib_folders):
    from light_training.evaluation.scoring import nifti_cases, summarize

    rows = [{"case": "a", "DBR": 0.5, "IoU": float("nan")}, {"case": "b", "DBR": float("nan"), "IoU": float("nan")},
            {"case": "c", "DBR": 1.0, "IoU": float("nan")}]
    # DBR: NaN skipped -> 0.5 and 1.0: mean 0.75, std 0.25, median 0.75; IoU: no number at all -> None.
    assert summarize(rows, ["DBR", "IoU"]) == {"DBR": {"mean": 0.75, "std": 0.25, "median": 0.75},
                                              "IoU": {"mean": None, "std": None, "median": None}}
    pred_dir, _ = aiib_folders
    assert list(nifti_cases(pred_dir)) == ["AIIB23_1", "AIIB23_2", "AIIB23_10"]  # no _uncertainty, .npz, .json
