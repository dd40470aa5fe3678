"""Preprocessing by the plan (crop, normalise, resample), the preprocessed files, and the way back.

A case goes through nnU-Net's steps: crop to the bounding box of the voxels that are non-zero in any
channel; normalise each channel (:mod:`light_training.preprocessing.normalization`); resample image and label to
the plan's target spacing (:mod:`light_training.preprocessing.resampling`). :func:`restore_to_original` undoes the
geometry part for a prediction: resample to the cropped shape, un-crop, original grid.

Files per case ``<case>`` in ``data_dir`` (JSON and numpy only, each written atomically):

- ``<case>_image.npy``: float32 ``(C, z, y, x)``, ``np.load(..., mmap_mode="r")`` for patch reads;
- ``<case>_label.npy``: uint8 ``(z, y, x)`` on the same grid;
- ``<case>.json``: the properties (original geometry, crop box, shapes, ``class_locations`` for
  foreground oversampling, the plan's hash), written last: a case without it is not finished.

The plan is ``<data_dir>/../plans.json`` (:func:`plans_path`, made by :mod:`light_training.planning`).
"""
from __future__ import annotations

import json
import math
import zlib
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np



from light_training.io import Geometry, atomic_path, read_json
from light_training.parallel import map_cases
from light_training.preprocessing.normalization import foreground_mask, normalize
from light_training.datasets import load_dataset
from light_training.preprocessing.raw_cases import RawCase, read_raw_case, validate_case
from light_training.preprocessing.resampling import anisotropic_axis, resample_channels, resample_label, shape_for_spacing

__all__ = ["nonzero_bounding_box", "case_seed", "preprocess_case",
           "restore_to_original", "sample_class_locations", "save_case", "load_case", "list_cases",
           "preprocess_dataset", "PreprocessingSummary"]

CLASS_LOCATIONS_SAMPLES = 10_000  # voxel coordinates stored per foreground class ...
CLASS_LOCATIONS_MIN_FRACTION = 0.01  # ... but at least this fraction of the class's voxels


def nonzero_bounding_box(image: np.ndarray) -> list[list[int]]:
    """``[[z0, z1], [y0, y1], [x0, x1]]`` (end exclusive) of the voxels non-zero in any channel of ``(C, Z, Y, X)``."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(3):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            raise ValueError("image has no foreground: every voxel is 0, nothing to crop to")
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def case_seed(case: str) -> int:
    """A seed that depends only on the case id, so that sampling is the same on every run."""
    return zlib.crc32(case.encode())


def sample_class_locations(label: np.ndarray, classes: Sequence[int], seed: int) -> dict[str, list[list[int]]]:
    """``{"c": [[z, y, x], ...]}``: up to 10,000 (at least 1 %) voxels of each class of a ``(z, y, x)`` map.

    Sampled without replacement with ``seed``, sorted; a class that is absent gets ``[]``.
    """
    rng = np.random.default_rng(seed)
    flat = label.ravel()
    locations = {}
    for value in classes:
        where = np.flatnonzero(flat == value)
        count = min(where.size, max(CLASS_LOCATIONS_SAMPLES, math.ceil(CLASS_LOCATIONS_MIN_FRACTION * where.size)))
        if count < where.size:
            where = np.sort(rng.choice(where, count, replace=False))
        locations[str(value)] = np.stack(np.unravel_index(where, label.shape), axis=1).tolist()
    return locations


def preprocess_case(image: np.ndarray, geometry: Geometry, label: np.ndarray | None, plans: dict[str, Any],
                    case: str = "") -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop, normalise and resample one case by the plan.

    Args:
        image: ``(C, Z, Y, X)`` on ``geometry`` (channels in ``plans["channel_names"]`` order).
        label: ``(Z, Y, X)`` with values in ``plans["labels"]``, or None (prediction).
        case: the case id, stored in the properties and used to seed the voxel sampling.
    Returns:
        data ``(C, z, y, x)`` float32, seg ``(z, y, x)`` uint8 (None without a label), properties.
    Raises ``ValueError`` for NaN/Inf, an empty image, a label of another shape or with unexpected values.
    """
    validate_case(image, label, plans["labels"], plans["channel_names"])
    if tuple(image.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"image shape {image.shape[1:]} != its geometry's shape {geometry.shape}")
    box = nonzero_bounding_box(image)
    region = tuple(slice(lo, hi) for lo, hi in box)
    image = image[(slice(None), *region)]
    cropped_shape = image.shape[1:]
    # the brain mask of the MRI z-score, on the cropped grid (nnU-Net normalises before resampling)
    mask = foreground_mask(image) if "ZScore" in plans["normalization"] else None
    data = normalize(image, plans["normalization"], plans["intensity_properties"], mask)
    target = plans["target_spacing"]
    new_shape = shape_for_spacing(cropped_shape, geometry.spacing, target)
    resampling = plans["resampling"]
    axis = anisotropic_axis(geometry.spacing, target, resampling["anisotropy_threshold"])
    data = resample_channels(data, new_shape, order=resampling["image_order"], axis=axis)
    if mask is not None and tuple(mask.shape) != new_shape:  # the spline spills a little into the background
        data[:, resample_label(mask.astype(np.uint8), new_shape, axis) == 0] = 0
    seg = resample_label(label[region], new_shape, axis) if label is not None else None
    properties = {
        "case": case, "geometry": geometry.to_dict(), "crop_box": box, "shape_after_crop": list(cropped_shape),
        "shape_after_resample": list(new_shape), "spacing_after_resample": [float(s) for s in target],
        "channel_names": list(plans["channel_names"]), "plans_hash": plans.get("plans_hash"),
        "anisotropy_threshold": resampling["anisotropy_threshold"],
        "class_locations": {} if seg is None else sample_class_locations(seg, plans["labels"][1:], case_seed(case)),
    }
    return data, seg, properties


