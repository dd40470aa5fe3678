"""Score a folder of predictions against their ground truths: pair the files, compute a per-case metric
in worker processes, write the table (CSV) and its summary (JSON), and format it for printing.

A case metric is a picklable function ``metric(prediction (Z, Y, X) uint8, ground_truth (Z, Y, X) uint8,
spacing (z, y, x) mm) -> {column: value}`` such as :func:`light_training.evaluation.metrics_aiib.aiib_case_metrics`
or :func:`light_training.evaluation.metrics_brats.brats_case_metrics`. An optional extra per-case function
``extra(pair, prediction, ground_truth, geometry) -> {column: value}`` adds columns computed from more than
the two label maps (files beside the prediction, such as ``<case>_uncertainty.nii.gz``: see
:mod:`light_training.evaluation.uncertainty`).

Every case that can be scored is; the others are listed with the reason (``Evaluation.unscored`` and the
summary JSON's ``"unscored"``): no prediction (``missing_predictions="skip"``), an unreadable or invalid
file, a prediction not on its ground truth's grid, or a case the metric refuses (a ``ValueError`` of the
metric, e.g. an empty AIIB ground truth).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from light_training.io import Geometry, ImageReadError, atomic_path, read_label, write_json
from light_training.parallel import map_cases

__all__ = ["MISSING_PREDICTION_POLICIES", "NO_PREDICTION", "UNCERTAINTY_SUFFIX", "CasePair", "Evaluation",
           "case_sort_key", "case_listing", "format_unscored", "nifti_cases", "pair_cases", "read_geometry",
           "score_pair", "evaluate_pairs", "summarize", "write_csv", "format_table", "evaluate_folder"]

MISSING_PREDICTION_POLICIES = ("skip", "empty", "error")
NO_PREDICTION = "no prediction"  # the reason given for a ground-truth case skipped for want of a prediction
SUMMARY_KEYS = ("unscored", "scored_as_empty")  # the summary JSON's keys beside the columns
UNCERTAINTY_SUFFIX = "_uncertainty"  # <case>_uncertainty.nii.gz lie next to the predictions
IGNORED_SUFFIXES = (UNCERTAINTY_SUFFIX,)  # files beside the predictions that are no predictions
CaseMetric = Callable[[np.ndarray, np.ndarray, Sequence[float]], Mapping[str, float]]


@dataclass(frozen=True)
class CasePair:
    """One case to score; ``prediction`` is None for a case scored as an empty prediction."""
    case: str
    prediction: Path | None
    ground_truth: Path


CaseExtra = Callable[[CasePair, np.ndarray, np.ndarray, Geometry], Mapping[str, float]]


@dataclass
class Evaluation:
    """What :func:`evaluate_folder` computed and wrote."""
    rows: list[dict[str, Any]]  # one per scored case: {"case": ..., column: value, ...}
    summary: dict[str, dict[str, float | None]]  # {column: {"mean", "std", "median"}}
    csv_path: Path
    summary_path: Path
    columns: tuple[str, ...] = ()  # the case metric's columns, then the extra ones
    unscored: dict[str, str] = field(default_factory=dict)  # {case: reason}, natural case order
    scored_as_empty: list[str] = field(default_factory=list)  # ground-truth cases without prediction, scored empty


def case_sort_key(case: str) -> list[Any]:
    """Natural order: ``AIIB23_2`` before ``AIIB23_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", case)]


