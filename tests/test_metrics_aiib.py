"""AIIB2023 metrics on hand-built airways whose values are worked out in the comments."""
import json
import math
import warnings

import nibabel as nib
import numpy as np
import pytest

from light_training.evaluation.metrics_aiib import AIIB_COLUMNS, aiib_case_metrics, airway_skeleton, parse_branches
from light_training.evaluation.scoring import evaluate_folder, nifti_cases
from light_training.io import Geometry, read_label, write_volume

# Files as other tools write them: SimpleITK (this project's writer, on an LPS grid and on a RAS-like one with
# x and y flipped) and nibabel (RAS and LPS affines). The nibabel writers take the array in the file's
# (x, y, z) voxel order, SimpleITK's in (z, y, x) order.
SITK_GRIDS = {"sitk_lps": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
              "sitk_ras": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)}
NIBABEL_AFFINES = {"nibabel_ras": np.diag([0.8, 0.7, 0.5, 1.0]), "nibabel_lps": np.diag([-0.8, -0.7, 0.5, 1.0])}
WRITERS = [*SITK_GRIDS, *NIBABEL_AFFINES]


def write_zyx(array_zyx: np.ndarray, path, writer: str) -> None:
    """Write a (Z, Y, X) array so that SimpleITK reads it back as (Z, Y, X) (nibabel: its transpose)."""
    if writer in SITK_GRIDS:
        geometry = Geometry((0.5, 0.7, 0.8), (-12.0, 30.5, 7.25), SITK_GRIDS[writer], array_zyx.shape)
        write_volume(array_zyx, geometry, path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.T), NIBABEL_AFFINES[writer]), str(path))


def tube() -> np.ndarray:
    """A straight tube along x: 3x3 voxels across (z, y in 3..5), x in 2..27 (26 long) = 234 voxels."""
    volume = np.zeros((9, 10, 31), dtype=np.uint8)
    volume[3:6, 3:6, 2:28] = 1
    return volume


def tree() -> np.ndarray:
    """A one-voxel-thick tree: a trunk along z and two branches along y.

    trunk: (z, 10, 9) for z = 2..12 (11 voxels, (12, 10, 9) is the junction);
    left:  (12, y, 9) for y = 11..17 (7 voxels);  right: (12, y, 9) for y = 3..9 (7 voxels). 25 voxels.
    """
    volume = np.zeros((15, 21, 19), dtype=np.uint8)
    volume[2:13, 10, 9] = 1
    volume[12, 11:18, 9] = 1
    volume[12, 3:10, 9] = 1
    return volume


def line(start: int, stop: int) -> np.ndarray:
    """A one-voxel line along x at (z, y) = (4, 4), x in start..stop-1."""
    volume = np.zeros((16, 16, 16), dtype=np.uint8)
    volume[4, 4, start:stop] = 1
    return volume


def test_tube_skeleton_is_its_centre_line():
    # Lee thinning peels the 3x3 tube down to its centre line (z, y) = (4, 4), one voxel shorter at each
    # end: x = 3..26, 24 voxels. The values of the next test are worked out from this skeleton.
    expected = np.zeros_like(tube(), dtype=bool)
    expected[4, 4, 3:27] = True
    np.testing.assert_array_equal(airway_skeleton(tube()), expected)


def test_straight_tube_with_a_cut():
    gt = tube()
    pred = gt.copy()
    pred[:, :, 12:15] = 0  # cut: pieces x = 2..11 (10 long, 90 voxels) and x = 15..27 (13 long, 117 voxels)
    # L = the larger piece, 117 voxels, all inside the tube.
    # IoU = 117 / 234 = 0.5; precision = 117 / 117 = 1; leakages = 0 / 234 = 0.
    # S = centre line x = 3..26 (24 voxels); L holds x = 15..26 of it: DLR = 12 / 24 = 0.5.
    # One branch (the whole skeleton, no voxel has more than 3 skeleton voxels around it); 50 % of it
    # lies in L < 80 %: not detected, DBR = 0 / 1 = 0.
    assert parse_branches(gt)[1] == 1
    metrics = aiib_case_metrics(pred, gt)
    assert metrics == pytest.approx({"IoU": 0.5, "DLR": 0.5, "DBR": 0.0, "precision": 1.0, "leakages": 0.0})