def restore_to_original(array: np.ndarray, properties: dict[str, Any], is_label: bool) -> np.ndarray:
    """Map an array on the preprocessed grid back onto the original image grid.

    Args:
        array: probabilities ``(K, z, y, x)`` (channel 0 = background) or a label map ``(z, y, x)``,
            with ``(z, y, x) == properties["shape_after_resample"]``.
        properties: the case's preprocessing properties.
    Returns:
        ``(K, Z, Y, X)`` float32 (resampled linearly; outside the crop box background 1, others 0) or
        ``(Z, Y, X)`` uint8 (label-safe; 0 outside the crop box), on ``properties["geometry"]``.
    """
    geometry = Geometry.from_dict(properties["geometry"])
    expected = tuple(properties["shape_after_resample"])
    array = np.asarray(array)
    spatial = array.shape if is_label else array.shape[1:]
    if array.ndim != (3 if is_label else 4) or tuple(spatial) != expected:
        kind = "(z, y, x) label map" if is_label else "(K, z, y, x) probabilities"
        raise ValueError(f"{properties.get('case', '')}: expected {kind} with (z, y, x) = {expected}, "
                         f"got shape {array.shape}")
    crop_shape = tuple(properties["shape_after_crop"])
    # the same (spacing, target, threshold) as the forward way
    axis = anisotropic_axis(geometry.spacing, properties["spacing_after_resample"], properties["anisotropy_threshold"])
    region = tuple(slice(lo, hi) for lo, hi in properties["crop_box"])
    if is_label:
        restored = np.zeros(geometry.shape, dtype=np.uint8)
        restored[region] = resample_label(array, crop_shape, axis)
        return restored
    restored = np.zeros((array.shape[0], *geometry.shape), dtype=np.float32)
    restored[0] = 1.0
    restored[(slice(None), *region)] = resample_channels(array, crop_shape, order=1, axis=axis)
    return restored


def _case_files(data_dir: str | Path, case: str) -> tuple[Path, Path, Path]:
    data_dir = Path(data_dir)
    return data_dir / f"{case}_image.npy", data_dir / f"{case}_label.npy", data_dir / f"{case}.json"


def _properties_text(properties: dict[str, Any]) -> str:
    # one line per key: readable, yet thousands of class locations stay compact
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in properties.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def save_case(data_dir: str | Path, case: str, data: np.ndarray, seg: np.ndarray, properties: dict[str, Any]) -> None:
    """Write ``<case>_image.npy`` (C, z, y, x) float32, ``<case>_label.npy`` (z, y, x) uint8, then ``<case>.json``.

    The properties are removed first and written last, so a crash in between leaves an unfinished
    case that :func:`list_cases` ignores and a rerun redoes.
    """
    image_path, label_path, json_path = _case_files(data_dir, case)
    json_path.unlink(missing_ok=True)
    with atomic_path(image_path) as tmp:
        np.save(tmp, np.ascontiguousarray(data, dtype=np.float32))
    with atomic_path(label_path) as tmp:
        np.save(tmp, np.ascontiguousarray(seg, dtype=np.uint8))
    with atomic_path(json_path) as tmp:
        tmp.write_text(_properties_text(properties))


