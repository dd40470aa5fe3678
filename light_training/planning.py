"""Which files make a case, the checks every case passes, and the plan (nnU-Net's fingerprint + plans).

Raw layouts found by :func:`find_raw_cases`:

- ``aiib2023``: ``<raw_dir>/img/<case>.nii.gz`` (CT in HU) and ``<raw_dir>/gt/<case>.nii.gz`` (1 = airway).
  Without labels (prediction on any folder): ``<dir>/img/<case>.nii.gz`` when ``img/`` exists, else
  ``<dir>/<case>.nii.gz``.
- ``brats2023``: one folder per case, ``<raw_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (the
  challenge's names) or ``<raw_dir>/<case>/{t1n,t1c,t2w,t2f,seg}.nii.gz`` (after
  ``brats2023/1_rename_mri_data_brats2023.py``); both are accepted, with or without labels.

The plan (``plans.json``, one JSON file read by every later stage) holds the dataset's fingerprint
(per case spacing, shape, shape after cropping, label values; per channel foreground intensity
statistics) and what preprocessing does with it (target spacing, normalisation per channel).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from light_training.io import Geometry, ImageReadError, read_image, read_json, read_label, write_json
from light_training.normalization import intensity_statistics
from light_training.resampling import ANISOTROPY_THRESHOLD, shape_for_spacing

__all__ = ["DatasetSpec", "DATASETS", "dataset_spec", "RawCase", "find_raw_cases", "read_raw_case",
           "validate_case", "check_nifti_file", "nonzero_bounding_box", "case_seed", "plans_path", "plan_dataset",
           "prepare_plans", "map_cases"]

INTENSITY_SAMPLES_TOTAL = 10_000_000  # foreground voxels sampled per channel over the whole dataset
INTENSITY_SAMPLES_PER_CASE = (1_000, 100_000)  # ... but at least / at most this many per case
_PLANS_HASH_KEYS = ("dataset", "channel_names", "labels", "normalization", "target_spacing", "intensity_properties")


@dataclass(frozen=True)
class DatasetSpec:
    """What is fixed per dataset: sequences, label values, normalisation scheme."""
    name: str
    modality: str  # "CT" or "MRI"
    channel_names: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    normalization: str  # scheme of every channel: "CT" or "ZScore"
    layout: str  # the raw layout, for error messages


DATASETS = {
    "aiib2023": DatasetSpec("aiib2023", "CT", ("CT",), (0, 1), ("background", "airway"), "CT",
                            "img/<case>.nii.gz and gt/<case>.nii.gz"),
    "brats2023": DatasetSpec("brats2023", "MRI", ("t1n", "t1c", "t2w", "t2f"), (0, 1, 2, 3),
                             ("background", "NCR", "ED", "ET"), "ZScore",
                             "<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz or <case>/{t1n,t1c,t2w,t2f,seg}.nii.gz"),
}


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return DATASETS[dataset]


@dataclass
class RawCase:
    """One raw case: its image files (one per channel, in ``channel_names`` order) and label file."""
    case: str
    image_files: list[Path]
    label_file: Path | None = None


def _nifti_stem(name: str) -> str | None:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and not name.startswith("."):
            return name[: -len(suffix)]
    return None


def _pick(folder: Path, case: str, part: str) -> Path:
    """``<case>-<part>.nii.gz`` or ``<part>.nii.gz`` (or .nii) in ``folder``; the first name if none exists."""
    names = [f"{case}-{part}.nii.gz", f"{part}.nii.gz", f"{case}-{part}.nii", f"{part}.nii"]
    return next((folder / n for n in names if (folder / n).is_file()), folder / names[0])


def find_raw_cases(raw_dir: str | Path, dataset: str, with_labels: bool = True) -> list[RawCase]:
    """The cases of a raw folder (layouts in the module docstring), sorted by case id.

    Files are listed, not read: a missing sequence or label shows up when the case is read.
    A folder that does not exist raises ``ValueError``; an empty one gives ``[]``.
    """
    spec, raw_dir = dataset_spec(dataset), Path(raw_dir)
    if not raw_dir.is_dir():
        raise ValueError(f"{raw_dir}: no such folder (expected {dataset} data laid out as {spec.layout})")
    cases = []
    if dataset == "aiib2023":
        folder = raw_dir / "img" if (with_labels or (raw_dir / "img").is_dir()) else raw_dir
        if not folder.is_dir():
            raise ValueError(f"{raw_dir}: no img/ folder (expected {spec.layout})")
        for path in sorted(folder.iterdir()):
            if (case := _nifti_stem(path.name)) is not None and path.is_file():
                cases.append(RawCase(case, [path], raw_dir / "gt" / path.name if with_labels else None))
    else:
        for folder in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = [_pick(folder, folder.name, channel) for channel in spec.channel_names]
            if not any(p.is_file() for p in files):  # not a case folder (a missing sequence is reported later)
                continue
            cases.append(RawCase(folder.name, files, _pick(folder, folder.name, "seg") if with_labels else None))
    return cases


def validate_case(image: np.ndarray, label: np.ndarray | None, labels: Sequence[int],
                  channel_names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the problem when an image ``(C, Z, Y, X)`` / label ``(Z, Y, X)`` is unusable."""
    if image.ndim != 4 or image.shape[0] != len(channel_names):
        raise ValueError(f"expected an image (C, Z, Y, X) with {len(channel_names)} channel(s) "
                         f"{list(channel_names)}, got array shape {image.shape}")
    for c, name in enumerate(channel_names):
        bad = image[c].size - np.count_nonzero(np.isfinite(image[c]))
        if bad:
            raise ValueError(f"image {name} holds {bad} NaN/Inf voxel(s)")
    if not np.any(image):
        raise ValueError("image has no foreground: every voxel is 0, nothing to crop to")
    if label is not None:
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} != image shape {image.shape[1:]}")
        found = np.flatnonzero(np.bincount(label.ravel().astype(np.int64), minlength=1))
        unexpected = sorted(set(found.tolist()) - set(labels))
        if unexpected:
            raise ValueError(f"label values {unexpected} outside the expected {list(labels)}")


