"""Resampling to another voxel spacing with nnU-Net's rules, written on ``scipy.ndimage.zoom``.

- images: cubic spline (order 3);
- label maps: each class as a one-hot float map, linear (order 1), then the arg-max over classes, so
  no label is invented between two others and thin structures survive better than with nearest neighbour;
- probabilities: linear (order 1) per channel (they still sum to 1).

When one axis' spacing is more than ``ANISOTROPY_THRESHOLD`` times the finest one (thick slices), the
two in-plane axes are interpolated slice by slice and the thick axis with nearest neighbour (order 0),
as nnU-Net does (Isensee et al., Nature Methods 2021, "resampling strategy"). The thick axis is looked
for in the source spacing first, then in the destination spacing.

Arrays are ``(Z, Y, X)`` (channels first: ``(C, Z, Y, X)``); shapes and spacings are (z, y, x).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ANISOTROPY_THRESHOLD", "shape_for_spacing", "anisotropic_axis", "resample_channels",
           "resample_label"]

ANISOTROPY_THRESHOLD = 3.0  # max/min spacing above which the coarse axis is resampled separately


def shape_for_spacing(shape: Sequence[int], spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, int, int]:
    """The ``(z, y, x)`` shape that covers the same extent at ``new_spacing`` (rounded, at least 1)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def _coarse_axis(spacing: Sequence[float], threshold: float) -> int | None:
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.max() / spacing.min() <= threshold:
        return None
    coarse = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-3))
    return int(coarse[0]) if len(coarse) == 1 else None  # two coarse axes: no single slice axis


def anisotropic_axis(spacing: Sequence[float], new_spacing: Sequence[float],
                     threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to resample separately with nearest neighbour, or None (ordinary 3-D interpolation).

    ``threshold``: the plan's ``resampling.anisotropy_threshold``. Call it with the same (original,
    target) pair and threshold in both directions so that a mapping and its
    inverse treat the same axis alike.
    """
    axis = _coarse_axis(spacing, threshold)
    return axis if axis is not None else _coarse_axis(new_spacing, threshold)


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """``(Z, Y, X)`` -> ``new_shape`` float32 (edge-replicating borders, pixel-centre aligned)."""
    if tuple(volume.shape) == tuple(new_shape):
        return volume.astype(np.float32, copy=False)
    factors = [n / o for n, o in zip(new_shape, volume.shape)]
    return ndi.zoom(volume, factors, output=np.float32, order=order, mode="nearest", grid_mode=True,
                    prefilter=order > 1)


def _zoom_in_plane(volume: np.ndarray, new_shape: Sequence[int], order: int, axis: int) -> np.ndarray:
    """Interpolate the two axes other than ``axis`` slice by slice; ``axis`` keeps its length."""
    moved = np.moveaxis(volume, axis, 0)
    plane = [n for i, n in enumerate(new_shape) if i != axis]
    if tuple(moved.shape[1:]) == tuple(plane):
        return volume.astype(np.float32, copy=False)
    slices = np.stack([_zoom(s, plane, order) for s in moved])
    return np.moveaxis(slices, 0, axis)


def _nearest_along(volume: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Nearest-neighbour resampling of one axis to ``length`` (pixel-centre aligned); dtype kept."""
    n = volume.shape[axis]
    if n == length:
        return volume
    source = np.clip(np.floor((np.arange(length) + 0.5) * n / length).astype(np.int64), 0, n - 1)
    return np.take(volume, source, axis=axis)


def _resample_float(volume: np.ndarray, new_shape: Sequence[int], order: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return _zoom(volume, new_shape, order)
    return _nearest_along(_zoom_in_plane(volume, new_shape, order, axis), new_shape[axis], axis)


def resample_channels(data: np.ndarray, new_shape: Sequence[int], order: int = 3,
                      axis: int | None = None) -> np.ndarray:
    """Resample every channel of ``(C, Z, Y, X)`` to ``(C, *new_shape)`` float32.

    ``order`` 3 for images, 1 for probabilities; ``axis`` (from :func:`anisotropic_axis`) is then
    resampled with nearest neighbour after the in-plane interpolation. Same shape: returned as float32.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    return np.stack([_resample_float(channel, new_shape, order, axis) for channel in data])


def resample_label(label: np.ndarray, new_shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` label map to ``new_shape`` uint8, label-safe.

    Each label value present becomes a one-hot map interpolated linearly (in-plane only when ``axis``
    is given); every voxel takes the value with the highest interpolated weight (ties: the smaller
    value). The ``axis`` is then resampled with nearest neighbour.
    """
    new_shape = tuple(int(n) for n in new_shape)
    label = np.asarray(label)
    if tuple(label.shape) == new_shape:
        return label.astype(np.uint8)
    values = np.flatnonzero(np.bincount(label.ravel().astype(np.int64), minlength=1))
    interpolated_shape = list(new_shape)
    if axis is not None:
        interpolated_shape[axis] = label.shape[axis]
    if len(values) == 1:
        out = np.full(interpolated_shape, values[0], dtype=np.uint8)
    else:
        out = np.zeros(interpolated_shape, dtype=np.uint8)
        best = np.full(interpolated_shape, -1.0, dtype=np.float32)
        for value in values:
            onehot = (label == value).astype(np.float32)
            weight = _zoom(onehot, interpolated_shape, 1) if axis is None else \
                _zoom_in_plane(onehot, new_shape, 1, axis)
            better = weight > best
            out[better] = value
            best[better] = weight[better]
    return out if axis is None else _nearest_along(out, new_shape[axis], axis)
