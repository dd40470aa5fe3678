"""The two CPU halves of predicting one case, run in worker processes beside the network or in the main
process: read + check + preprocess a scan (:func:`load_input`), and restore + write its outputs and its
record (:func:`export_case`). Both are plain functions of picklable arguments, for process pools.

When every scan is checked before the first window (``skip_bad_cases=False``), the check is the reading:
:func:`check_input` reads, checks and preprocesses a scan once and leaves the result in a folder, from
which :func:`take_checked_input` takes it for the network (and deletes it), so no scan is read twice."""
from __future__ import annotations

import dataclasses
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from light_training.datasets import DatasetDescription
from light_training.inference.prediction import save_prediction
from light_training.inference.preview import preview_path, write_preview
from light_training.inference.resume import write_record
from light_training.postprocessing import Postprocessing
from light_training.plans import Plans
from light_training.preprocessing.preprocess import load_case, preprocess_case
from light_training.preprocessing.raw_cases import RawCase, read_raw_case

__all__ = ["CaseInput", "ExportRun", "CasePrediction", "read_scan", "load_input", "check_input", "take_checked_input",
           "export_case", "remove_stale_temporaries"]


@dataclass
class CaseInput:
    """A case ready for the network: ``image`` ``(C, Z, Y, X)`` float32 on the preprocessed grid, the label
    ``(Z, Y, X)`` (held-out mode, for the preview) or None, the preprocessing properties, and the reading's
    warnings; ``seconds`` per step it took ("read + preprocess"; "load checked input" when it was read by
    the up-front check)."""
    name: str
    image: np.ndarray
    label: np.ndarray | None
    properties: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportRun:
    """What every case of one prediction run shares, for :func:`export_case`: the folder and which files it
    writes, the plan and the dataset description (label values, spacing, names), the run's fingerprint (in
    every record) and the postprocessing applied to each label map (not to the probabilities)."""
    save_dir: str
    save_probabilities: bool
    save_uncertainty: bool
    save_preview: bool
    plans: Plans
    description: DatasetDescription
    fingerprint: str
    postprocessing: Postprocessing | None = None


@dataclass
class CasePrediction:
    """One case as the network left it for :func:`export_case`: probabilities ``(K, z, y, x)`` and uncertainty
    ``(z, y, x)`` (or None) on the preprocessed grid, as numpy arrays; the files it must write; its record's
    source stamp, checkpoints (the members that predicted it), notes and the ``seconds`` of each step
    ("read + preprocess", "network"; "restore + write" is added when written)."""
    case: CaseInput
    probabilities: np.ndarray
    uncertainty: np.ndarray | None
    outputs: list[Path]
    stamp: list[list]
    checkpoints: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def read_scan(raw: RawCase, description: DatasetDescription, nonfinite: str) -> tuple[np.ndarray, Any, list[str]]:
    """Read a scan to predict; ``(image, geometry, warnings)``. ValueError names the file and the problem."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, geometry, _ = read_raw_case(raw, description, replace_nonfinite=nonfinite == "replace")
    return image, geometry, [str(w.message) for w in caught]


def load_input(name: str, raw: RawCase | None, description: DatasetDescription, plans: Plans,
               nonfinite: str, data_dir: str | None) -> CaseInput:
    """A raw scan read once, checked and preprocessed (``raw`` given), or a preprocessed case of
    ``data_dir`` (held-out mode)."""
    start = time.perf_counter()
    if raw is not None:
        image, geometry, notes = read_scan(raw, description, nonfinite)
        image, _, properties = preprocess_case(image, geometry, None, plans.to_json(), case=name)
        image, label = np.asarray(image, dtype=np.float32), None
    else:
        image, label, properties = load_case(data_dir, name)  # read-only memory maps: copied
        image, label, notes = np.array(image, dtype=np.float32), None if label is None else np.array(label), []
    return CaseInput(name, image, label, properties, notes, {"read + preprocess": time.perf_counter() - start})


def _checked_paths(folder: str | Path, name: str) -> tuple[Path, Path]:
    return Path(folder) / f"{name}_image.npy", Path(folder) / f"{name}_input.pkl"


def check_input(item: tuple[str, RawCase], description: DatasetDescription, plans: Plans, nonfinite: str,
                folder: str | Path) -> float:
    """Read, check and preprocess the scan of ``item`` = ``(name, raw)`` once (:func:`load_input`) and leave the
    result in ``folder`` for :func:`take_checked_input`; the seconds it took. ValueError names the file and
    the problem (nothing is left then)."""
    name, raw = item
    case = load_input(name, raw, description, plans, nonfinite, None)
    image_path, rest_path = _checked_paths(folder, name)
    np.save(image_path, case.image)
    with open(rest_path, "wb") as file:  # written last: its presence says the image is complete
        pickle.dump(dataclasses.replace(case, image=case.image[:0]), file)
    return case.seconds["read + preprocess"]


def take_checked_input(name: str, folder: str | Path) -> CaseInput:
    """The case that :func:`check_input` left in ``folder``, removed from there."""
    start = time.perf_counter()
    image_path, rest_path = _checked_paths(folder, name)
    with open(rest_path, "rb") as file:
        case = pickle.load(file)
    image = np.load(image_path)
    image_path.unlink()
    rest_path.unlink()
    return dataclasses.replace(case, image=image,
                               seconds={**case.seconds, "load checked input": time.perf_counter() - start})


def export_case(prediction: CasePrediction, run: ExportRun) -> str:
    """Restore ``prediction`` onto the source grid, write its files and then its record; the case."""
    case, start = prediction.case, time.perf_counter()
    save_prediction(prediction.probabilities, prediction.uncertainty, case.properties, run.plans.labels,
                    run.save_dir, run.save_probabilities, run.save_uncertainty, run.postprocessing)
    if run.save_preview:
        _write_preview(prediction, run)
    seconds = {**prediction.seconds, "restore + write": time.perf_counter() - start}
    rules = run.postprocessing.rules() if run.postprocessing is not None else None
    write_record(run.save_dir, case.name, run.fingerprint, prediction.stamp, prediction.outputs,
                 prediction.checkpoints, prediction.notes, seconds, rules)
    return case.name


def _write_preview(prediction: CasePrediction, run: ExportRun) -> Path:
    """``<case>_preview.png`` on the preprocessed grid (the scan as the network saw it)."""
    plans, case = run.plans, prediction.case
    values = np.asarray(plans.labels, dtype=np.uint8)
    prediction_map = values[prediction.probabilities.argmax(0)]
    return write_preview(preview_path(run.save_dir, case.name), case.image, prediction_map,
                         uncertainty=prediction.uncertainty,
                         ground_truth=None if case.label is None else values[np.asarray(case.label)],
                         spacing=plans.target_spacing, label_names=dict(zip(plans.labels, plans.label_names)),
                         airway_mip=run.description.metrics == "aiib2023")


def remove_stale_temporaries(save_dir: str | Path, cases: Sequence[str]) -> list[Path]:
    """Remove the temporary files (``light_training.io.atomic_path``'s ``.<name>.*.tmp*``) that a killed run
    left for ``cases`` in ``save_dir``; the removed paths. Other cases' (another rank's, running) are kept."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    stems = {c + suffix for c in cases for suffix in ("", "_uncertainty", "_preview", "_record")}
    removed = []
    for path in save_dir.glob(".*.tmp*"):
        if path.name[1:].split(".")[0] in stems:  # ".<file stem>.<random>.tmp<suffixes>"
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
