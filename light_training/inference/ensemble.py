"""The models a prediction runs: one checkpoint, a list of them, or the folds of a cross-validation.

``folds = [0, 1, 2, 3, 4]`` means each fold's ``<fold folder>/model/best.pt``
(:func:`light_training.checkpoint.fold_logdir`: fold 0 in ``logdir`` itself, fold k in ``logdir/fold_k``).
``best.pt`` by default, as the original project predicted with its best model and as the held-out-fold
mode has always done here; ``checkpoint_name="final"`` takes the last epoch's weights instead (nnU-Net's
choice: the best epoch is picked on the validation fold, so its held-out score is slightly optimistic).
Models trained with different plans (or on another dataset) cannot be averaged and are refused by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from light_training.checkpoint import CHECKPOINT_NAMES, build_model, fold_logdir, load_checkpoint
from light_training.datasets import load_dataset

__all__ = ["checkpoint_paths", "load_predictor", "load_ensemble"]


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


def load_predictor(checkpoint_path: str | Path, dataset: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint alone: ``(model in eval mode on device, checkpoint)``.

    ``ValueError`` when the file is missing, not a checkpoint of ours, or trained on another dataset.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}: train first (the training script writes "
                         f"<logdir>/model/best.pt, fold k <logdir>/fold_k/model/best.pt) or set --checkpoint=PATH")
    checkpoint = load_checkpoint(path, map_location="cpu")  # ValueError for a foreign or damaged file
    try:
        model = build_model(checkpoint)
    except (KeyError, TypeError, RuntimeError) as err:  # a config or state dict this code cannot rebuild
        raise ValueError(f"{path}: the model cannot be rebuilt from this checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    expected = load_dataset(dataset).name
    trained_on = checkpoint.get("plans", {}).get("dataset")
    if trained_on != expected:
        raise ValueError(f"{path}: this checkpoint was trained on {trained_on!r}, not {expected!r}")
    return model.to(device).eval(), checkpoint


def load_ensemble(paths: Sequence[str | Path], dataset: str, device: torch.device
                  ) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """:func:`load_predictor` of every path; ``ValueError`` naming both files when two were trained with
    different plans (another dataset, spacing, normalisation or labels): their outputs cannot be averaged."""
    members = [load_predictor(p, dataset, device) for p in paths]
    reference = members[0][1]["plans"]
    for path, (_, checkpoint) in zip(paths[1:], members[1:]):
        if checkpoint["plans"] != reference:
            differ = sorted(k for k in set(reference) | set(checkpoint["plans"])
                            if reference.get(k) != checkpoint["plans"].get(k))
            raise ValueError(f"{path} was trained with other plans than {paths[0]} (they differ in {differ}): "
                             f"an ensemble needs models of one plan")
    return members
