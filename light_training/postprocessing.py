"""Postprocessing chosen on cross-validation (nnU-Net's ``determine_postprocessing``): keep only the largest
connected component of the foreground, and/or of single labels.

The rules live in ``postprocessing.json`` beside the folds of a training run (written by the metrics
scripts with ``--determine_postprocessing=True``, :mod:`light_training.evaluation.choose_postprocessing`), travel in
an exported model zip, and are applied by prediction to each case's label map on the source grid, after
the argmax. Components are 26-connected (``scipy.ndimage.label`` with the full 3x3x3 structure, as
nnU-Net's ``skimage.measure.label`` default); voxels removed become background (0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from light_training.io import read_json, write_json

__all__ = ["POSTPROCESSING_FILE", "Postprocessing", "largest_component", "apply_postprocessing",
           "read_postprocessing", "write_postprocessing"]

POSTPROCESSING_FILE = "postprocessing.json"  # <logdir>/postprocessing.json, beside the folds
_FULL = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


@dataclass(frozen=True)
class Postprocessing:
    """The rules to apply: ``foreground`` (keep the largest component of all labels > 0 together) and
    ``labels`` (keep the largest component of each of these label values), in that order; ``decision``:
    the cross-validation numbers that chose them (kept as written, for the record)."""
    foreground: bool = False
    labels: tuple[int, ...] = ()
    decision: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def active(self) -> bool:
        return self.foreground or bool(self.labels)

    def rules(self) -> dict[str, Any]:
        """The rules alone (no numbers): what prediction records and fingerprints."""
        return {"foreground": self.foreground, "labels": list(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.rules(), "decision": self.decision}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "Postprocessing":
        """Validate what :meth:`to_dict` wrote; ``ValueError`` naming ``source`` and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("foreground"), bool):
            raise ValueError(f"{source}: expected an object with \"foreground\": true/false and \"labels\": [...]")
        labels = data.get("labels", [])
        if not isinstance(labels, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in labels):
            raise ValueError(f"{source}: field 'labels': expected a list of foreground label values, got {labels!r}")
        return cls(data["foreground"], tuple(labels), data.get("decision") or {})


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a ``(Z, Y, X)`` bool mask (ties: the first in array order);
    an empty mask stays empty."""
    components, num = ndimage.label(mask, structure=_FULL)
    if num <= 1:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def apply_postprocessing(segmentation: np.ndarray, rules: Postprocessing | None) -> np.ndarray:
    """``segmentation`` ``(Z, Y, X)`` (label values) with the rules applied: removed voxels become 0. A copy
    when a rule applies; the array itself when there is none."""
    if rules is None or not rules.active:
        return segmentation
    out = np.array(segmentation, copy=True)
    if rules.foreground:
        foreground = out > 0
        out[foreground & ~largest_component(foreground)] = 0
    for value in rules.labels:
        mask = out == value
        out[mask & ~largest_component(mask)] = 0
    return out


def read_postprocessing(folder: str | Path | None) -> Postprocessing | None:
    """The rules of ``<folder>/postprocessing.json``; None when ``folder`` is None or holds none."""
    if folder is None:
        return None
    path = Path(folder) / POSTPROCESSING_FILE
    return Postprocessing.from_dict(read_json(path), str(path)) if path.is_file() else None


def write_postprocessing(rules: Postprocessing, folder: str | Path) -> Path:
    """Write ``<folder>/postprocessing.json`` (atomically)."""
    path = Path(folder) / POSTPROCESSING_FILE
    write_json(rules.to_dict(), path)
    return path