def check_nifti_file(path: str | Path) -> None:
    """Raise ``ImageReadError`` for what SimpleITK reads without complaint: a truncated file (the
    missing voxels become 0) and NaN/Inf values (they become 0 too).

    Float files are read once more with nibabel and checked for NaN/Inf; for integer files the size
    is checked instead: for gzip the stored uncompressed size (its last 4 bytes), and only when that
    disagrees (a truncated file, or one of several gzip members) a full decompression.
    """
    path = Path(path)
    try:
        nifti = nib.load(str(path))
        expected = int(nifti.dataobj.offset) + int(np.prod(nifti.shape)) * nifti.get_data_dtype().itemsize
    except Exception:  # not a NIfTI file nibabel understands: SimpleITK reports what it cannot read
        return
    if np.issubdtype(nifti.get_data_dtype(), np.floating):
        try:
            values = nifti.dataobj.get_unscaled()
        except Exception as err:  # nibabel's message for a short file varies with the compression
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
        bad = values.size - np.count_nonzero(np.isfinite(values))
        if bad:
            raise ImageReadError(f"{path}: {bad} NaN/Inf voxel(s)")
        return
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
    else:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
    if size < expected:
        raise ImageReadError(f"{path}: unreadable or truncated image ({size} of {expected} bytes)")


