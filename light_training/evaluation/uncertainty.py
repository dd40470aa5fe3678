"""Uncertainty quality: how well a voxel-wise uncertainty map flags the voxels a segmentation gets wrong.

Per case, from the prediction, the ground truth and the uncertainty map (all ``(Z, Y, X)``, one grid):

- wrong voxels: ``prediction != ground_truth`` (label values; for a binary airway mask, where the foreground
  disagrees);
- the band: the voxels within ``band_voxels`` voxels (Euclidean, in voxels) of the predicted or the true
  foreground (nonzero). Far background is left out: it is right and, for any sensible map, certain, so it
  would make the AUROC trivially high;
- ``unc_AUROC``: the area under the ROC curve of the uncertainty as a detector of the band's wrong voxels,
  i.e. the probability that a random wrong voxel is more uncertain than a random right one, ties counting
  half: the Mann-Whitney U statistic over average ranks, U / (n_wrong n_right). NaN when the band holds only
  right or only wrong voxels (or nothing);
- ``unc_Dice_discard<p>`` (``p`` = 100 ``discard_fraction``, ``unc_Dice_discard5`` by default): the foreground
  Dice after the floor(``discard_fraction`` x band size) most uncertain band voxels are taken out of both
  prediction and ground truth (equal uncertainties: the first in array order go first). A map that ranks the
  wrong voxels first raises it above the plain Dice;
- ``Dice``: the plain foreground Dice (nonzero labels), 1 when both are empty.

In a folder, ``<case>_uncertainty.nii.gz`` lies beside ``<case>.nii.gz`` (what the prediction scripts write);
:func:`evaluate_folder_with_uncertainty` adds these columns to the rows of
:func:`light_training.evaluation.scoring.evaluate_folder` when any prediction has one (a case without a map gets
NaN for the ``unc_`` columns and its plain Dice).
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from light_training.evaluation.primitives import dice
from light_training.evaluation.scoring import (UNCERTAINTY_SUFFIX, CaseMetric, CasePair, Evaluation,
                                               evaluate_folder)
from light_training.io import Geometry, ImageReadError, read_volume

__all__ = ["UNCERTAINTY_COLUMNS", "uncertainty_columns", "auroc", "uncertainty_band", "uncertainty_scores",
           "uncertainty_path", "uncertainty_extra", "evaluate_folder_with_uncertainty"]


def uncertainty_columns(discard_fraction: float = 0.05) -> tuple[str, str, str]:
    """``("unc_AUROC", "unc_Dice_discard<100 discard_fraction>", "Dice")``: ``unc_Dice_discard5`` for 0.05."""
    return "unc_AUROC", f"unc_Dice_discard{100 * discard_fraction:g}", "Dice"


UNCERTAINTY_COLUMNS = uncertainty_columns()  # with the default discard_fraction 0.05


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (1-D) as a detector of ``positives`` (1-D bool, same length).

    The Mann-Whitney U statistic over average ranks (ties count half): (R+ - n+ (n+ + 1) / 2) / (n+ n-), with
    R+ the sum of the positives' ranks. NaN when there are no positives or no negatives.
    """
    positives = np.asarray(positives, dtype=bool)
    num_pos = int(np.count_nonzero(positives))
    num_neg = positives.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64), method="average")
    u_statistic = ranks[positives].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u_statistic / (num_pos * num_neg))


def uncertainty_band(prediction: np.ndarray, ground_truth: np.ndarray, band_voxels: int) -> np.ndarray:
    """Bool ``(Z, Y, X)``: the voxels at a Euclidean distance of at most ``band_voxels`` voxels from the
    predicted or true foreground (nonzero), the foreground included. All False when both are empty."""
    foreground = (np.asarray(prediction) > 0) | (np.asarray(ground_truth) > 0)
    band = np.zeros(foreground.shape, dtype=bool)
    if not foreground.any():
        return band
    # The distances only need the foreground's bounding box grown by the band: nothing farther is in it.
    box = tuple(slice(max(s.start - band_voxels, 0), min(s.stop + band_voxels, n))
                for s, n in zip(ndimage.find_objects(foreground.astype(np.uint8))[0], foreground.shape))
    band[box] = ndimage.distance_transform_edt(~foreground[box]) <= band_voxels
    return band


def _check_options(band_voxels: int, discard_fraction: float) -> None:
    if isinstance(band_voxels, bool) or int(band_voxels) != band_voxels or band_voxels < 0:
        raise ValueError(f"band_voxels={band_voxels!r}; expected a whole number >= 0")
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"discard_fraction={discard_fraction!r}; expected a number in [0, 1)")


