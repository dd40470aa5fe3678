"""Self-describing checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading one
never runs code. It holds everything needed to rebuild the model (``model_class``, ``model_config``,
``model``), to preprocess new images like the training data (``plans``), to know how it was trained
(``config``: the training script's constants), and to resume training exactly (``epoch``, ``best_dice``,
``optimizer``, ``scheduler``, ``grad_scaler``, ``rng``, ``history``).
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from diffunet import network_from_config
from light_training.io import atomic_path
from light_training.release import is_release_state

__all__ = ["CHECKPOINT_NAMES", "save_checkpoint", "load_checkpoint", "read_checkpoint", "build_model", "rng_state",
           "set_rng_state", "fold_logdir", "archive_previous_run"]

CHECKPOINT_NAMES = ("latest", "best", "final")  # <logdir>/model/<name>.pt
_REQUIRED_KEYS = ("model_class", "model_config", "model")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` under a temporary name, then rename it to ``path``: a crash
    (or a kill) while writing leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: tensors and plain values only).

    Raises ValueError naming the file when it is missing, unreadable or not a checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    return read_checkpoint(path, str(path), map_location)


def read_checkpoint(source: str | Path | BinaryIO, name: str, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """:func:`load_checkpoint` of a path or an open binary file (e.g. a member of a model zip) that error
    messages call ``name``."""
    try:
        checkpoint = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, ...
        raise ValueError(f"{name}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if is_release_state(checkpoint):
        raise ValueError(f"{name}: a state dict of the original Diff-UNet release, not a checkpoint of this project; "
                         f"convert it first: python tools/convert_release.py --source={name} --output=converted.pt")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in _REQUIRED_KEYS):
        raise ValueError(f"{name}: not a checkpoint of this project (expected the keys {list(_REQUIRED_KEYS)})")
    return checkpoint


def build_model(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """The model of a checkpoint, rebuilt from ``model_class`` ("DiffUNet" or "PlainUNet") and
    ``model_config`` with its weights (strictly: every key must match), in eval mode on the CPU."""
    model = network_from_config(checkpoint.get("model_class"), checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def rng_state() -> dict[str, Any]:
    """The state of the torch (CPU and CUDA), numpy and Python generators, as tensors and lists only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where as many devices are present)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def fold_logdir(logdir: str | Path, fold: int) -> Path:
    """The folder of fold ``fold``'s run: ``logdir`` itself for fold 0 (the original's documented
    ``./logs/diffunet/model/best.pt``), ``<logdir>/fold_<k>`` for the others, so five folds trained with
    one ``logdir`` sit side by side (and :func:`archive_previous_run` of fold 0 leaves them alone)."""
    if not isinstance(fold, int) or isinstance(fold, bool) or fold < 0:
        raise ValueError(f"fold={fold!r}: expected a fold number >= 0")
    return Path(logdir) if fold == 0 else Path(logdir) / f"fold_{fold}"


def archive_previous_run(logdir: str | Path) -> Path | None:
    """Move an earlier run's checkpoints, event files and plots out of the way before a fresh start.

    They go to ``<logdir>/previous_runs/<date-time>/`` (tensorboard still shows them there as a run of
    their own), so starting again without ``resume`` never destroys a trained model. Returns that
    folder, or None when ``logdir`` holds no earlier run.
    """
    logdir = Path(logdir)
    found = [p for p in logdir.glob("*") if p.name == "model" or p.name.startswith("events.out.tfevents")
             or p.name in ("progress.png",) or p.name.endswith("_config.json")] if logdir.is_dir() else []
    if not any((logdir / "model" / f"{n}.pt").is_file() for n in CHECKPOINT_NAMES) and not any(
            p.name.startswith("events.out") for p in found):
        return None
    target = logdir / "previous_runs" / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "_")
    target.mkdir(parents=True)
    for path in found:
        shutil.move(str(path), str(target / path.name))
    return target
