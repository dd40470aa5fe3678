"""The best configuration on cross-validation (nnU-Net's ``find_best_configuration``): trained runs and the
ensembles of pairs of them, ranked by the dataset's headline metric on their held-out predictions.

A run is a folder of held-out predictions (the prediction script in held-out mode: every case by the fold
that did not see it), with ``<case>.npz`` probabilities for the ensembles (``--save_probabilities=True``).
An ensemble of runs averages their probabilities case by case and takes the argmax, as predicting with
all their checkpoints at once does. Every configuration is scored on the cases that all runs predicted.

Headline metric (the mean of these columns' means; ``metric`` overrides it):

- AIIB2023: IoU, DLR and DBR (the challenge's overlap and topology scores; precision and leakages are
  kept out: a prediction can raise them by predicting less);
- BraTS2023: the lesion-wise Dice of WT, TC and ET (the challenge's ranking metric);
- a dataset of one's own (``dice_hd95``): the Dice of every evaluated label and region.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from light_training.datasets import DatasetDescription
from light_training.io import read_volume, write_volume

__all__ = ["Configuration", "headline_columns", "headline_score", "pairs_of", "ensemble_probabilities",
           "rank_configurations"]


@dataclass
class Configuration:
    """One candidate: ``name`` (a run, or runs joined by ``+``), the runs it is made of, its score and summary."""
    name: str
    runs: tuple[str, ...]
    score: float = float("nan")
    summary: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": list(self.runs), "score": self.score}


def headline_columns(description: DatasetDescription, columns: Sequence[str]) -> list[str]:
    """The columns whose mean ranks configurations of this dataset (module docstring)."""
    if description.metrics == "aiib2023":
        wanted = ["IoU", "DLR", "DBR"]
    elif description.metrics == "brats2023":
        wanted = [c for c in columns if c.endswith("_LesionWise_Dice")]
    else:
        wanted = [c for c in columns if c.endswith("_Dice")]
    missing = [c for c in wanted if c not in columns]
    if missing or not wanted:
        raise ValueError(f"the {description.metrics} table lacks the headline column(s) {missing or wanted}")
    return wanted


def headline_score(summary: Mapping[str, Any], columns: Sequence[str]) -> float:
    """The mean of the columns' means in a metrics summary (``{column: {"mean": ...}}``); NaN means skipped."""
    values = [summary[c]["mean"] for c in columns if summary.get(c, {}).get("mean") is not None]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def pairs_of(runs: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of runs, in the runs' order (nnU-Net's ensembles of two)."""
    return list(itertools.combinations(runs, 2))


def ensemble_probabilities(folders: Sequence[Path], case: str, output: Path) -> Path:
    """Average ``<folder>/<case>.npz`` probabilities ``(K, Z, Y, X)`` over ``folders``, take the argmax (label
    values 0..K-1) and write ``<output>/<case>.nii.gz`` on the geometry of the first folder's ``<case>.nii.gz``.
    ``ValueError`` naming the file when one is missing or the shapes differ."""
    total = None
    for folder in folders:
        path = folder / f"{case}.npz"
        if not path.is_file():
            raise ValueError(f"{path}: no probabilities (predict the run with --save_probabilities=True, or set "
                             f"--ensembles=False)")
        with np.load(path) as data:
            probabilities = data["probabilities"].astype(np.float64)
        if total is not None and probabilities.shape != total.shape:
            raise ValueError(f"{path}: probabilities of shape {probabilities.shape}, {folders[0]}'s are "
                             f"{total.shape}")
        total = probabilities if total is None else total + probabilities
    _, geometry = read_volume(folders[0] / f"{case}.nii.gz")
    path = output / f"{case}.nii.gz"
    write_volume(total.argmax(0).astype(np.uint8), geometry, path)
    return path


def rank_configurations(configurations: Sequence[Configuration]) -> list[Configuration]:
    """Best first by score; on a tie the configuration of fewer runs (cheaper to predict) first; NaN last."""
    return sorted(configurations, key=lambda c: (np.isnan(c.score), -np.nan_to_num(c.score), len(c.runs)))