def read_raw_case(raw: RawCase, spec: DatasetSpec) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Read and check a case: image ``(C, Z, Y, X)`` float32, its geometry, label ``(Z, Y, X)`` uint8 or None.

    Raises ``ValueError`` / ``ImageReadError`` (missing or unreadable file, sequences or label on
    another grid, NaN/Inf, unexpected label values, empty image).
    """
    names = spec.channel_names
    for channel, path in zip(names, raw.image_files):
        if not Path(path).is_file():
            path = Path(path)
            if len(names) > 1:
                raise ValueError(f"missing sequence {channel}: neither {path.name} nor {channel}.nii.gz "
                                 f"in {path.parent}")
            raise ValueError(f"missing image: {path} not found")
    if raw.label_file is not None and not Path(raw.label_file).is_file():
        raise ValueError(f"missing label: {raw.label_file} not found")
    for path in [*raw.image_files, *([raw.label_file] if raw.label_file is not None else [])]:
        check_nifti_file(path)
    image, geometry = read_image(raw.image_files)
    label = read_label(raw.label_file, geometry)[0] if raw.label_file is not None else None
    validate_case(image, label, spec.labels, names)
    return image, geometry, label


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


def plans_path(data_dir: str | Path) -> Path:
    """Where the plan of the preprocessed cases in ``data_dir`` lives: ``<data_dir>/../plans.json``."""
    return Path(data_dir).parent / "plans.json"


def _guarded(fn: Callable[[RawCase], Any], raw: RawCase) -> tuple[bool, Any]:
    try:
        return True, fn(raw)
    except ValueError as err:  # bad input (ImageReadError included); anything else is a bug and propagates
        return False, f"{raw.case}: {err}"


def map_cases(fn: Callable[[RawCase], Any], raw_cases: Sequence[RawCase], num_processes: int, desc: str,
              skip_bad_cases: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``fn`` on every case (``num_processes`` forked workers; 0 or 1: in this process) with a progress bar.

    Returns ``({case: result}, {case: error message})``. Without ``skip_bad_cases`` the first bad case
    raises ``ValueError``; cases already running are finished, the rest are not started.
    """
    results, failures = {}, {}

    def record(case: str, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            results[case] = value
            return
        failures[case] = value
        if not skip_bad_cases:
            raise ValueError(f"{value}\n(stopped; fix or remove the case, or run with --skip_bad_cases=True)")

    with tqdm(total=len(raw_cases), desc=desc, unit="case") as progress:
        if num_processes <= 1 or len(raw_cases) <= 1:
            for raw in raw_cases:
                record(raw.case, _guarded(fn, raw))
                progress.update()
        else:  # fork: the numbered scripts have no __main__ guard, so spawned workers would rerun them
            with ProcessPoolExecutor(min(num_processes, len(raw_cases)), mp_context=get_context("fork")) as pool:
                futures = {pool.submit(_guarded, fn, raw): raw.case for raw in raw_cases}
                try:
                    for future in as_completed(futures):
                        record(futures[future], future.result())
                        progress.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results, failures


def _fingerprint(raw: RawCase, spec: DatasetSpec, num_samples: int) -> tuple[dict[str, Any], np.ndarray]:
    """One case's fingerprint and ``(C, N)`` intensities sampled from its labelled foreground."""
    if raw.label_file is None:
        raise ValueError("planning needs labelled cases (no label file)")
    image, geometry, label = read_raw_case(raw, spec)
    box = nonzero_bounding_box(image)
    foreground = np.flatnonzero(label > 0)
    if foreground.size > num_samples:
        foreground = np.sort(np.random.default_rng(case_seed(raw.case)).choice(foreground, num_samples, replace=False))
    samples = image.reshape(image.shape[0], -1)[:, foreground]
    fingerprint = {"spacing": list(geometry.spacing), "shape": list(geometry.shape),
                   "shape_after_crop": [hi - lo for lo, hi in box],
                   "label_values": np.flatnonzero(np.bincount(label.ravel(), minlength=1)).tolist()}
    return fingerprint, samples


def _check_spacing(target_spacing: Sequence[float] | None) -> list[float] | None:
    if target_spacing is None or len(target_spacing) == 0:
        return None
    if len(target_spacing) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in target_spacing):
        raise ValueError(f"target_spacing must be 3 positive numbers (z, y, x) in mm, or None, got {target_spacing!r}")
    return [float(s) for s in target_spacing]


