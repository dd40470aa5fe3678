"""BraTS2023 metrics: Dice, HD95 and the BraTS 2023 lesion-wise Dice and HD95 per tumour region.

Regions of a label map (0 background, 1 NCR, 2 ED, 3 ET; any other value is background):
WT = {1, 2, 3}, TC = {1, 3}, ET = {3} by default; any ordered mapping ``{name: [label values]}`` can take
their place (``regions=``, e.g. from a dataset description). All distances and volumes are in mm from the
voxel spacing.

- Dice and HD95 as :mod:`light_training.evaluation.primitives` computes them (the official scorer's
  area-weighted surface distances): Dice 1 when both masks are empty; HD95 0 when both are empty, 374
  when exactly one is.
- Lesion-wise (BraTS 2023, glioma settings: 3 dilations, lesions above 50 mm^3): ground-truth voxels in
  one 26-connected component of the ground truth dilated 3 times (18-neighbourhood) form one lesion.
  A lesion is matched to every 26-connected predicted component touching the lesion dilated 3 more
  times and scored (Dice, HD95) against their union; an unmatched lesion scores Dice 0, HD95 374.
  Predicted components matched to no lesion are false positives. Lesions of at most 50 mm^3 are left
  out of the score and of the counts (the components they match are not false positives).
  Lesion-wise Dice = sum of lesion Dice / (kept lesions + FP); lesion-wise HD95 = (sum of lesion HD95
  + 374 FP) / (kept lesions + FP); 1 and 0 when that denominator is 0. Num_TP: kept lesions matched,
  Num_FN: kept lesions unmatched, Num_FP: false positives.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from light_training.evaluation.primitives import MAX_HD95, check_case, dice, hd95, normalize_regions

__all__ = ["REGIONS", "BRATS_COLUMNS", "brats_columns", "brats_case_metrics", "region_mask", "lesion_wise_scores"]

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
LESION_COLUMNS = ("LesionWise_Dice", "LesionWise_HD95", "Num_TP", "Num_FP", "Num_FN")
DILATION_ITERATIONS = 3  # BraTS-GLI: dilations that merge nearby lesions, and again to find their matches
MIN_LESION_VOLUME = 50.0  # mm^3; lesions of at most this volume are left out of the lesion-wise scores

_EIGHTEEN = ndimage.generate_binary_structure(3, 2)  # the dilation's structuring element
_TWENTY_SIX = ndimage.generate_binary_structure(3, 3)  # connectivity of lesions and predicted components


def brats_columns(regions: Mapping[str, Sequence[int]] = REGIONS) -> tuple[str, ...]:
    """The columns of :func:`brats_case_metrics` for ``regions``: ``<region>_Dice``, ``<region>_HD95`` and
    the lesion-wise ones, region by region."""
    return tuple(f"{region}_{name}" for region in normalize_regions(regions)
                 for name in ("Dice", "HD95") + LESION_COLUMNS)


BRATS_COLUMNS = brats_columns(REGIONS)


def region_mask(label: np.ndarray, region: str, regions: Mapping[str, Sequence[int]] = REGIONS) -> np.ndarray:
    """Bool ``(Z, Y, X)`` mask of ``region`` (a name of ``regions``: "WT", "TC" or "ET" by default) in a
    ``(Z, Y, X)`` label map."""
    if region not in regions:
        raise ValueError(f"unknown region {region!r}; expected one of {list(regions)}")
    return np.isin(label, regions[region])


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def lesion_wise_scores(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float]
                       ) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (rules in the module docstring).

    Args:
        prediction, ground_truth: bool ``(Z, Y, X)`` masks of one region.
        spacing: voxel spacing (z, y, x) in mm.

    Returns:
        ``{"LesionWise_Dice", "LesionWise_HD95", "Num_TP", "Num_FP", "Num_FN"}`` (counts as ints).
    """
    voxel_volume = float(np.prod(spacing))
    pred_components, num_pred = ndimage.label(prediction, structure=_TWENTY_SIX)
    merged, num_lesions = ndimage.label(
        ndimage.binary_dilation(ground_truth, _EIGHTEEN, iterations=DILATION_ITERATIONS), structure=_TWENTY_SIX)
    lesions = merged * ground_truth  # each ground-truth voxel numbered by its dilated component
    lesion_boxes, pred_boxes = ndimage.find_objects(lesions, num_lesions), ndimage.find_objects(pred_components)
    matched: set[int] = set()
    lesion_dice, lesion_hd95, num_tp, num_fn = [], [], 0, 0
    for index, box in enumerate(lesion_boxes, start=1):
        if box is None:
            continue
        around = _grow(box, DILATION_ITERATIONS, ground_truth.shape)
        lesion = lesions[around] == index
        reach = ndimage.binary_dilation(lesion, _EIGHTEEN, iterations=DILATION_ITERATIONS)
        hits = np.unique(pred_components[around][reach])
        hits = [int(h) for h in hits if h]
        matched.update(hits)
        if np.count_nonzero(lesion) * voxel_volume <= MIN_LESION_VOLUME:
            continue  # too small to score or count
        if not hits:
            num_fn += 1
            lesion_dice.append(0.0)
            lesion_hd95.append(MAX_HD95)
            continue
        num_tp += 1
        window = _union([box] + [pred_boxes[h - 1] for h in hits])
        gt_part = lesions[window] == index
        pred_part = np.isin(pred_components[window], hits)
        lesion_dice.append(dice(pred_part, gt_part))
        lesion_hd95.append(hd95(pred_part, gt_part, spacing))
    num_fp = num_pred - len(matched)
    denominator = len(lesion_dice) + num_fp
    return {
        "LesionWise_Dice": float(sum(lesion_dice) / denominator) if denominator else 1.0,
        "LesionWise_HD95": float((sum(lesion_hd95) + MAX_HD95 * num_fp) / denominator) if denominator else 0.0,
        "Num_TP": num_tp, "Num_FP": num_fp, "Num_FN": num_fn,
    }


def brats_case_metrics(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float],
                       regions: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Every BraTS2023 metric of one case.

    Args:
        prediction, ground_truth: ``(Z, Y, X)`` label maps (0 background, 1 NCR, 2 ED, 3 ET), same shape.
        spacing: voxel spacing (z, y, x) in mm.
        regions: ``{name: [label values]}``, in column order; None: :data:`REGIONS` (WT, TC, ET).

    Returns:
        ``{column: value}`` for every column of :func:`brats_columns` of ``regions`` (by default
        :data:`BRATS_COLUMNS`: ``WT_Dice``, ..., ``ET_Num_FN``).
    """
    regions = normalize_regions(REGIONS if regions is None else regions)
    prediction, ground_truth = np.asarray(prediction), np.asarray(ground_truth)
    check_case(prediction, ground_truth, spacing)
    labels = sorted({value for values in regions.values() for value in values})
    foreground = np.isin(prediction, labels) | np.isin(ground_truth, labels)
    if foreground.any():  # work in the bounding box plus the dilation reach: same results, much faster
        box = _grow(ndimage.find_objects(foreground.astype(np.uint8))[0], DILATION_ITERATIONS, foreground.shape)
        prediction, ground_truth = prediction[box], ground_truth[box]
    row: dict[str, float] = {}
    for region in regions:
        pred, gt = region_mask(prediction, region, regions), region_mask(ground_truth, region, regions)
        row[f"{region}_Dice"] = dice(pred, gt)
        row[f"{region}_HD95"] = hd95(pred, gt, spacing)
        for name, value in lesion_wise_scores(pred, gt, spacing).items():
            row[f"{region}_{name}"] = value
    return row
