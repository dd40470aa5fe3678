"""AIIB2023 airway metrics: IoU, detected length ratio (DLR), detected branch ratio (DBR), precision, leakages.

As the challenge's official scoring defines them (AIIB2023, ``scoring metrics/task1.py``), on binary
masks; spacing plays no part:

- L = the largest 6-connected component of the prediction; when IoU(gt, L) < 0.1 the second largest.
- IoU = |gt n L| / |gt u L|; precision = |L n gt| / |L|; leakages = |L \\ gt| / |gt|.
- S = the 3-D skeleton (Lee thinning) of the whole ground truth; DLR = |L n S| / |S|.
- DBR = detected branches / branches. The ground truth is parsed into branches (:func:`parse_branches`);
  a branch is detected when at least 80 % of its part of S lies in L (no voxel of S: not detected).

Axis order. The official scorer loads the files with nibabel, so its arrays are in the file's voxel order
``(X, Y, Z)`` (``nib.load(f).get_fdata()``); this project reads them with SimpleITK, in ``(Z, Y, X)``
order, which is the same voxels with the axes reversed (for any NIfTI, whatever its orientation: neither
library reorders voxels). Lee thinning visits the voxels in array order and peels the directions in a
fixed order, so it is not invariant to a permutation of the axes: on the same airway the two orders give
different skeletons, and so a different DLR and different branches (DBR). IoU, precision and leakages do
not depend on the order. :func:`aiib_case_metrics` therefore always computes in the official ``(X, Y, Z)``
order: ``(Z, Y, X)`` arrays (``order="zyx"``, the default and what the scoring path passes) are
transposed first; with ``order="xyz"`` they are taken as given.

Where the official code has no answer (it crashes or loops forever):

- an empty prediction scores 0 everywhere, leakages included;
- when neither the largest nor the second largest component reaches IoU 0.1, IoU, DLR, DBR and precision
  are 0 and leakages is computed from the largest component (what the prediction leaks is still measured);
- a ground truth whose skeleton has no branch of 5 voxels gives DBR = NaN (summaries skip NaN), and one
  whose skeleton is empty (Lee thinning removes every voxel of some small blobs, a 2x2x2 cube for one) gives
  DLR = NaN as well (the official code divides 0 by 0 there too);
- an empty ground truth is an error (every ratio divides by it); the scoring lists the case as unscored.

Everything is computed in the bounding box of prediction and ground truth plus one voxel, which gives the
same skeletons, components and nearest skeleton voxels as the whole volume (and is much faster).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

__all__ = ["AIIB_COLUMNS", "AXIS_ORDERS", "aiib_case_metrics", "airway_skeleton", "largest_components",
           "parse_branches"]

AIIB_COLUMNS = ("IoU", "DLR", "DBR", "precision", "leakages")
AXIS_ORDERS = ("zyx", "xyz")  # SimpleITK's array order (this project's), nibabel's (the official scorer's)
FALLBACK_IOU = 0.1  # below this IoU with the ground truth, the largest component is taken for a failure
DETECTED_FRACTION = 0.8  # a branch is detected when this fraction of its skeleton lies in L
JUNCTION_COUNT = 3  # skeleton voxels with more skeleton voxels than this in their 3x3x3 block are junctions
MIN_BRANCH_VOXELS = 5  # skeleton pieces with fewer voxels are not branches

_SIX = ndimage.generate_binary_structure(3, 1)  # 6-connectivity
_CUBE = np.ones((3, 3, 3), dtype=np.uint8)  # 26-connectivity, and the 3x3x3 neighbourhood count


def largest_components(mask: np.ndarray, count: int = 2) -> list[np.ndarray]:
    """The ``count`` largest 6-connected components of a 3-D mask, largest first, as bool masks.

    Fewer are returned when the mask has fewer components (none for an empty mask); ties go to the
    component met first in array order.
    """
    labels, num = ndimage.label(mask, structure=_SIX)
    if num == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:count]
    return [labels == index + 1 for index in order]


def airway_skeleton(mask: np.ndarray) -> np.ndarray:
    """The 3-D skeleton (Lee thinning, scikit-image) of a 3-D mask, as a bool mask of the same shape.

    The skeleton depends on the order of the axes (module docstring): give the official ``(X, Y, Z)`` order.
    """
    return skeletonize(np.asarray(mask, dtype=bool), method="lee").astype(bool)


def parse_branches(ground_truth: np.ndarray, skeleton: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Parse an airway tree into branches, as the official scoring does.

    Take the largest 6-connected component, fill its holes, skeletonise; count for every skeleton voxel
    the skeleton voxels in its 3x3x3 neighbourhood (itself included) and delete those with more than 3
    (junctions); the remaining 26-connected pieces of at least 5 voxels are the branches. Every voxel of
    the filled mask takes the branch of its nearest remaining skeleton voxel.

    Args:
        ground_truth: 3-D mask (nonzero = airway), in the official ``(X, Y, Z)`` order.
        skeleton: the skeleton of the whole ``ground_truth`` if already computed; reused when the filled
            largest component is the whole ground truth (the usual case), as it is then the same skeleton.

    Returns:
        ``(branch_map, num_branches)``: int32, the shape of ``ground_truth``, with 1..num_branches on the filled mask,
        0 elsewhere (all 0 and ``num_branches = 0`` for an empty mask or a tree without branches).
    """
    branch_map = np.zeros(ground_truth.shape, dtype=np.int32)
    components = largest_components(ground_truth, 1)
    if not components:
        return branch_map, 0
    filled = ndimage.binary_fill_holes(components[0])
    if skeleton is None or not np.array_equal(filled, np.asarray(ground_truth) > 0):
        skeleton = airway_skeleton(filled)
    counts = ndimage.convolve(skeleton.astype(np.uint8), _CUBE, mode="constant", cval=0)
    pieces, num = ndimage.label(skeleton & (counts <= JUNCTION_COUNT), structure=_CUBE)
    sizes = np.bincount(pieces.ravel(), minlength=num + 1)
    keep = sizes >= MIN_BRANCH_VOXELS
    keep[0] = False
    num_branches = int(keep.sum())
    if num_branches == 0:
        return branch_map, 0
    new_index = np.zeros(num + 1, dtype=np.int32)
    new_index[keep] = np.arange(1, num_branches + 1)
    branches = new_index[pieces]  # kept pieces numbered 1..num_branches in label order
    nearest = ndimage.distance_transform_edt(branches == 0, return_distances=False, return_indices=True)
    branch_map[filled] = branches[tuple(nearest[:, filled])]
    return branch_map, num_branches


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _crop_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask grown by ``margin`` voxels (clipped to the array)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        where = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(int(where[0]) - margin, 0), min(int(where[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def aiib_case_metrics(prediction: np.ndarray, ground_truth: np.ndarray,
                      spacing: Sequence[float] | None = None, order: str = "zyx") -> dict[str, float]:
    """IoU, DLR, DBR, precision and leakages of one case (definitions in the module docstring).

    Args:
        prediction: 3-D mask or label map (nonzero = airway).
        ground_truth: 3-D mask or label map, same shape (nonzero = airway).
        spacing: ignored (the official metrics count voxels); accepted so every case metric has one signature.
        order: the axis order of both arrays: ``"zyx"`` (SimpleITK's, this project's; transposed to the
            official order before computing) or ``"xyz"`` (nibabel's, the file's voxel order: the official
            scorer's; taken as given).

    Returns:
        ``{"IoU", "DLR", "DBR", "precision", "leakages"}`` as floats.
    """
    del spacing
    if order not in AXIS_ORDERS:
        raise ValueError(f"order={order!r}; expected one of {AXIS_ORDERS}")
    prediction, ground_truth = np.asarray(prediction) > 0, np.asarray(ground_truth) > 0
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != ground truth shape {ground_truth.shape}")
    if order == "zyx":  # (Z, Y, X) -> (X, Y, Z): the arrays the official scorer gets from nibabel
        prediction, ground_truth = prediction.T, ground_truth.T
    gt_size = np.count_nonzero(ground_truth)
    if gt_size == 0:
        raise ValueError("empty ground truth: IoU, DLR, DBR and leakages are undefined")
    box = _crop_box(ground_truth | prediction)
    prediction, ground_truth = prediction[box], ground_truth[box]

    candidates = largest_components(prediction, 2)
    if not candidates:  # empty prediction
        return dict.fromkeys(AIIB_COLUMNS, 0.0)
    airway = next((c for c in candidates if _iou(ground_truth, c) >= FALLBACK_IOU), None)
    if airway is None:  # no component finds the airway: the official code never returns
        leakages = np.count_nonzero(candidates[0] & ~ground_truth) / gt_size
        return {"IoU": 0.0, "DLR": 0.0, "DBR": 0.0, "precision": 0.0, "leakages": float(leakages)}

    skeleton = airway_skeleton(ground_truth)
    branch_map, num_branches = parse_branches(ground_truth, skeleton)
    if num_branches:
        skeleton_per_branch = np.bincount(branch_map[skeleton], minlength=num_branches + 1)[1:]
        found_per_branch = np.bincount(branch_map[skeleton & airway], minlength=num_branches + 1)[1:]
        ratio = np.divide(found_per_branch, skeleton_per_branch, out=np.zeros(num_branches),
                          where=skeleton_per_branch > 0)
        detected = (skeleton_per_branch > 0) & (ratio >= DETECTED_FRACTION)
        dbr = float(np.count_nonzero(detected) / num_branches)
    else:
        dbr = float("nan")
    airway_size, skeleton_size = np.count_nonzero(airway), np.count_nonzero(skeleton)
    return {
        "IoU": float(_iou(ground_truth, airway)),
        "DLR": float(np.count_nonzero(airway & skeleton) / skeleton_size) if skeleton_size else float("nan"),
        "DBR": dbr,
        "precision": float(np.count_nonzero(airway & ground_truth) / airway_size),
        "leakages": float(np.count_nonzero(airway & ~ground_truth) / gt_size),
    }