def plans_hash(plans: dict[str, Any]) -> str:
    """A short hash of what decides the preprocessed arrays; stored in every case's properties."""
    text = json.dumps({k: plans[k] for k in _PLANS_HASH_KEYS}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def plan_dataset(raw_cases: Sequence[RawCase], dataset: str, target_spacing: Sequence[float] | None = None,
                 num_processes: int = 0, skip_bad_cases: bool = False) -> dict[str, Any]:
    """Fingerprint every case and make the plan (a JSON-able dict; see the module docstring).

    ``target_spacing`` (z, y, x) mm; None or ``[]``: the median spacing of the dataset. Bad cases
    raise ``ValueError``, or with ``skip_bad_cases`` are left out and listed under ``"bad_cases"``.
    """
    spec, requested = dataset_spec(dataset), _check_spacing(target_spacing)
    if not raw_cases:
        raise ValueError(f"no {dataset} cases to plan")
    low, high = INTENSITY_SAMPLES_PER_CASE
    per_case = int(np.clip(INTENSITY_SAMPLES_TOTAL // len(raw_cases), low, high))
    results, bad = map_cases(partial(_fingerprint, spec=spec, num_samples=per_case), raw_cases, num_processes,
                             f"planning {dataset}", skip_bad_cases)
    if not results:
        raise ValueError(f"every {dataset} case is unusable: " + "; ".join(bad.values()))
    names = sorted(results)
    cases = {name: results[name][0] for name in names}
    samples = np.concatenate([results[name][1] for name in names], axis=1)  # (C, N)
    median_spacing = np.median([cases[n]["spacing"] for n in names], axis=0).tolist()
    target = requested or median_spacing
    resampled = [shape_for_spacing(cases[n]["shape_after_crop"], cases[n]["spacing"], target) for n in names]
    if samples.shape[1] == 0 and spec.normalization == "CT":
        raise ValueError(f"no labelled foreground voxel in any {dataset} case: cannot compute CT intensity statistics")
    plans = {
        "dataset": dataset, "modality": spec.modality, "channel_names": list(spec.channel_names),
        "labels": list(spec.labels), "label_names": list(spec.label_names), "num_classes": len(spec.labels),
        "normalization": [spec.normalization] * len(spec.channel_names),
        "target_spacing": [float(s) for s in target],
        "target_spacing_source": "constant" if requested else "median spacing",
        "requested_target_spacing": requested, "median_spacing": median_spacing,
        "median_shape_after_crop": np.median([cases[n]["shape_after_crop"] for n in names], axis=0).tolist(),
        "median_shape": np.median(resampled, axis=0).tolist(),  # after resampling to target_spacing
        "anisotropy_threshold": ANISOTROPY_THRESHOLD,
        "intensity_properties": [intensity_statistics(s) if s.size else None for s in samples],
        "num_cases": len(cases), "cases": cases, "bad_cases": dict(sorted(bad.items())),
    }
    plans["plans_hash"] = plans_hash(plans)
    return plans


def prepare_plans(path: str | Path, raw_cases: Sequence[RawCase], dataset: str,
                  target_spacing: Sequence[float] | None = None, num_processes: int = 0,
                  overwrite: bool = False, skip_bad_cases: bool = False) -> dict[str, Any]:
    """Plan the dataset and write ``path`` (``plans.json``), or reuse the plan already there.

    An existing plan is reused when it was made for the same dataset, the same requested target
    spacing and exactly these cases, none of them bad, unless ``overwrite``. A plan of another dataset
    raises ``ValueError`` (two datasets must not share a folder).
    """
    path = Path(path)
    previous = read_json(path) if path.is_file() else None
    if previous is not None and previous.get("dataset") != dataset:
        raise ValueError(f"{path} is the plan of {previous.get('dataset')!r}, not {dataset!r}; give {dataset} its "
                         f"own folder, e.g. --output_dir=./data/fullres_{dataset}/train")
    if (previous is not None and not overwrite and not previous.get("bad_cases")
            and previous.get("requested_target_spacing") == _check_spacing(target_spacing)
            and set(previous.get("cases", {})) == {raw.case for raw in raw_cases}):
        print(f"reusing the plan {path} (same cases and settings; --overwrite=True plans again)")
        return previous
    plans = plan_dataset(raw_cases, dataset, target_spacing, num_processes, skip_bad_cases)
    write_json(plans, path)
    return plans