def _remove_case(data_dir: str | Path, case: str) -> None:
    for path in _case_files(data_dir, case):
        path.unlink(missing_ok=True)


def load_case(data_dir: str | Path, case: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """A preprocessed case: image memmap ``(C, z, y, x)``, label memmap ``(z, y, x)`` or None, properties."""
    image_path, label_path, json_path = _case_files(data_dir, case)
    if not json_path.is_file() or not image_path.is_file():
        raise ValueError(f"{data_dir}: no preprocessed case {case!r} (run the preprocessing script)")
    label = np.load(label_path, mmap_mode="r") if label_path.is_file() else None
    return np.load(image_path, mmap_mode="r"), label, read_json(json_path)


def list_cases(data_dir: str | Path) -> list[str]:
    """Sorted ids of the completely written cases of ``data_dir`` (image, label and properties present)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    cases = (p.name[: -len("_image.npy")] for p in data_dir.glob("*_image.npy") if not p.name.startswith("."))
    return sorted(c for c in cases if all(p.is_file() for p in _case_files(data_dir, c)))


def _is_finished(data_dir: Path, case: str, plans_hash: str | None) -> bool:
    files = _case_files(data_dir, case)
    if not all(p.is_file() for p in files):
        return False
    try:
        return read_json(files[2]).get("plans_hash") == plans_hash
    except ValueError:
        return False


def _process_one(raw: RawCase, plans: dict[str, Any], output_dir: Path) -> float:
    """Read, preprocess and save one case; seconds taken. On any error nothing of the case is left."""
    start = time.perf_counter()
    try:
        image, geometry, label = read_raw_case(raw, load_dataset(plans["description"]))
        if label is None:
            raise ValueError("no label file (training data needs labels)")
        data, seg, properties = preprocess_case(image, geometry, label, plans, case=raw.case)
        save_case(output_dir, raw.case, data, seg, properties)
    except BaseException:
        _remove_case(output_dir, raw.case)
        raise
    return time.perf_counter() - start


@dataclass
class PreprocessingSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done with the same plan
    failed: dict[str, str] = field(default_factory=dict)  # case -> problem
    case_seconds: list[float] = field(default_factory=list)  # per processed case, in its worker
    wall_seconds: float = 0.0

    def report(self) -> str:
        per_case = f"{np.mean(self.case_seconds):.2f} s per case" if self.case_seconds else "no case processed"
        lines = [f"preprocessing: {len(self.done)} done, {len(self.skipped)} skipped (already done), "
                 f"{len(self.failed)} failed; {per_case}, {self.wall_seconds:.1f} s in all"]
        if self.failed:
            lines.append("bad cases (left out):")
            lines += [f"  {message}" for message in self.failed.values()]
        return "\n".join(lines)


def preprocess_dataset(raw_cases: Sequence[RawCase], plans: dict[str, Any], output_dir: str | Path,
                       num_processes: int = 0, overwrite: bool = False,
                       skip_bad_cases: bool = False) -> PreprocessingSummary:
    """Preprocess the planned cases into ``output_dir``, skipping those already done with this plan.

    Cases the plan lists as bad are not retried (they are reported as failed). Without
    ``skip_bad_cases`` a bad case raises ``ValueError`` after the running cases finish.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*output_dir.glob(".*.tmp.npy"), *output_dir.glob(".*.tmp.json")]:  # from an interrupted run
        stale.unlink(missing_ok=True)
    summary = PreprocessingSummary(failed=dict(plans.get("bad_cases", {})))
    todo = []
    for raw in raw_cases:
        if raw.case in summary.failed:
            continue
        if not overwrite and _is_finished(output_dir, raw.case, plans.get("plans_hash")):
            summary.skipped.append(raw.case)
        else:
            todo.append(raw)
    results, failures = map_cases(partial(_process_one, plans=plans, output_dir=output_dir), todo, num_processes,
                                  f"preprocessing {plans['dataset']}", skip_bad_cases)
    summary.done = sorted(results)
    summary.case_seconds = [results[c] for c in summary.done]
    summary.failed.update(failures)
    summary.wall_seconds = time.perf_counter() - start
    return summary