def test_prediction_with_leakage():
    gt = tube()
    pred = gt.copy()
    pred[3:6, 6:9, 10:13] = 1  # a 3x3x3 block (27 voxels) outside the tube, touching its side: part of L
    # L = 234 + 27 = 261 voxels. IoU = 234 / 261; precision = 234 / 261; leakages = 27 / 234.
    # L covers the whole skeleton: DLR = 1, the one branch is detected: DBR = 1.
    metrics = aiib_case_metrics(pred, gt)
    assert metrics == pytest.approx({"IoU": 234 / 261, "DLR": 1.0, "DBR": 1.0, "precision": 234 / 261,
                                     "leakages": 27 / 234})


def test_tree_skeleton_and_branches():
    # Thinning keeps every voxel of a one-voxel-thick tree but the junction (12,10,9): (11,10,9) touches
    # both arm voxels (12,11,9) and (12,9,9) diagonally, so the junction is a simple point. S = 24 voxels.
    skeleton = airway_skeleton(tree())
    assert np.count_nonzero(skeleton) == 24 and not skeleton[12, 10, 9]
    # 3x3x3 counts: (11,10,9) has itself, (10,10,9) and both arm voxels = 4 > 3: deleted; every other
    # voxel has at most 3. Three pieces of >= 5 voxels remain: trunk z = 2..10 (9), left y = 11..17 (7),
    # right y = 3..9 (7): 3 branches.
    branch_map, num_branches = parse_branches(tree())
    assert num_branches == 3
    trunk, left, right = branch_map[5, 10, 9], branch_map[12, 15, 9], branch_map[12, 5, 9]
    assert sorted([trunk, left, right]) == [1, 2, 3]
    assert (branch_map[2:11, 10, 9] == trunk).all() and (branch_map[12, 11:18, 9] == left).all()
    assert (branch_map[12, 3:10, 9] == right).all()
    # The deleted voxel takes the branch of its nearest remaining skeleton voxel ((10,10,9), at 1 voxel);
    # the junction is at 1 voxel from both arms (either will do: it is not in S).
    assert branch_map[11, 10, 9] == trunk and branch_map[12, 10, 9] in (left, right)
    assert np.count_nonzero(branch_map) == 25  # every tree voxel belongs to a branch, nothing else does


def test_y_tree_with_one_branch_missing():
    gt = tree()
    pred = gt.copy()
    pred[12, 3:10, 9] = 0  # the right branch is missing: L = trunk + left = 11 + 7 = 18 voxels
    # IoU = 18 / 25; precision = 1; leakages = 0. S (24 voxels, the tree less its junction) in L:
    # trunk z = 2..11 (10) + left (7) = 17: DLR = 17 / 24.
    # Branches' parts of S: trunk 10 voxels, all in L: detected; left 7, all in L: detected;
    # right 7, none in L: not detected. DBR = 2 / 3.
    metrics = aiib_case_metrics(pred, gt)
    assert metrics == pytest.approx({"IoU": 18 / 25, "DLR": 17 / 24, "DBR": 2 / 3, "precision": 1.0,
                                     "leakages": 0.0})


@pytest.mark.parametrize("covered, detected", [(8, 1.0), (7, 0.0)])
def test_branch_detected_from_80_percent(covered, detected):
    # A 10-voxel line is one branch (its own skeleton, counts 2 or 3). Covering 8 voxels = 80 %: detected;
    # 7 = 70 %: not. IoU = DLR = covered / 10.
    metrics = aiib_case_metrics(line(2, 2 + covered), line(2, 12))
    assert metrics["DBR"] == detected
    assert metrics["IoU"] == pytest.approx(covered / 10) and metrics["DLR"] == pytest.approx(covered / 10)