def nifti_cases(folder: str | Path) -> dict[str, Path]:
    """``{case: path}`` of the ``<case>.nii.gz`` (or ``.nii``) files of a folder, in natural case order.

    Skips ``<case>_uncertainty.nii.gz``, hidden and temporary files and anything that is not NIfTI
    (probabilities ``.npz``, JSON). A missing folder raises ``ValueError`` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (expected <case>.nii.gz files)")
    cases = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        for suffix in (".nii.gz", ".nii"):
            if path.name.endswith(suffix):
                case = path.name[: -len(suffix)]
                if not case.endswith(IGNORED_SUFFIXES):
                    cases[case] = path
                break
    return {case: cases[case] for case in sorted(cases, key=case_sort_key)}


def case_listing(cases: Iterable[str], limit: int = 10) -> str:
    """``"a, b, c"``, or the first ``limit`` cases and the count when there are more (a mapping: its keys)."""
    cases = list(cases)
    shown = ", ".join(cases[:limit])
    return shown + (f", ... ({len(cases)} in all)" if len(cases) > limit else "")


def format_unscored(unscored: Mapping[str, str]) -> str:
    """One line ``"  case: reason"`` per unscored case."""
    return "\n".join(f"  {case}: {reason}" for case, reason in unscored.items())


def pair_cases(predictions: Mapping[str, Path], ground_truths: Mapping[str, Path],
               missing_predictions: str = "skip") -> tuple[list[CasePair], list[str]]:
    """Pair predictions with ground truths by case id.

    A prediction without ground truth is an error (it cannot be scored). A ground truth without
    prediction is, by ``missing_predictions``: ``"skip"`` left out (returned in the second list),
    ``"empty"`` scored as an empty prediction, ``"error"`` an error. Raises ``ValueError`` listing the cases.

    Returns:
        ``(pairs in natural case order, ground-truth cases without prediction)``.
    """
    if missing_predictions not in MISSING_PREDICTION_POLICIES:
        raise ValueError(f"missing_predictions={missing_predictions!r}; expected one of {MISSING_PREDICTION_POLICIES}")
    orphans = [case for case in predictions if case not in ground_truths]
    if orphans:
        raise ValueError(f"{len(orphans)} prediction(s) without ground truth: {case_listing(orphans)} "
                         f"(predictions in {Path(predictions[orphans[0]]).parent})")
    missing = sorted((case for case in ground_truths if case not in predictions), key=case_sort_key)
    if missing and missing_predictions == "error":
        raise ValueError(f"{len(missing)} ground-truth case(s) without prediction: {case_listing(missing)} "
                         f"(use missing_predictions='skip' or 'empty' to go on)")
    cases = sorted(set(predictions) | (set(missing) if missing_predictions == "empty" else set()), key=case_sort_key)
    if not cases:
        raise ValueError("no case to score: no prediction found")
    pairs = [CasePair(case, predictions.get(case), Path(ground_truths[case])) for case in cases]
    return pairs, missing


def read_geometry(path: str | Path) -> Geometry:
    """The geometry of an image file from its header (voxels are not read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if not Path(path).is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{path}: unreadable image header ({str(err).strip().splitlines()[-1]})") from None
    if reader.GetDimension() != 3:
        raise ImageReadError(f"{path}: expected a 3-D image, got {reader.GetDimension()}-D")
    return Geometry.of(reader)  # the reader answers the same getters as an image


def score_pair(pair: CasePair, case_metric: CaseMetric, columns: Sequence[str], extra_metric: CaseExtra | None = None,
               extra_columns: Sequence[str] = ()) -> tuple[dict[str, Any] | None, str | None]:
    """Read one pair and score it (runs in a worker process).

    Returns ``(row, None)``, or ``(None, reason)`` when the case cannot be scored: a file unreadable or not a
    3-D label map, a prediction not on the ground truth's grid (checked on the headers, before the voxels are
    read), or a ``ValueError`` of ``case_metric`` or ``extra_metric`` (its message is the reason).
    """
    try:
        gt_geometry = read_geometry(pair.ground_truth)
        if pair.prediction is not None:
            why = gt_geometry.mismatch(read_geometry(pair.prediction))
            if why is not None:
                return None, (f"prediction not on the ground truth's grid: {why} "
                              f"({pair.prediction} vs {pair.ground_truth})")
        ground_truth, geometry = read_label(pair.ground_truth)
        prediction = np.zeros_like(ground_truth) if pair.prediction is None else read_label(pair.prediction)[0]
    except ImageReadError as err:
        return None, str(err)
    try:
        values = dict(case_metric(prediction, ground_truth, geometry.spacing))
        if extra_metric is not None:
            values.update(extra_metric(pair, prediction, ground_truth, geometry))
    except ValueError as err:
        return None, str(err)
    return {"case": pair.case, **{column: values[column] for column in (*columns, *extra_columns)}}, None


def evaluate_pairs(pairs: Sequence[CasePair], case_metric: CaseMetric, columns: Sequence[str], num_processes: int = 1,
                   desc: str = "scoring", extra_metric: CaseExtra | None = None, extra_columns: Sequence[str] = ()
                   ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Score every pair (``num_processes`` forked workers; 0 or 1: in this process), with a progress bar.

    Returns ``(rows, unscored)``: one row ``{"case": ..., column: value, ...}`` per scored pair, in the order
    of ``pairs``, and ``{case: reason}`` for the pairs that could not be scored (:func:`score_pair`).
    """
    score = partial(score_pair, case_metric=case_metric, columns=tuple(columns), extra_metric=extra_metric,
                    extra_columns=tuple(extra_columns))
    results, failures = map_cases(score, pairs, num_processes, desc, skip_bad_cases=True)
    rows, unscored = [], {}
    for pair in pairs:
        if pair.case in failures:  # a ValueError outside score_pair's own checks
            unscored[pair.case] = failures[pair.case].removeprefix(f"{pair.case}: ")
            continue
        row, reason = results[pair.case]
        if row is None:
            unscored[pair.case] = reason
        else:
            rows.append(row)
    return rows, unscored


def summarize(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``{column: {"mean", "std", "median"}}`` over the rows; NaN values are skipped (std with ddof=0).

    A column without any number gets ``None`` for each statistic (JSON ``null``).
    """
    summary = {}
    for column in columns:
        values = np.array([float(row[column]) for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            summary[column] = {"mean": None, "std": None, "median": None}
        else:
            summary[column] = {"mean": float(values.mean()), "std": float(values.std()),
                               "median": float(np.median(values))}
    return summary


def _csv_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest text that reads back exactly; "nan" for NaN
    return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str | Path) -> None:
    """Write ``case`` plus ``columns``, one row per case, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", *columns])
            for row in rows:
                writer.writerow([row["case"], *(_csv_value(row[column]) for column in columns)])


def _cell(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.{decimals}f}"


def _decimals(rows: Sequence[Mapping[str, Any]], column: str) -> int:
    """4 decimals for ratios, 2 for columns with values of 10 or more (distances) or of whole counts."""
    values = [row[column] for row in rows]
    if all(isinstance(v, (int, np.integer)) for v in values):
        return 2
    finite = [abs(float(v)) for v in values if not math.isnan(float(v))]
    return 2 if finite and max(finite) >= 10 else 4


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                 summary: Mapping[str, Mapping[str, float | None]], headers: Sequence[str] | None = None) -> str:
    """A plain-text table: one line per case, then the mean, std and median lines.

    ``headers`` replaces the column names in the header line (same length as ``columns``).
    """
    headers = list(columns if headers is None else headers)
    decimals = {column: _decimals(rows, column) for column in columns}
    lines = [["case", *headers]]
    lines += [[str(row["case"]), *(_cell(row[c], decimals[c]) for c in columns)] for row in rows]
    for statistic in ("mean", "std", "median"):
        lines.append([statistic, *(_cell(summary[c][statistic], decimals[c]) for c in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(len(rows) + 2, "-" * len(text[0]))
    return "\n".join(text)


def evaluate_folder(predictions: Mapping[str, Path], ground_truths: Mapping[str, Path], case_metric: CaseMetric,
                    columns: Sequence[str], output_dir: str | Path, name: str, missing_predictions: str = "skip",
                    num_processes: int = 1, strict: bool = False, extra_metric: CaseExtra | None = None,
                    extra_columns: Sequence[str] = ()) -> Evaluation:
    """Pair, score every case that can be scored, and write ``<output_dir>/<name>.csv`` and
    ``<output_dir>/<name>_summary.json`` (each atomically).

    The CSV has ``case``, ``columns``, ``extra_columns``, one row per scored case. The summary JSON has
    ``{column: {"mean", "std", "median"}}`` for every column, plus ``"unscored": {case: reason}`` and
    ``"scored_as_empty": [case, ...]``.

    Args:
        predictions, ground_truths: ``{case: file}`` (:func:`nifti_cases`).
        case_metric, columns: the per-case metric and the columns it returns that go into the table.
        missing_predictions: a ground truth without prediction is ``"skip"``: listed as unscored (reason
            ``"no prediction"``), ``"empty"``: scored as an empty prediction, ``"error"``: an error.
        strict: a case that has a prediction (or is scored as empty) but cannot be scored is an error
            instead of a line in ``unscored``; cases skipped for want of a prediction follow
            ``missing_predictions``.
        extra_metric, extra_columns: an optional extra per-case function (module docstring) and its columns.

    Raises:
        ValueError naming files or cases: a prediction without ground truth, a missing prediction with
        ``missing_predictions="error"``, any unscorable case with ``strict``, or nothing scorable at all
        (every reason listed). Nothing is written then.
    """
    all_columns = (*columns, *extra_columns)
    clashes = sorted({c for c in all_columns if all_columns.count(c) > 1 or c in SUMMARY_KEYS or c == "case"})
    if clashes:
        raise ValueError(f"column names {clashes} repeat or clash with the table's 'case' or the summary's "
                         f"{list(SUMMARY_KEYS)}")
    pairs, missing = pair_cases(predictions, ground_truths, missing_predictions)
    rows, failed = evaluate_pairs(pairs, case_metric, columns, num_processes, f"scoring {name}", extra_metric,
                                  extra_columns)
    if strict and failed:
        raise ValueError(f"{len(failed)} case(s) cannot be scored (strict):\n{format_unscored(failed)}")
    skipped = missing if missing_predictions == "skip" else []
    unscored = {case: failed.get(case, NO_PREDICTION) for case in sorted([*failed, *skipped], key=case_sort_key)}
    if not rows:
        raise ValueError(f"no case could be scored:\n{format_unscored(unscored)}")
    summary = summarize(rows, all_columns)
    scored_as_empty = missing if missing_predictions == "empty" else []
    output_dir = Path(output_dir)
    csv_path, summary_path = output_dir / f"{name}.csv", output_dir / f"{name}_summary.json"
    write_csv(rows, all_columns, csv_path)
    write_json({**summary, "unscored": unscored, "scored_as_empty": scored_as_empty}, summary_path)
    return Evaluation(rows, summary, csv_path, summary_path, all_columns, unscored, scored_as_empty)
