"""Metric primitives (Dice, HD95, regions) on hand-built masks whose values are worked out in the comments."""
import numpy as np
import pytest

from light_training.evaluation.primitives import dice, hd95, normalize_regions, weighted_percentile

ISO = (1.0, 1.0, 1.0)


def cube(volume: np.ndarray, corner, size, value=1) -> np.ndarray:
    z, y, x = corner
    volume[z:z + size, y:y + size, x:x + size] = value
    return volume


def test_dice():
    a, b = np.zeros(10, bool), np.zeros(10, bool)
    a[:4], b[2:8] = True, True
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 6))  # overlap 2 voxels
    assert dice(np.zeros(5, bool), np.zeros(5, bool)) == 1.0


def test_weighted_percentile_uses_the_areas():
    # Sorted distances 0, 1, 2 with areas 90, 4, 6: cumulative 0.90, 0.94, 1.00 -> 95 % is reached at 2.
    assert weighted_percentile(np.array([2.0, 0.0, 1.0]), np.array([6.0, 90.0, 4.0]), 95) == 2.0
    # Areas 90, 6, 4: cumulative 0.90, 0.96 -> reached at 1 (unweighted, 2 of 3 points would give ~1.9).
    assert weighted_percentile(np.array([0.0, 1.0, 2.0]), np.array([90.0, 6.0, 4.0]), 95) == 1.0


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 1.0), 2.0), ((1.0, 1.0, 1.5), 3.0),
                                               ((2.0, 0.5, 1.5), 3.0), ((1.0, 1.0, 0.5), 1.0)])
def test_hd95_of_two_shifted_cubes(spacing, expected):
    # Two 10-voxel cubes, the prediction shifted by 2 voxels along x. The farthest surface points are 2
    # voxels apart along x (the prediction's face beyond the ground truth's, and the ground truth's face
    # beyond the prediction's: 2 * spacing_x mm), nothing is farther, and each of those faces is about 1/6
    # of its surface (> 5 %): the 95th percentile in both directions is 2 * spacing_x.
    gt = cube(np.zeros((30, 31, 32), bool), (5, 5, 5), 10)
    pred = cube(np.zeros((30, 31, 32), bool), (5, 5, 7), 10)
    assert hd95(pred, gt, spacing) == pytest.approx(expected)
    assert hd95(gt, gt, spacing) == 0.0


def test_hd95_with_an_empty_side():
    some = cube(np.zeros((9, 9, 9), bool), (2, 2, 2), 3)
    nothing = np.zeros((9, 9, 9), bool)
    assert hd95(some, nothing, ISO) == 374.0 and hd95(nothing, some, ISO) == 374.0
    assert hd95(nothing, nothing, ISO) == 0.0


@pytest.mark.parametrize("regions, match", [({}, "non-empty"), ({"WT": []}, "WT"), ({"bg": [0, 1]}, "1..255"),
                                            ({"a b": [1], "a_b": [2]}, "twice"), ({"x": [1.5]}, "integers")])
def test_bad_regions_are_an_error(regions, match):
    with pytest.raises(ValueError, match=match):
        normalize_regions(regions)