def test_second_largest_component_when_the_largest_misses():
    gt = line(2, 12)  # 10 voxels
    pred = line(2, 10)  # 8 voxels on the airway ...
    pred[10:13, 10:13, 10:13] = 1  # ... and a 27-voxel blob far away: the largest component, IoU 0 < 0.1
    # L = the second largest (the 8 voxels on the line): IoU = 8 / 10, DLR = 8 / 10, precision = 1,
    # leakages = 0 (the blob is not part of L), DBR = 1 (80 % of the one branch).
    metrics = aiib_case_metrics(pred, gt)
    assert metrics == pytest.approx({"IoU": 0.8, "DLR": 0.8, "DBR": 1.0, "precision": 1.0, "leakages": 0.0})


def test_no_component_finds_the_airway():
    gt = line(2, 12)
    pred = np.zeros_like(gt)
    pred[10:13, 10:13, 10:13] = 1  # 27 voxels, IoU 0
    pred[12, 2, 2] = 1  # 1 voxel, IoU 0
    # Neither reaches IoU 0.1: IoU, DLR, DBR, precision = 0; leakages from the largest: 27 / 10.
    metrics = aiib_case_metrics(pred, gt)
    assert metrics == pytest.approx({"IoU": 0.0, "DLR": 0.0, "DBR": 0.0, "precision": 0.0, "leakages": 2.7})


def test_empty_prediction_scores_zero():
    assert aiib_case_metrics(np.zeros_like(tube()), tube()) == dict.fromkeys(AIIB_COLUMNS, 0.0)


def test_label_values_are_binarised_and_padding_changes_nothing():
    gt, pred = tree(), tree()
    pred[12, 3:10, 9] = 0
    padded_gt, padded_pred = np.pad(gt * 2, 7), np.pad(pred * 5, 7)  # any nonzero value is airway
    assert aiib_case_metrics(padded_pred, padded_gt) == aiib_case_metrics(pred, gt)


def test_ground_truth_without_branches_gives_nan_dbr():
    # A 3-voxel line: its skeleton has no piece of 5 voxels, so there is no branch to detect.
    metrics = aiib_case_metrics(line(2, 5), line(2, 5))
    assert math.isnan(metrics["DBR"]) and metrics["IoU"] == 1.0


def test_ground_truth_with_an_empty_skeleton_gives_nan_dlr():
    # Lee thinning removes every voxel of a 2x2x2 cube: no skeleton, so DLR = 0 / 0 and DBR = 0 / 0 (the
    # official code gives NaN for both, with a numpy warning); IoU and precision are 1.
    cube = np.zeros((6, 6, 6), dtype=np.uint8)
    cube[2:4, 2:4, 2:4] = 1
    assert not airway_skeleton(cube).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warning either
        metrics = aiib_case_metrics(cube, cube)
    assert math.isnan(metrics["DLR"]) and math.isnan(metrics["DBR"])
    assert (metrics["IoU"], metrics["precision"], metrics["leakages"]) == (1.0, 1.0, 0.0)


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="empty ground truth"):
        aiib_case_metrics(tube(), np.zeros_like(tube()))
    with pytest.raises(ValueError, match="shape"):
        aiib_case_metrics(tube()[:, :, :-1], tube())


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_nibabel_reads_the_simpleitk_array_transposed(tmp_path, writer, extension):
    # The equality the scoring path relies on: nibabel's get_fdata() (the official scorer's reader) is the
    # (Z, Y, X) array SimpleITK reads with its axes reversed, whoever wrote the file and in whichever
    # orientation (neither library reorders voxels). An array with no symmetry, odd sizes.
    array = np.random.default_rng(3).integers(0, 5, size=(5, 6, 7)).astype(np.uint8)
    path = tmp_path / f"case{extension}"
    write_zyx(array, path, writer)
    read_by_simpleitk, _ = read_label(path)
    read_by_nibabel = nib.load(str(path)).get_fdata()
    np.testing.assert_array_equal(read_by_simpleitk, array)
    np.testing.assert_array_equal(read_by_nibabel, array.T)
    np.testing.assert_array_equal(read_by_simpleitk.T, read_by_nibabel)


