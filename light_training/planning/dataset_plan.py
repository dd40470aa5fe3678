"""Planning a dataset (nnU-Net's fingerprint + plans): what ``plans.json`` holds, computed from the raw cases
(the file's path, hash and typed reading: :mod:`light_training.plans`).

The plan (``plans.json``, one JSON file read by every later stage) holds the dataset's fingerprint
(per case spacing, shape, shape after cropping, label values; per channel foreground intensity
statistics) and what preprocessing does with it (target spacing, normalisation per channel, resampling
orders and the anisotropy threshold): every value that changes the preprocessed arrays is read from
the plan and is part of its hash. It holds the dataset description too, and so does every checkpoint.
With a GPU memory target it holds the planned network as well (``"network"``: patch size, per-stage
strides and kernels, batch size; :mod:`light_training.planning.network_plan`), also in the hash.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from light_training.io import read_json, write_json
from light_training.plans import plans_hash
from light_training.parallel import map_cases
from light_training.preprocessing.normalization import intensity_statistics
from light_training.preprocessing.preprocess import case_seed, nonzero_bounding_box
from light_training.datasets import DatasetDescription, as_description
from light_training.planning.network_plan import Estimator, plan_network
from light_training.preprocessing.raw_cases import RawCase, read_raw_case
from light_training.preprocessing.resampling import ANISOTROPY_THRESHOLD, shape_for_spacing

__all__ = ["plan_dataset", "prepare_plans"]

INTENSITY_SAMPLES_TOTAL = 10_000_000  # foreground voxels sampled per channel over the whole dataset
INTENSITY_SAMPLES_PER_CASE = (1_000, 100_000)  # ... but at least / at most this many per case


def _fingerprint(raw: RawCase, description: DatasetDescription, num_samples: int) -> tuple[dict[str, Any], np.ndarray]:
    """One case's fingerprint and ``(C, N)`` intensities sampled from its labelled foreground."""
    if raw.label_file is None:
        raise ValueError("planning needs labelled cases (no label file)")
    image, geometry, label = read_raw_case(raw, description)
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


def plan_dataset(raw_cases: Sequence[RawCase], description: DatasetDescription | str,
                 target_spacing: Sequence[float] | None = None, num_processes: int = 0,
                 skip_bad_cases: bool = False, gpu_memory_target_gb: float | None = None,
                 estimator: Estimator | None = None) -> dict[str, Any]:
    """Fingerprint every case and make the plan (a JSON-able dict; see the module docstring).

    ``target_spacing`` (z, y, x) mm; None: the description's, ``[]`` (or None without one in the
    description): the median spacing of the dataset. Bad cases raise ``ValueError``, or with
    ``skip_bad_cases`` are left out and listed under ``"bad_cases"``. ``gpu_memory_target_gb``: plan the
    network for a training step of at most this many GiB (``estimator``: see
    :func:`~light_training.planning.network_plan.plan_network`); None: no ``"network"`` entry.
    """
    description = as_description(description)
    dataset = description.name
    requested = _check_spacing(description.target_spacing if target_spacing is None else target_spacing)
    if not raw_cases:
        raise ValueError(f"no {dataset} cases to plan")
    low, high = INTENSITY_SAMPLES_PER_CASE
    per_case = int(np.clip(INTENSITY_SAMPLES_TOTAL // len(raw_cases), low, high))
    results, bad = map_cases(partial(_fingerprint, description=description, num_samples=per_case), raw_cases, num_processes,
                             f"planning {dataset}", skip_bad_cases)
    if not results:
        raise ValueError(f"every {dataset} case is unusable: " + "; ".join(bad.values()))
    names = sorted(results)
    cases = {name: results[name][0] for name in names}
    samples = np.concatenate([results[name][1] for name in names], axis=1)  # (C, N)
    median_spacing = np.median([cases[n]["spacing"] for n in names], axis=0).tolist()
    target = requested or median_spacing
    resampled = [shape_for_spacing(cases[n]["shape_after_crop"], cases[n]["spacing"], target) for n in names]
    if samples.shape[1] == 0 and "CT" in description.normalization:
        raise ValueError(f"no labelled foreground voxel in any {dataset} case: cannot compute CT intensity statistics")
    plans = {
        "dataset": dataset, "description": description.to_dict(), "channel_names": list(description.channel_names),
        "labels": description.label_values, "label_names": description.label_names,
        "num_classes": description.num_classes, "normalization": list(description.normalization),
        "target_spacing": [float(s) for s in target],
        "target_spacing_source": "constant" if requested else "median spacing",
        "requested_target_spacing": requested, "median_spacing": median_spacing,
        "median_shape_after_crop": np.median([cases[n]["shape_after_crop"] for n in names], axis=0).tolist(),
        "median_shape": np.median(resampled, axis=0).tolist(),  # after resampling to target_spacing
        "resampling": {"image_order": 3, "label": "one-hot linear, argmax", "anisotropy_threshold": ANISOTROPY_THRESHOLD},
        "intensity_properties": [intensity_statistics(s) if s.size else None for s in samples],
        "num_cases": len(cases), "cases": cases, "bad_cases": dict(sorted(bad.items())),
    }
    plans["network"] = None if gpu_memory_target_gb is None else plan_network(
        plans["median_shape"], plans["target_spacing"], len(description.channel_names), description.num_classes,
        gpu_memory_target_gb, len(cases), estimator)
    plans["plans_hash"] = plans_hash(plans)
    return plans


def prepare_plans(path: str | Path, raw_cases: Sequence[RawCase], description: DatasetDescription | str,
                  target_spacing: Sequence[float] | None = None, num_processes: int = 0,
                  overwrite: bool = False, skip_bad_cases: bool = False,
                  gpu_memory_target_gb: float | None = None) -> dict[str, Any]:
    """Plan the dataset and write ``path`` (``plans.json``), or reuse the plan already there.

    An existing plan is reused when it was made for the same dataset, the same requested target
    spacing, the same GPU memory target and exactly these cases, none of them bad, unless ``overwrite``. A plan of another dataset
    raises ``ValueError`` (two datasets must not share a folder).
    """
    description = as_description(description)
    path, dataset = Path(path), description.name
    previous = read_json(path) if path.is_file() else None
    if previous is not None and previous.get("dataset") != dataset:
        raise ValueError(f"{path} is the plan of {previous.get('dataset')!r}, not {dataset!r}; give {dataset} its "
                         f"own folder, e.g. --output_dir=./data/fullres_{dataset}/train")
    if (previous is not None and not overwrite and not previous.get("bad_cases")
            and previous.get("description") == description.to_dict()
            and previous.get("requested_target_spacing")
            == _check_spacing(description.target_spacing if target_spacing is None else target_spacing)
            and set(previous.get("cases", {})) == {raw.case for raw in raw_cases}
            and (previous.get("network") or {}).get("gpu_memory_target_gb") == (
                None if gpu_memory_target_gb is None else float(gpu_memory_target_gb))):
        print(f"reusing the plan {path} (same cases and settings; --overwrite=True plans again)")
        return previous
    plans = plan_dataset(raw_cases, description, target_spacing, num_processes, skip_bad_cases, gpu_memory_target_gb)
    write_json(plans, path)
    return plans
