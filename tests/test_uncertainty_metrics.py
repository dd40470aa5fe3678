"""Uncertainty quality metrics on hand-made maps whose values are worked out in the comments."""
import csv
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from light_training.evaluation.metrics_aiib import AIIB_COLUMNS, aiib_case_metrics
from light_training.evaluation.scoring import evaluate_folder, nifti_cases
from light_training.evaluation.uncertainty import (auroc, evaluate_folder_with_uncertainty, uncertainty_band,
                                                   uncertainty_columns, uncertainty_scores)
from light_training.io import Geometry, write_volume


def line_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (1, 1, 40) row: ground truth x = 10..19, prediction x = 12..21 (10 voxels each, 8 shared).

    Wrong voxels: x = 10, 11 (missed) and 20, 21 (leaked). Band (3 voxels around x = 10..21): x = 7..24,
    18 voxels, 4 of them wrong. Dice = 2 * 8 / 20 = 0.8. Returns (prediction, ground truth, wrong)."""
    gt, pred = np.zeros((1, 1, 40), np.uint8), np.zeros((1, 1, 40), np.uint8)
    gt[..., 10:20], pred[..., 12:22] = 1, 1
    return pred, gt, pred != gt


def test_band_reaches_band_voxels_around_either_foreground():
    pred, gt, _ = line_case()
    assert np.flatnonzero(uncertainty_band(pred, gt, 3)).tolist() == list(range(7, 25))
    assert np.flatnonzero(uncertainty_band(pred, gt, 0)).tolist() == list(range(10, 22))
    # In 3-D the reach is Euclidean: around one voxel, a reach of 2 takes the offsets of squared length <= 4:
    # 1 + 6 (1) + 12 (2) + 8 (3) + 6 (4: (0, 0, 2)); (0, 1, 2) (5) is out.
    one = np.zeros((7, 7, 7), np.uint8)
    one[3, 3, 3] = 1
    assert np.count_nonzero(uncertainty_band(one, np.zeros_like(one), 2)) == 1 + 6 + 12 + 8 + 6
    assert not uncertainty_band(np.zeros_like(one), np.zeros_like(one), 3).any()


def test_auroc_of_maps_that_flag_the_wrong_voxels():
    pred, gt, wrong = line_case()
    exact = wrong.astype(np.float32)  # 1 exactly on the wrong voxels
    assert uncertainty_scores(pred, gt, exact)["unc_AUROC"] == 1.0
    assert uncertainty_scores(pred, gt, -exact)["unc_AUROC"] == 0.0  # its negation ranks them last
    assert uncertainty_scores(pred, gt, np.full(pred.shape, 0.5))["unc_AUROC"] == 0.5  # all tied
    # Far background is not in the band: a very uncertain right voxel at x = 30 changes nothing.
    far = exact.copy()
    far[..., 30] = 5.0
    assert uncertainty_scores(pred, gt, far)["unc_AUROC"] == 1.0
    # ... and one in the band (x = 24) does: it outranks the 4 wrong voxels, 1 of the 14 right ones:
    # AUROC = (4 * 14 - 4) / (4 * 14) = 52 / 56.
    near = exact.copy()
    near[..., 24] = 5.0
    assert uncertainty_scores(pred, gt, near)["unc_AUROC"] == pytest.approx(52 / 56)


def test_auroc_equals_monai_and_is_nan_without_both_kinds():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=300).astype(np.float64)  # many ties
    labels = rng.random(300) < scores / 8
    expected = compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels.astype(np.int64)))
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    pred, gt, _ = line_case()
    row = uncertainty_scores(gt, gt, np.zeros(gt.shape))  # a perfect prediction: no wrong voxel in the band
    assert math.isnan(row["unc_AUROC"]) and row["Dice"] == 1.0 and row["unc_Dice_discard5"] == 1.0
    assert math.isnan(auroc(np.ones(4), np.ones(4, bool)))


def test_dice_after_discarding_the_most_uncertain_voxels():
    pred, gt, wrong = line_case()
    # 25 % of the 18 band voxels: floor(4.5) = 4 discarded.
    row = uncertainty_scores(pred, gt, wrong.astype(np.float32), discard_fraction=0.25)
    assert list(row) == ["unc_AUROC", "unc_Dice_discard25", "Dice"] and row["Dice"] == pytest.approx(0.8)
    # The 4 wrong voxels go: prediction and ground truth are then both x = 12..19: Dice 1 > 0.8.
    assert row["unc_Dice_discard25"] == 1.0
    # A map that is high on 4 right foreground voxels (x = 12..15) discards those instead: prediction
    # x = 16..21 (6), ground truth x = 10, 11, 16..19 (6), 4 shared: Dice 2 * 4 / 12 < 0.8.
    misplaced = np.zeros(pred.shape, np.float32)
    misplaced[..., 12:16] = 1.0
    assert uncertainty_scores(pred, gt, misplaced, discard_fraction=0.25)["unc_Dice_discard25"] == pytest.approx(8 / 12)
    # The default 5 % of 18 voxels: floor(0.9) = 0, nothing is discarded.
    assert uncertainty_scores(pred, gt, wrong.astype(np.float32))["unc_Dice_discard5"] == pytest.approx(0.8)


def test_any_label_mismatch_is_wrong():
    gt = np.zeros((1, 1, 12), np.uint8)
    gt[..., 4:8] = 2
    pred = gt.copy()
    pred[..., 4] = 1  # foreground on both sides, the wrong label: wrong, but in the foreground Dice
    uncertainty = (pred != gt).astype(np.float32)
    row = uncertainty_scores(pred, gt, uncertainty, band_voxels=1)
    assert row["unc_AUROC"] == 1.0 and row["Dice"] == 1.0


def test_bad_input_is_an_error():
    pred, gt, wrong = line_case()
    with pytest.raises(ValueError, match="shapes"):
        uncertainty_scores(pred, gt, wrong[..., :-1])
    with pytest.raises(ValueError, match="NaN"):
        uncertainty_scores(pred, gt, np.where(wrong, np.nan, 0.0))
    with pytest.raises(ValueError, match="discard_fraction"):
        uncertainty_scores(pred, gt, wrong, discard_fraction=1.0)
    with pytest.raises(ValueError, match="band_voxels"):
        uncertainty_scores(pred, gt, wrong, band_voxels=-1)
    assert uncertainty_columns(0.1) == ("unc_AUROC", "unc_Dice_discard10", "Dice")


def tube() -> np.ndarray:
    volume = np.zeros((9, 10, 31), dtype=np.uint8)
    volume[3:6, 3:6, 2:28] = 1  # 234 voxels (tests/test_metrics_aiib.py)
    return volume


@pytest.mark.parametrize("num_processes", [0, 2])
def test_folder_with_uncertainty_maps(tmp_path, num_processes):
    grid = Geometry((0.5, 0.7, 0.8), (-12.0, 30.5, 7.25), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0), (9, 10, 31))
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    leaky = tube()
    leaky[3:6, 6:9, 10:13] = 1  # 27 leaked voxels
    for case in ("AIIB23_1", "AIIB23_2", "AIIB23_3"):
        write_volume(tube(), grid, gt_dir / f"{case}.nii.gz")
        write_volume(leaky, grid, pred_dir / f"{case}.nii.gz")
    write_volume((leaky != tube()).astype(np.float32), grid, pred_dir / "AIIB23_1_uncertainty.nii.gz")
    moved = Geometry(grid.spacing, (0.0, 0.0, 0.0), grid.direction, grid.shape)
    write_volume(np.zeros(grid.shape, np.float32), moved, pred_dir / "AIIB23_3_uncertainty.nii.gz")
    result = evaluate_folder_with_uncertainty(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics,
                                              AIIB_COLUMNS, tmp_path / "out", "pred", num_processes=num_processes)
    assert result.columns == (*AIIB_COLUMNS, "unc_AUROC", "unc_Dice_discard5", "Dice")
    with open(result.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["AIIB23_1", "AIIB23_2"]
    # AIIB23_1: the map is 1 exactly on the 27 leaked voxels: AUROC 1. Dice = 2 * 234 / (261 + 234).
    assert float(rows[0]["unc_AUROC"]) == 1.0 and float(rows[0]["Dice"]) == pytest.approx(468 / 495)
    # The band (3 voxels around the 261) holds 1,878 voxels: 5 % = 93 discarded, the 27 leaked ones first
    # (then right voxels at uncertainty 0): no wrong voxel is left, prediction = ground truth on the rest: 1.
    assert float(rows[0]["unc_Dice_discard5"]) == 1.0
    # AIIB23_2 has no map: NaN for the unc_ columns, its Dice all the same; AIIB23_3's map is off the grid.
    assert rows[1]["unc_AUROC"] == "nan" and float(rows[1]["Dice"]) == pytest.approx(468 / 495)
    assert "AIIB23_3_uncertainty.nii.gz" in result.unscored["AIIB23_3"] and "grid" in result.unscored["AIIB23_3"]
    assert result.summary["unc_AUROC"] == {"mean": 1.0, "std": 0.0, "median": 1.0}  # NaN skipped
    # Without any map beside the predictions: the plain table.
    for path in pred_dir.glob("*_uncertainty.nii.gz"):
        path.unlink()
    plain = evaluate_folder_with_uncertainty(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics,
                                             AIIB_COLUMNS, tmp_path / "out", "pred")
    assert plain.columns == AIIB_COLUMNS and len(plain.rows) == 3
    assert plain.rows == evaluate_folder(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics, AIIB_COLUMNS,
                                         tmp_path / "out", "pred").rows