def thick_tree() -> np.ndarray:
    """A (Z, Y, X) = (24, 22, 20) airway with branches 3x3 voxels across (396 voxels): a trunk along z
    (z 2..15), two arms along y at its top (z 14..16, y 2..19), a branch along x from the end of one arm
    (y 2..4, x 8..17) and one along x from the lower trunk (z 5..7, x 10..17)."""
    volume = np.zeros((24, 22, 20), dtype=np.uint8)
    volume[2:16, 9:12, 8:11] = 1
    volume[14:17, 2:20, 8:11] = 1
    volume[14:17, 2:5, 8:18] = 1
    volume[5:8, 9:12, 10:18] = 1
    return volume


def thick_tree_prediction() -> np.ndarray:
    """The tree with the bottom of the trunk cut off (z 2..4, y 9..10, x 8..10: 18 voxels): 378 voxels."""
    prediction = thick_tree()
    prediction[2:5, 8:11, 8:11] = 0
    return prediction


def test_the_axis_order_changes_the_lee_skeleton():
    # Lee thinning of the same tree in the two axis orders: 40 skeleton voxels in (Z, Y, X) order, 41 in the
    # file's (X, Y, Z) order. If the two were equal, the next test could not tell the orders apart.
    gt = thick_tree()
    in_zyx, in_xyz = airway_skeleton(gt), airway_skeleton(gt.T).T
    assert np.count_nonzero(in_zyx) == 40 and np.count_nonzero(in_xyz) == 41
    assert np.count_nonzero(in_zyx != in_xyz) == 3


# The official AIIB2023 scorer (ayanglab/AIIB, "scoring metrics/task1.py" evaluation_branch_metrics, with the
# files read by nib.load(f).get_fdata(), skimage 0.26's Lee skeletonize standing in for skeletonize_3d) run on
# the files of the next test, every writer and extension: IoU 0.954545, DLR 0.95122, DBR 1.0, precision 1.0,
# leakages 0.0. Worked out: IoU = 378 / 396, precision = 1, leakages = 0 in both orders. In the file's order
# the skeleton has 41 voxels, 2 of them cut off: DLR = 39 / 41; its four branches keep 14/14, 9/9, 8/8 and
# 8/10 of their skeleton voxels: all reach 80 %, DBR = 4 / 4. In (Z, Y, X) order the skeleton has 40
# voxels, 3 of them cut off (DLR 37 / 40), and the trunk's branch keeps 7 of 10 (70 %): DBR 3 / 4.
OFFICIAL = {"IoU": 378 / 396, "DLR": 39 / 41, "DBR": 1.0, "precision": 1.0, "leakages": 0.0}
IN_ZYX_ORDER = {"IoU": 378 / 396, "DLR": 37 / 40, "DBR": 0.75, "precision": 1.0, "leakages": 0.0}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_scoring_files_gives_the_official_numbers(tmp_path, writer, extension):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_zyx(thick_tree(), gt_dir / f"AIIB23_1{extension}", writer)
    write_zyx(thick_tree_prediction(), pred_dir / f"AIIB23_1{extension}", writer)
    result = evaluate_folder(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics, AIIB_COLUMNS,
                             tmp_path / "out", "pred", num_processes=0)
    (row,) = result.rows
    assert {c: row[c] for c in AIIB_COLUMNS} == pytest.approx(OFFICIAL, abs=1e-12)
    # The same as the metric on the arrays in the order nibabel reads them ...
    file_order = {name: nib.load(str(d / f"AIIB23_1{extension}")).get_fdata() for name, d in
                  (("pred", pred_dir), ("gt", gt_dir))}
    assert aiib_case_metrics(file_order["pred"], file_order["gt"], order="xyz") == pytest.approx(OFFICIAL)
    # ... and not what the (Z, Y, X) arrays give when taken as they are (what the scoring computed before).
    assert aiib_case_metrics(thick_tree_prediction(), thick_tree(), order="xyz") == pytest.approx(IN_ZYX_ORDER)


def test_unknown_axis_order_is_an_error():
    with pytest.raises(ValueError, match="xyz"):
        aiib_case_metrics(tube(), tube(), order="yxz")