def uncertainty_scores(prediction: np.ndarray, ground_truth: np.ndarray, uncertainty: np.ndarray,
                       band_voxels: int = 3, discard_fraction: float = 0.05) -> dict[str, float]:
    """AUROC of the uncertainty for the wrong voxels of the band, and the foreground Dice before and after
    discarding its most uncertain voxels (definitions in the module docstring).

    Args:
        prediction, ground_truth: ``(Z, Y, X)`` label maps, same shape.
        uncertainty: ``(Z, Y, X)`` float map, same shape, finite (higher = less certain).
        band_voxels: the band's reach around the predicted or true foreground, in voxels (>= 0).
        discard_fraction: the share of the band's voxels discarded, in [0, 1).

    Returns:
        ``{"unc_AUROC", "unc_Dice_discard<p>", "Dice"}`` (:func:`uncertainty_columns`) as floats.
    """
    prediction, ground_truth, uncertainty = np.asarray(prediction), np.asarray(ground_truth), np.asarray(uncertainty)
    if not prediction.shape == ground_truth.shape == uncertainty.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, ground truth {ground_truth.shape}, "
                         f"uncertainty {uncertainty.shape}")
    _check_options(band_voxels, discard_fraction)
    auroc_column, discard_column, dice_column = uncertainty_columns(discard_fraction)
    band = uncertainty_band(prediction, ground_truth, int(band_voxels))
    pred, gt, scores = prediction[band] > 0, ground_truth[band] > 0, uncertainty[band].astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("the uncertainty map holds NaN or infinite values near the foreground")
    wrong = prediction[band] != ground_truth[band]
    discard = math.floor(discard_fraction * scores.size + 1e-9)
    kept = np.ones(scores.size, dtype=bool)
    kept[np.argsort(-scores, kind="stable")[:discard]] = False
    return {auroc_column: auroc(scores, wrong), discard_column: dice(pred & kept, gt & kept),
            dice_column: dice(pred, gt)}


def uncertainty_path(prediction: str | Path) -> Path:
    """``<case>_uncertainty.nii.gz`` beside the prediction ``<case>.nii.gz`` (or ``<case>_uncertainty.nii``
    where only that exists)."""
    prediction = Path(prediction)
    case = prediction.name.removesuffix(".gz").removesuffix(".nii")
    gz = prediction.with_name(f"{case}{UNCERTAINTY_SUFFIX}.nii.gz")
    plain = gz.with_name(gz.name.removesuffix(".gz"))
    return plain if plain.is_file() and not gz.is_file() else gz


def uncertainty_extra(pair: CasePair, prediction: np.ndarray, ground_truth: np.ndarray, geometry: Geometry,
                      band_voxels: int = 3, discard_fraction: float = 0.05) -> dict[str, float]:
    """The extra per-case function of :func:`~light_training.evaluation.scoring.evaluate_folder` that reads
    the case's uncertainty map beside its prediction and scores it (:func:`uncertainty_scores`).

    A case without a map (or scored as an empty prediction) gets NaN for the ``unc_`` columns and its plain
    Dice. A map that cannot be read or lies on another grid than the ground truth raises ``ValueError``
    naming it (the case is then listed as unscored).
    """
    auroc_column, discard_column, dice_column = uncertainty_columns(discard_fraction)
    path = None if pair.prediction is None else uncertainty_path(pair.prediction)
    if path is None or not path.is_file():
        return {auroc_column: float("nan"), discard_column: float("nan"),
                dice_column: dice(np.asarray(prediction) > 0, np.asarray(ground_truth) > 0)}
    uncertainty, map_geometry = read_volume(path)
    if (why := geometry.mismatch(map_geometry)) is not None:
        raise ImageReadError(f"{path}: the uncertainty map does not lie on the ground truth's grid ({why})")
    try:
        return uncertainty_scores(prediction, ground_truth, uncertainty, band_voxels, discard_fraction)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def evaluate_folder_with_uncertainty(predictions: Mapping[str, Path], ground_truths: Mapping[str, Path],
                                     case_metric: CaseMetric, columns: Sequence[str], output_dir: str | Path,
                                     name: str, band_voxels: int = 3, discard_fraction: float = 0.05,
                                     **kwargs: Any) -> Evaluation:
    """:func:`~light_training.evaluation.scoring.evaluate_folder`, plus the columns of
    :func:`uncertainty_columns` after ``columns`` when at least one prediction has an uncertainty map beside
    it (none: exactly ``evaluate_folder``). ``kwargs`` go to ``evaluate_folder`` (``missing_predictions``,
    ``num_processes``, ``strict``)."""
    _check_options(band_voxels, discard_fraction)
    if not any(uncertainty_path(path).is_file() for path in predictions.values()):
        return evaluate_folder(predictions, ground_truths, case_metric, columns, output_dir, name, **kwargs)
    extra = partial(uncertainty_extra, band_voxels=band_voxels, discard_fraction=discard_fraction)
    return evaluate_folder(predictions, ground_truths, case_metric, columns, output_dir, name, extra_metric=extra,
                           extra_columns=uncertainty_columns(discard_fraction), **kwargs)
