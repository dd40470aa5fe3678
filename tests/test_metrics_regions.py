"""Dice and HD95 per region of a user's own label map, on hand-built cubes whose values are worked out."""
import csv
import pickle
from functools import partial

import numpy as np
import pytest

from light_training.evaluation.metrics_brats import brats_case_metrics
from light_training.evaluation.metrics_regions import region_case_metrics, region_columns
from light_training.evaluation.scoring import evaluate_folder, nifti_cases
from light_training.io import Geometry, write_volume

REGIONS = {"liver": [1], "liver tumour": [2], "whole liver": [1, 2], "vessel": [3]}


def label_map() -> np.ndarray:
    """(17, 18, 19) zeros with a 10-voxel cube of label 1 at (3, 3, 3) and a 2-voxel cube of label 2 in it."""
    volume = np.zeros((17, 18, 19), dtype=np.uint8)
    volume[3:13, 3:13, 3:13] = 1
    volume[6:8, 6:8, 6:8] = 2
    return volume


def shifted() -> np.ndarray:
    """The same map moved by 2 voxels along x; label 2 is missing (it became label 1)."""
    volume = np.zeros((17, 18, 19), dtype=np.uint8)
    volume[3:13, 3:13, 5:15] = 1
    return volume


def test_columns_keep_the_order_and_replace_spaces():
    assert region_columns(REGIONS) == ("liver_Dice", "liver_HD95", "liver_tumour_Dice", "liver_tumour_HD95",
                                       "whole_liver_Dice", "whole_liver_HD95", "vessel_Dice", "vessel_HD95")


@pytest.mark.parametrize("spacing, hd95_whole", [((1.0, 1.0, 1.0), 2.0), ((1.0, 1.0, 1.5), 3.0),
                                                  ((2.0, 0.5, 0.5), 1.0)])
def test_values_worked_out_by_hand(spacing, hd95_whole):
    row = region_case_metrics(shifted(), label_map(), spacing, REGIONS)
    assert list(row) == list(region_columns(REGIONS))
    # whole liver: two 10-voxel cubes 2 voxels apart along x, overlapping in 10 x 10 x 8 = 800 voxels:
    # Dice 2 * 800 / 2000 = 0.8; HD95 = 2 voxels along x = 2 * spacing_x mm (tests/test_metric_primitives.py).
    assert row["whole_liver_Dice"] == pytest.approx(0.8)
    assert row["whole_liver_HD95"] == pytest.approx(hd95_whole)
    # liver (label 1 only): the ground truth lacks the 8 voxels of label 2: 992 and 1000 voxels, overlap
    # 800 - 8 = 792: Dice 2 * 792 / 1992.
    assert row["liver_Dice"] == pytest.approx(1584 / 1992)
    # liver tumour: only in the ground truth: Dice 0, HD95 374 (BraTS's convention); vessel: on neither
    # side: Dice 1, HD95 0.
    assert (row["liver_tumour_Dice"], row["liver_tumour_HD95"]) == (0.0, 374.0)
    assert (row["vessel_Dice"], row["vessel_HD95"]) == (1.0, 0.0)


def test_the_brats_regions_give_the_brats_values():
    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    prediction, ground_truth = shifted(), label_map()
    ground_truth[10:12, 10:12, 10:12] = 3
    brats = brats_case_metrics(prediction, ground_truth, (1.0, 1.0, 1.5))
    row = region_case_metrics(prediction, ground_truth, (1.0, 1.0, 1.5), regions)
    assert row == {column: brats[column] for column in row}


def test_picklable_and_scores_a_folder_in_worker_processes(tmp_path):
    metric = partial(region_case_metrics, regions=REGIONS)
    again = pickle.loads(pickle.dumps(metric))
    assert again(shifted(), label_map(), (1.0, 1.0, 1.0)) == metric(shifted(), label_map(), (1.0, 1.0, 1.0))
    geometry = Geometry((1.0, 1.0, 1.5), (4.0, -3.0, 2.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (17, 18, 19))
    for case, prediction in (("case_1", shifted()), ("case_2", label_map())):
        write_volume(label_map(), geometry, tmp_path / "gt" / f"{case}.nii.gz")
        write_volume(prediction, geometry, tmp_path / "pred" / f"{case}.nii.gz")
    result = evaluate_folder(nifti_cases(tmp_path / "pred"), nifti_cases(tmp_path / "gt"), metric,
                             region_columns(REGIONS), tmp_path / "out", "pred", num_processes=2)
    with open(result.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["whole_liver_HD95"]) == pytest.approx(3.0)  # spacing_x 1.5 mm
    assert float(rows[1]["liver_tumour_Dice"]) == 1.0 and float(rows[1]["whole_liver_HD95"]) == 0.0


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="1..255"):
        region_case_metrics(shifted(), label_map(), (1.0, 1.0, 1.0), {"background": [0]})
    with pytest.raises(ValueError, match="shape"):
        region_case_metrics(shifted()[:, :, :-1], label_map(), (1.0, 1.0, 1.0), REGIONS)
    with pytest.raises(ValueError, match="spacing"):
        region_case_metrics(shifted(), label_map(), (1.0, 1.0), REGIONS)


def test_one_printed_table_per_region_even_when_one_name_starts_another():
    from light_training.datasets import parse_description
    from light_training.evaluation.metric_sets import metric_for

    for metrics in ("dice_hd95", "brats2023"):
        description = parse_description({"channel_names": {"0": "CT"}, "numTraining": 2, "file_ending": ".nii.gz",
                                         "labels": {"background": 0, "liver": 1, "liver tumour": 2},
                                         "metrics": metrics}, "x/dataset.json")
        _, columns, groups = metric_for(description)
        assert [g[0] for g in groups] == ["liver_Dice", "liver_tumour_Dice"]
        assert sum(groups, []) == list(columns)  # every column in exactly one table
