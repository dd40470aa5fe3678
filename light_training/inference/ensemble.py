"""The models a prediction runs: one checkpoint, a list of them, or the folds of a cross-validation.

``folds = [0, 1, 2, 3, 4]`` means each fold's ``<fold folder>/model/best.pt``
(:func:`light_training.checkpoint.fold_logdir`: fold 0 in ``logdir`` itself, fold k in ``logdir/fold_k``).
``best.pt`` by default, as the original project predicted with its best model and as the held-out-fold
mode has always done here; ``checkpoint_name="final"`` takes the last epoch's weights instead (nnU-Net's
choice: the best epoch is picked on the validation fold, so its held-out score is slightly optimistic).
Models trained with different plans (or on another dataset) cannot be averaged and are refused by name.
A model zip (``model``, :mod:`light_training.inference.model_package`) holds the folds of one run and
predicts exactly as that run's folder does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from light_training.checkpoint import CHECKPOINT_NAMES, build_model, fold_logdir, load_checkpoint
from light_training.datasets import load_dataset
from light_training.inference.model_package import (check_plans, open_model, plans_difference,
                                                    read_member_checkpoint)
from light_training.inference.resume import file_digest
from light_training.io import read_json
from light_training.postprocessing import Postprocessing, read_postprocessing
from light_training.plans import Plans

__all__ = ["checkpoint_paths", "find_folds", "load_predictor", "predictor_from_checkpoint", "check_same_plans",
           "load_ensemble", "Models", "load_models"]


def checkpoint_paths(checkpoint: str | Sequence[str] | None, folds: Sequence[int] | None, logdir: str | Path,
                     checkpoint_name: str = "best") -> list[Path]:
    """The checkpoint files to predict with: ``checkpoint`` (a file or a list of files) when given, else
    ``<fold folder of f>/model/<checkpoint_name>.pt`` for each fold ``f`` of ``folds`` (None: fold 0)."""
    if checkpoint_name not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint_name={checkpoint_name!r}: expected one of {list(CHECKPOINT_NAMES)}")
    if checkpoint:
        if folds:
            raise ValueError(f"set checkpoint ({checkpoint!r}) or folds ({list(folds)!r}), not both")
        if isinstance(checkpoint, str) and checkpoint.startswith("[") and checkpoint.endswith("]"):
            # --checkpoint=[a.pt,b.pt] (not a Python literal without quotes)
            checkpoint = [p.strip().strip("'\"") for p in checkpoint[1:-1].split(",") if p.strip()]
        paths = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(p) for p in checkpoint]
    else:
        paths = [fold_logdir(logdir, f) / "model" / f"{checkpoint_name}.pt" for f in (folds or [0])]
    if len(set(paths)) != len(paths):
        raise ValueError(f"the same checkpoint twice in {[str(p) for p in paths]}")
    return paths


def find_folds(logdir: str | Path, checkpoint_name: str = "best") -> list[int]:
    """The folds of a training run that have ``<fold folder>/model/<checkpoint_name>.pt``, in order."""
    logdir = Path(logdir)
    candidates = [0] + sorted(int(p.name[5:]) for p in logdir.glob("fold_*") if p.name[5:].isdigit())
    return [f for f in candidates if (fold_logdir(logdir, f) / "model" / f"{checkpoint_name}.pt").is_file()]


def load_predictor(checkpoint_path: str | Path, dataset: str | dict | None, device: torch.device
                   ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint alone: ``(model in eval mode on device, checkpoint)``.

    ``ValueError`` when the file is missing, not a checkpoint of ours, or trained on another dataset than
    ``dataset`` (a name, a description, or None: not checked).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}: train first (the training script writes "
                         f"<logdir>/model/best.pt, fold k <logdir>/fold_k/model/best.pt) or set --checkpoint=PATH")
    checkpoint = load_checkpoint(path, map_location="cpu")  # ValueError for a foreign or damaged file
    return predictor_from_checkpoint(checkpoint, str(path), dataset, device), checkpoint


def predictor_from_checkpoint(checkpoint: dict[str, Any], name: str, dataset: str | dict | None,
                              device: torch.device) -> torch.nn.Module:
    """The model of a checkpoint already read (``name`` in messages), checked against ``dataset``."""
    try:
        model = build_model(checkpoint)
    except (KeyError, TypeError, RuntimeError) as err:  # a config or state dict this code cannot rebuild
        raise ValueError(f"{name}: the model cannot be rebuilt from this checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    if dataset is not None:
        expected = load_dataset(dataset).name
        trained_on = Plans.from_json(checkpoint.get("plans", {})).dataset
        if trained_on != expected:
            raise ValueError(f"{name}: this checkpoint was trained on {trained_on!r}, not {expected!r}")
    return model.to(device).eval()


def check_same_plans(names: Sequence[str], checkpoints: Sequence[dict[str, Any]]) -> None:
    """``ValueError`` naming both files when two checkpoints were trained with different plans (another
    dataset, spacing, normalisation or labels): their outputs cannot be averaged."""
    reference = checkpoints[0]["plans"]
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        differ = plans_difference(reference, checkpoint["plans"])
        if differ:
            raise ValueError(f"{name} was trained with other plans than {names[0]} (they differ in {differ}): "
                             f"an ensemble needs models of one plan")


def load_ensemble(paths: Sequence[str | Path], dataset: str | dict | None, device: torch.device
                  ) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """:func:`load_predictor` of every path, all of one plan (:func:`check_same_plans`)."""
    members = [load_predictor(p, dataset, device) for p in paths]
    check_same_plans([str(p) for p in paths], [checkpoint for _, checkpoint in members])
    return members


@dataclass
class Models:
    """The models a prediction runs, loaded: ``members`` ``[(model, checkpoint)]``, how records name them
    (``sources``), their files' sha256 (``digests``, for the run's fingerprint) and the postprocessing rules
    that come with them (None: none, none kept, or switched off)."""
    members: list[tuple[torch.nn.Module, dict[str, Any]]]
    sources: list[str]
    digests: list[str]
    postprocessing: Postprocessing | None


def load_models(model: str | None, checkpoint: str | Sequence[str] | None, folds: Sequence[int] | None,
                logdir: str | Path, checkpoint_name: str, dataset: str, device: torch.device,
                plans_file: Path | None = None, use_postprocessing: bool = True) -> Models:
    """The models of a model zip (``model``), or of checkpoint files / a training run's folds
    (:func:`checkpoint_paths`), with the postprocessing of the zip or of ``<logdir>/postprocessing.json``
    (a list of checkpoint files has none). With ``plans_file`` (the plan of preprocessed cases to predict),
    a zip of another plan is refused. Everything is checked before any scan is read."""
    if model:
        if checkpoint or folds:
            raise ValueError(f"set model ({model!r}) or checkpoint/folds, not both")
        package = open_model(model, load_dataset(dataset).name)
        if plans_file is not None and plans_file.is_file():
            check_plans(package, read_json(plans_file), plans_file)
        checkpoints = [read_member_checkpoint(package, m) for m in package.members]
        members = [(predictor_from_checkpoint(ckpt, name, dataset, device), ckpt)
                   for ckpt, name in zip(checkpoints, package.sources)]
        return Models(members, package.sources, list(package.digests),
                      _active(package.postprocessing, use_postprocessing))
    paths = checkpoint_paths(checkpoint, folds, logdir, checkpoint_name)
    members = load_ensemble(paths, dataset, device)
    rules = read_postprocessing(None if checkpoint else logdir)
    return Models(members, [str(p) for p in paths], [file_digest(p) for p in paths], _active(rules, use_postprocessing))


def _active(rules: Postprocessing | None, use: bool) -> Postprocessing | None:
    return rules if use and rules is not None and rules.active else None
