"""BraTS2023 metrics on hand-built label maps whose values are worked out in the comments."""
import nibabel as nib
import numpy as np
import pytest

from light_training.evaluation.metrics_brats import (BRATS_COLUMNS, brats_case_metrics, brats_columns,
                                                     lesion_wise_scores, region_mask)
from light_training.io import read_volume

ISO = (1.0, 1.0, 1.0)


def empty() -> np.ndarray:
    return np.zeros((17, 40, 21), dtype=np.uint8)


def cube(volume: np.ndarray, corner, size, value=1) -> np.ndarray:
    z, y, x = corner
    volume[z:z + size, y:y + size, x:x + size] = value
    return volume


def test_regions():
    label = np.arange(6, dtype=np.uint8).reshape(1, 1, 6)  # values 0..5; 4 and 5 are background
    assert region_mask(label, "WT").ravel().tolist() == [0, 1, 1, 1, 0, 0]
    assert region_mask(label, "TC").ravel().tolist() == [0, 1, 0, 1, 0, 0]
    assert region_mask(label, "ET").ravel().tolist() == [0, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="WT"):
        region_mask(label, "NCR")


def test_two_lesions_one_missed_and_empty_et():
    gt = cube(cube(empty(), (3, 3, 3), 5), (3, 25, 3), 4)  # NCR lesions A (125 voxels) and B (64), 17 apart
    pred = cube(empty(), (3, 3, 3), 5)  # finds A only
    row = brats_case_metrics(pred, gt, ISO)
    assert list(row) == list(BRATS_COLUMNS)
    for region in ("WT", "TC"):  # label 1 is in both
        # Dice = 2 * 125 / (125 + 189). Lesion A: matched, Dice 1, HD95 0; lesion B: missed, Dice 0, HD95
        # 374. Lesion-wise Dice = (1 + 0) / 2, HD95 = (0 + 374) / 2; TP 1, FN 1, FP 0.
        assert row[f"{region}_Dice"] == pytest.approx(250 / 314)
        assert row[f"{region}_LesionWise_Dice"] == pytest.approx(0.5)
        assert row[f"{region}_LesionWise_HD95"] == pytest.approx(187.0)
        assert (row[f"{region}_Num_TP"], row[f"{region}_Num_FP"], row[f"{region}_Num_FN"]) == (1, 0, 1)
        assert row[f"{region}_HD95"] > 15  # B's surface, 17+ mm from A's, is ~40 % of the ground truth's
    # ET empty on both sides: Dice 1, HD95 0, lesion-wise 1 and 0 (no lesion, no false positive).
    assert [row[f"ET_{name}"] for name in ("Dice", "HD95", "LesionWise_Dice", "LesionWise_HD95", "Num_TP",
                                           "Num_FP", "Num_FN")] == [1.0, 0.0, 1.0, 0.0, 0, 0, 0]


def test_false_positive_component():
    gt = cube(empty(), (3, 3, 3), 5, value=3)  # one ET lesion, 125 voxels
    pred = cube(cube(empty(), (3, 3, 3), 5, value=3), (10, 30, 14), 3, value=3)  # + 27 voxels far away
    row = brats_case_metrics(pred, gt, ISO)
    for region in ("WT", "TC", "ET"):
        # Dice = 2 * 125 / (125 + 152). The lesion is matched to its own component only (Dice 1, HD95 0);
        # the far cube is a false positive: lesion-wise Dice = 1 / (1 + 1), HD95 = (0 + 374) / (1 + 1).
        assert row[f"{region}_Dice"] == pytest.approx(250 / 277)
        assert row[f"{region}_LesionWise_Dice"] == pytest.approx(0.5)
        assert row[f"{region}_LesionWise_HD95"] == pytest.approx(187.0)
        assert (row[f"{region}_Num_TP"], row[f"{region}_Num_FP"], row[f"{region}_Num_FN"]) == (1, 1, 0)