@pytest.fixture
def mixed_folders(tmp_path):
    """Ground truths and predictions of five cases, one of each kind the scoring meets:
    AIIB23_1 scorable (the prediction is the tube: IoU 1), AIIB23_2 an empty ground truth, AIIB23_3 no
    prediction, AIIB23_4 a prediction on another grid (origin moved), AIIB23_10 an unreadable prediction."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    grid = Geometry((0.5, 0.7, 0.8), (-12.0, 30.5, 7.25), SITK_GRIDS["sitk_lps"], tube().shape)
    moved = Geometry(grid.spacing, (0.0, 0.0, 0.0), grid.direction, grid.shape)
    for case in ("AIIB23_1", "AIIB23_3", "AIIB23_4", "AIIB23_10"):
        write_volume(tube(), grid, gt_dir / f"{case}.nii.gz")
    write_volume(np.zeros_like(tube()), grid, gt_dir / "AIIB23_2.nii.gz")
    write_volume(tube(), grid, pred_dir / "AIIB23_1.nii.gz")
    write_volume(tube(), grid, pred_dir / "AIIB23_2.nii.gz")
    write_volume(tube(), moved, pred_dir / "AIIB23_4.nii.gz")
    (pred_dir / "AIIB23_10.nii.gz").write_bytes(b"not a NIfTI file")
    return pred_dir, gt_dir


def score(folders, out, **kwargs):
    pred_dir, gt_dir = folders
    return evaluate_folder(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics, AIIB_COLUMNS, out,
                           "pred", **kwargs)


@pytest.mark.parametrize("num_processes", [0, 2])
def test_every_case_that_can_be_scored_is(tmp_path, mixed_folders, num_processes):
    result = score(mixed_folders, tmp_path / "out", num_processes=num_processes)
    assert [row["case"] for row in result.rows] == ["AIIB23_1"] and result.rows[0]["IoU"] == 1.0
    assert list(result.unscored) == ["AIIB23_2", "AIIB23_3", "AIIB23_4", "AIIB23_10"]  # natural order
    assert result.unscored["AIIB23_2"].startswith("empty ground truth")
    assert result.unscored["AIIB23_3"] == "no prediction"
    assert "grid" in result.unscored["AIIB23_4"] and "origin" in result.unscored["AIIB23_4"]
    assert "AIIB23_10.nii.gz" in result.unscored["AIIB23_10"] and "unreadable" in result.unscored["AIIB23_10"]
    summary = json.loads(result.summary_path.read_text())
    assert summary["unscored"] == result.unscored and summary["scored_as_empty"] == []
    assert summary["IoU"] == {"mean": 1.0, "std": 0.0, "median": 1.0}
    assert result.csv_path.read_text().splitlines()[1:] == ["AIIB23_1,1.0,1.0,1.0,1.0,0.0"]


def test_missing_predictions_scored_as_empty(tmp_path, mixed_folders):
    result = score(mixed_folders, tmp_path / "out", missing_predictions="empty")
    assert [row["case"] for row in result.rows] == ["AIIB23_1", "AIIB23_3"] and result.rows[1]["IoU"] == 0.0
    assert result.scored_as_empty == ["AIIB23_3"] and list(result.unscored) == ["AIIB23_2", "AIIB23_4", "AIIB23_10"]


def test_strict_makes_any_unscorable_case_an_error(tmp_path, mixed_folders):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="3 case") as error:
        score(mixed_folders, out, strict=True)
    message = str(error.value)
    assert all(case in message for case in ("AIIB23_2:", "AIIB23_4:", "AIIB23_10:"))
    assert "AIIB23_3" not in message  # no prediction: missing_predictions decides ("skip" lists it)
    assert not out.exists()  # nothing written
    with pytest.raises(ValueError, match="without prediction: AIIB23_3"):
        score(mixed_folders, out, missing_predictions="error")


def test_nothing_scorable_is_an_error_with_every_reason(tmp_path, mixed_folders):
    pred_dir, _ = mixed_folders
    (pred_dir / "AIIB23_1.nii.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no case could be scored") as error:
        score(mixed_folders, out)
    assert all(f"{case}:" in str(error.value) for case in ("AIIB23_1", "AIIB23_2", "AIIB23_3", "AIIB23_4", "AIIB23_10"))
    assert not out.exists()
