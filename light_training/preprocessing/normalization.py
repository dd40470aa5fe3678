"""Intensity normalisation per channel, nnU-Net's two schemes.

- ``"CT"``: clip to the dataset's foreground 0.5 / 99.5 percentiles, subtract the foreground mean,
  divide by the foreground std (statistics from the plan, gathered over the labelled voxels of every
  training case, so that all CTs share one intensity scale).
- ``"ZScore"`` (MRI): per image and per sequence, subtract the mean and divide by the std of the voxels
  inside the brain mask (non-zero in any sequence, holes filled); the background is set to 0.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SCHEMES", "foreground_mask", "normalize", "intensity_statistics"]

SCHEMES = ("CT", "ZScore")
_EPS = 1e-8


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """``(C, Z, Y, X)`` -> ``(Z, Y, X)`` bool: non-zero in any channel, enclosed holes filled."""
    return ndi.binary_fill_holes(np.any(image != 0, axis=0))


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """Statistics of sampled foreground intensities ``(N,)``: what the ``"CT"`` scheme needs, and more."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no foreground voxels to compute intensity statistics from")
    p005, p50, p995 = np.percentile(values, [0.5, 50.0, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(p50),
            "percentile_00_5": float(p005), "percentile_99_5": float(p995),
            "min": float(values.min()), "max": float(values.max()), "num_samples": int(values.size)}


def normalize(image: np.ndarray, schemes: Sequence[str], intensity_properties: Sequence[dict[str, Any] | None],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``(C, Z, Y, X)`` -> new float32 array of the same shape.

    Args:
        schemes: per channel ``"CT"`` or ``"ZScore"``.
        intensity_properties: per channel, the plan's statistics (used by ``"CT"``).
        mask: ``(Z, Y, X)`` bool brain mask for ``"ZScore"``; None: :func:`foreground_mask` of ``image``.
    """
    if len(schemes) != image.shape[0]:
        raise ValueError(f"{image.shape[0]} channel(s) but {len(schemes)} normalisation scheme(s) {list(schemes)}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        channel = image[c].astype(np.float32, copy=False)
        if scheme == "CT":
            props = intensity_properties[c]
            if not props:
                raise ValueError(f"channel {c}: CT normalisation needs foreground intensity statistics in the plan")
            clipped = np.clip(channel, props["percentile_00_5"], props["percentile_99_5"])
            out[c] = (clipped - props["mean"]) / max(props["std"], _EPS)
        elif scheme == "ZScore":
            if mask is None:
                mask = foreground_mask(image)
            inside = channel[mask]
            mean, std = (inside.mean(dtype=np.float64), inside.std(dtype=np.float64)) if inside.size else (0.0, 1.0)
            out[c] = (channel - mean) / max(std, _EPS)
            out[c][~mask] = 0
        else:
            raise ValueError(f"channel {c}: unknown normalisation {scheme!r}; expected one of {list(SCHEMES)}")
    return out