@pytest.mark.parametrize("gap, matched", [(2, True), (3, False)])
def test_predicted_component_matched_within_three_dilations(gap, matched):
    # Lesion: the cube x = 3..7. A 2x2x2 predicted cube (8 voxels) starting `gap` voxels after it
    # (x = 8 + gap): three 18-neighbourhood dilations reach x = 10, so a gap of 2 (x = 10) touches and
    # the cube joins the lesion's union (Dice 2 * 125 / (125 + 125 + 8)); a gap of 3 is a false positive.
    gt = cube(np.zeros((13, 13, 20), bool), (3, 3, 3), 5)
    pred = cube(cube(np.zeros_like(gt), (3, 3, 3), 5), (4, 4, 8 + gap), 2)
    scores = lesion_wise_scores(pred, gt, ISO)
    if matched:
        assert scores["LesionWise_Dice"] == pytest.approx(250 / 258) and scores["Num_FP"] == 0
    else:
        assert scores["LesionWise_Dice"] == pytest.approx(0.5) and scores["Num_FP"] == 1
    assert scores["Num_TP"] == 1


def test_nearby_ground_truth_components_form_one_lesion():
    # Two 4-voxel cubes (64 voxels each) 5 voxels apart: dilated 3 times each, they join -> one lesion
    # of 128 voxels. The prediction finds one cube: Dice 2 * 64 / (64 + 128) = 2/3, one TP, no FN.
    gt = cube(cube(np.zeros((12, 12, 25), bool), (4, 4, 3), 4), (4, 4, 12), 4)
    pred = cube(np.zeros_like(gt), (4, 4, 3), 4)
    scores = lesion_wise_scores(pred, gt, ISO)
    assert scores["LesionWise_Dice"] == pytest.approx(2 / 3)
    assert (scores["Num_TP"], scores["Num_FP"], scores["Num_FN"]) == (1, 0, 0)


def test_small_lesion_rule_with_anisotropic_spacing():
    gt = np.zeros((10, 12, 14), bool)
    gt[3:5, 3:7, 3:8] = True  # 2 x 4 x 5 = 40 voxels, missed by an empty prediction
    nothing = np.zeros_like(gt)
    # 1 x 1 x 1 mm: 40 mm^3 <= 50, left out: no lesion, no false positive -> lesion-wise Dice 1, HD95 0.
    assert lesion_wise_scores(nothing, gt, (1.0, 1.0, 1.0)) == {
        "LesionWise_Dice": 1.0, "LesionWise_HD95": 0.0, "Num_TP": 0, "Num_FP": 0, "Num_FN": 0}
    # 2 x 1 x 1 mm: 80 mm^3 > 50, kept and missed -> lesion-wise Dice 0, HD95 374, one FN.
    assert lesion_wise_scores(nothing, gt, (2.0, 1.0, 1.0)) == {
        "LesionWise_Dice": 0.0, "LesionWise_HD95": 374.0, "Num_TP": 0, "Num_FP": 0, "Num_FN": 1}
    # A component matched to a left-out lesion is no false positive either.
    assert lesion_wise_scores(gt, gt, (1.0, 1.0, 1.0))["Num_FP"] == 0


def test_one_side_empty_case():
    gt = cube(empty(), (3, 3, 3), 5, value=2)  # edema only: WT; TC and ET empty on both sides
    row = brats_case_metrics(np.zeros_like(gt), gt, ISO)
    assert (row["WT_Dice"], row["WT_HD95"], row["WT_LesionWise_Dice"], row["WT_LesionWise_HD95"]) == (
        0.0, 374.0, 0.0, 374.0)
    assert (row["TC_Dice"], row["TC_HD95"]) == (1.0, 0.0)
    row = brats_case_metrics(gt, np.zeros_like(gt), ISO)  # only the prediction has a tumour: one FP
    assert (row["WT_Dice"], row["WT_HD95"], row["WT_LesionWise_Dice"], row["WT_LesionWise_HD95"]) == (
        0.0, 374.0, 0.0, 374.0)
    assert row["WT_Num_FP"] == 1


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        brats_case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), ISO)
    with pytest.raises(ValueError, match="spacing"):
        brats_case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1.0, 0.0, 1.0))


