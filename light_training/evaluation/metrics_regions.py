"""Dice and HD95 per region of a label map, for a dataset of the user's own: the regions are data.

A region is a name and the label values it unites, in an ordered mapping ``{name: [label values]}``: a plain
label is ``[v]``, a union such as a whole tumour ``[1, 2, 3]``. Spaces in names become ``_``; the columns are
``<name>_Dice`` and ``<name>_HD95``, region by region. The conventions are BraTS's, computed by the same code
(:mod:`light_training.evaluation.primitives`):

- Dice: 2 |P n G| / (|P| + |G|); 1 when both masks are empty.
- HD95 (mm, from the voxel spacing): the larger of the two area-weighted 95th percentiles of the distances
  from one surface to the other (MONAI's port of DeepMind's ``surface-distance``); 0 when both masks are
  empty, 374 (BraTS's value) when exactly one is.

For worker processes, bind the regions with :func:`functools.partial`, which pickles::

    metric = partial(region_case_metrics, regions={"liver": [1], "tumour": [2], "organ": [1, 2]})
    evaluate_folder(predictions, ground_truths, metric, region_columns(regions), output_dir, name)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from light_training.evaluation.primitives import check_case, dice, hd95, normalize_regions

__all__ = ["region_columns", "region_case_metrics"]


def region_columns(regions: Mapping[str, Sequence[int]]) -> tuple[str, ...]:
    """``(<name>_Dice, <name>_HD95, ...)`` region by region, spaces in names replaced by ``_``."""
    return tuple(f"{name}_{metric}" for name in normalize_regions(regions) for metric in ("Dice", "HD95"))


def region_case_metrics(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float],
                        regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Dice and HD95 of every region of one case (conventions in the module docstring).

    Args:
        prediction, ground_truth: ``(Z, Y, X)`` label maps, same shape.
        spacing: voxel spacing (z, y, x) in mm.
        regions: ``{name: [label values]}``, in column order.

    Returns:
        ``{column: value}`` for every column of :func:`region_columns` of ``regions``.
    """
    regions = normalize_regions(regions)
    prediction, ground_truth = np.asarray(prediction), np.asarray(ground_truth)
    check_case(prediction, ground_truth, spacing)
    row: dict[str, float] = {}
    for name, values in regions.items():
        pred, gt = np.isin(prediction, values), np.isin(ground_truth, values)
        row[f"{name}_Dice"] = dice(pred, gt)
        row[f"{name}_HD95"] = hd95(pred, gt, spacing)
    return row
