"""Metric primitives that every metric set shares: Dice, HD95 and the checks of a case and of its regions.

- Dice: 2 |P n G| / (|P| + |G|); 1 when both masks are empty.
- HD95: surface elements and their areas as the BraTS scorer computes them (DeepMind's ``surface-distance``,
  which the BraTS 2023 scorer calls; here MONAI's port of it, ``get_mask_edges`` with ``spacing``); in each
  direction the area-weighted 95th percentile of the distances from one surface to the other
  (``get_surface_distance``), and the larger of the two. 0 when both masks are empty, 374 when exactly one is.
- Regions: an ordered mapping ``{name: [label values]}`` (:func:`normalize_regions`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from monai.metrics.utils import get_mask_edges, get_surface_distance

__all__ = ["MAX_HD95", "normalize_regions", "check_case", "dice", "hd95", "surface_distances",
           "weighted_percentile"]

MAX_HD95 = 374.0  # mm, the scorer's HD95 when one side is empty (the diagonal of the 240x240x155 mm volume)
PERCENT = 95.0


def normalize_regions(regions: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Check an ordered mapping ``{name: [label values]}`` and return it with spaces in the names replaced
    by ``_`` (the names become column prefixes) and the values as tuples of ints, in the same order. A plain
    label is ``[v]`` (``v`` alone is taken too).

    Raises ``ValueError`` naming the region: no region, an empty name, no label value, a value that is not an
    integer in 1..255 (0 is background), two names that are the same once spaces are replaced.
    """
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"regions must be a non-empty mapping {{name: [label values]}}, got {regions!r}")
    normalized: dict[str, tuple[int, ...]] = {}
    for name, values in regions.items():
        column = str(name).strip().replace(" ", "_")
        if not column:
            raise ValueError(f"region name {name!r} is empty")
        if column in normalized:
            raise ValueError(f"region names {list(regions)} give {column!r} twice once spaces are replaced by '_'")
        values = [values] if isinstance(values, (int, np.integer)) else list(values)
        if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 255
                                  for v in values):
            raise ValueError(f"region {name!r}: label values {values!r}; expected a non-empty list of integers "
                             f"in 1..255 (0 is background)")
        normalized[column] = tuple(int(v) for v in values)
    return normalized


def check_case(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float]) -> None:
    """Raise ``ValueError`` unless the two maps have one shape and ``spacing`` is 3 positive numbers."""
    if np.shape(prediction) != np.shape(ground_truth):
        raise ValueError(f"prediction shape {np.shape(prediction)} != ground truth shape {np.shape(ground_truth)}")
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {tuple(spacing)}")


def dice(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """Dice of two bool ``(Z, Y, X)`` masks; 1 when both are empty."""
    total = np.count_nonzero(prediction) + np.count_nonzero(ground_truth)
    return float(2.0 * np.count_nonzero(prediction & ground_truth) / total) if total else 1.0


def weighted_percentile(distances: np.ndarray, weights: np.ndarray, percent: float) -> float:
    """The smallest distance whose cumulative weight (distances sorted) reaches ``percent`` % of the total.

    ``distances`` and ``weights`` are 1-D of the same length (non-empty, weights summing to > 0).
    """
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    index = np.searchsorted(cumulative / cumulative[-1], percent / 100.0)
    return float(distances[order][min(index, len(order) - 1)])


def surface_distances(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distances (mm) between the surfaces of two non-empty bool ``(Z, Y, X)`` masks, with surfel areas.

    Returns ``(pred_to_gt, pred_areas, gt_to_pred, gt_areas)``: for each surface element of the
    prediction its distance to the ground-truth surface and its area (mm^2), and the same the other way.
    """
    spacing = tuple(float(s) for s in spacing)
    edges_pred, edges_gt, areas_pred, areas_gt = get_mask_edges(prediction, ground_truth, spacing=spacing)
    edges_pred, edges_gt = np.asarray(edges_pred, dtype=bool), np.asarray(edges_gt, dtype=bool)
    pred_to_gt = np.asarray(get_surface_distance(edges_pred, edges_gt, spacing=spacing), dtype=np.float64)
    gt_to_pred = np.asarray(get_surface_distance(edges_gt, edges_pred, spacing=spacing), dtype=np.float64)
    return pred_to_gt, np.asarray(areas_pred)[edges_pred], gt_to_pred, np.asarray(areas_gt)[edges_gt]


def hd95(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Area-weighted 95th-percentile Hausdorff distance (mm) of two bool ``(Z, Y, X)`` masks.

    0 when both are empty, 374 when exactly one is.
    """
    has_pred, has_gt = bool(prediction.any()), bool(ground_truth.any())
    if not (has_pred or has_gt):
        return 0.0
    if has_pred != has_gt:
        return MAX_HD95
    pred_to_gt, pred_areas, gt_to_pred, gt_areas = surface_distances(prediction, ground_truth, spacing)
    return max(weighted_percentile(pred_to_gt, pred_areas, PERCENT),
               weighted_percentile(gt_to_pred, gt_areas, PERCENT))