def test_regions_from_a_mapping():
    # The default mapping is today's regions and columns; another mapping (here as a dataset description would
    # hold it, with a space in a name) gives its own columns, region by region, and the same values for the
    # same label sets.
    assert brats_columns() == BRATS_COLUMNS and BRATS_COLUMNS[:2] == ("WT_Dice", "WT_HD95")
    gt = cube(cube(empty(), (3, 3, 3), 6, value=2), (4, 4, 4), 3, value=3)  # ED cube with an ET core
    pred = cube(empty(), (3, 3, 4), 6, value=2)  # the ED cube shifted by 1 voxel along x, no ET
    default = brats_case_metrics(pred, gt, ISO)
    regions = {"whole tumour": [1, 2, 3], "ET": [3]}
    row = brats_case_metrics(pred, gt, ISO, regions=regions)
    assert list(row) == list(brats_columns(regions)) == [f"{r}_{m}" for r in ("whole_tumour", "ET") for m in (
        "Dice", "HD95", "LesionWise_Dice", "LesionWise_HD95", "Num_TP", "Num_FP", "Num_FN")]
    for name in ("Dice", "HD95", "LesionWise_Dice", "Num_FN"):
        assert row[f"whole_tumour_{name}"] == default[f"WT_{name}"] and row[f"ET_{name}"] == default[f"ET_{name}"]
    # WT: 216 voxels each, overlapping in 6 x 6 x 5 = 180: Dice 2 * 180 / 432. ET: missed, Dice 0.
    assert row["whole_tumour_Dice"] == pytest.approx(360 / 432) and row["ET_Dice"] == 0.0


def _ball(shape, center, radius):
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius ** 2


def test_files_written_by_nibabel_score_as_the_official_brats_2023_code(tmp_path):
    """The expected numbers come from the official lesion-wise code (github.com/rachitsaluja/BraTS-2023-Metrics,
    metrics.py, get_LesionWiseResults(pred, gt, "BraTS-GLI")) run on these two files with its pinned numpy 1.24 /
    pandas 1.5 and surface-distance 0.1 (masks passed as bool: its checks refuse the 0/1 ints the BraTS code
    passes). The case has what the lesion-wise rules are about: lesions merged by dilation, a lesion under
    50 mm^3, a false positive, a missed lesion, anisotropic voxels (1 x 1.2 x 2 mm) in nibabel's axis order."""
    shape = (60, 50, 30)  # nibabel's (x, y, z)
    gt = np.zeros(shape, np.uint8)
    gt[_ball(shape, (20, 25, 15), 10)] = 2
    gt[_ball(shape, (20, 25, 15), 6)] = 3
    gt[_ball(shape, (20, 25, 15), 3)] = 1
    gt[_ball(shape, (45, 12, 8), 1.5)] = 3  # under 50 mm^3: left out of the lesion-wise scores
    gt[_ball(shape, (46, 38, 20), 3)] = 2  # two edema blobs merged by the dilation
    gt[_ball(shape, (46, 38, 27), 2)] = 2
    pred = np.zeros(shape, np.uint8)
    pred[_ball(shape, (21, 25, 15), 10)] = 2
    pred[_ball(shape, (21, 26, 15), 5)] = 3
    pred[_ball(shape, (21, 26, 15), 3)] = 1
    pred[_ball(shape, (46, 38, 20), 3)] = 2
    pred[_ball(shape, (8, 42, 24), 2)] = 3  # a false positive
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = (-30.0, 12.5, 7.0)
    nib.save(nib.Nifti1Image(pred, affine), str(tmp_path / "pred.nii.gz"))
    nib.save(nib.Nifti1Image(gt, affine), str(tmp_path / "gt.nii.gz"))
    (p, _), (g, geometry) = read_volume(tmp_path / "pred.nii.gz"), read_volume(tmp_path / "gt.nii.gz")
    ours = brats_case_metrics(p, g, geometry.spacing)
    official = {  # Legacy_Dice, Legacy_HD95, LesionWise_Score_Dice, LesionWise_Score_HD95, Num_TP, Num_FP, Num_FN
        "WT": (0.917061, 4.123106, 0.601894, 128.333333, 2, 1, 0),
        "TC": (0.679625, 24.583735, 0.352083, 188.268858, 1, 1, 0),
        "ET": (0.547352, 23.711601, 0.285595, 188.2, 1, 1, 0),
    }
    for region, values in official.items():
        names = ("Dice", "HD95", "LesionWise_Dice", "LesionWise_HD95", "Num_TP", "Num_FP", "Num_FN")
        got = tuple(ours[f"{region}_{name}"] for name in names)
        np.testing.assert_allclose(got, values, rtol=2e-6, atol=1e-6, err_msg=region)
