"""A trained model as one file (nnU-Net's ``export_model_to_zip``): the folds' checkpoints and what describes
them, in a zip that any clone of this project predicts with (``--model=FILE.zip``).

Members::

    model.json                    dataset, classes, channels, spacing, preset, precision, project version,
                                  folds, and the sha256 of every other member (written last)
    plans.json                    the plan every fold was trained with (and preprocessing follows)
    dataset.json                  the dataset description (the plan's)
    fold_<k>/checkpoint.pt        fold k's checkpoint, byte for byte the training folder's file
    fold_<k>/training_config.json the training constants of fold k
    postprocessing.json           the rules chosen on cross-validation, where they were determined
    crossval/<file>               the cross-validation metrics, where they exist

:func:`open_model` refuses a zip that is not one of these, whose members do not match their sha256 (a
damaged or edited file), or of another dataset, naming the file and what is wrong; :func:`check_plans`
one of another plan than the preprocessed cases to predict. Checkpoints are read from the zip itself
(``torch.load(weights_only=True)``), nothing is unpacked.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from light_training import __version__
from light_training.checkpoint import read_checkpoint
from light_training.io import atomic_path
from light_training.postprocessing import POSTPROCESSING_FILE, Postprocessing
from light_training.plans import Plans

__all__ = ["MODEL_JSON", "FORMAT", "CROSSVAL_FOLDER", "ModelPackage", "plans_difference", "model_info",
           "export_model", "open_model", "check_plans", "read_member_checkpoint"]

MODEL_JSON = "model.json"
FORMAT = 1  # model.json's "format": what open_model can read
CROSSVAL_FOLDER = "crossval"  # <logdir>/crossval/: the metrics of the held-out predictions (the metrics scripts')


@dataclass(frozen=True)
class ModelPackage:
    """An opened and verified model zip: ``info`` (model.json), ``plans``, the checkpoint members in fold
    order with their sha256, and the postprocessing rules it carries (None: none)."""
    path: Path
    info: dict[str, Any]
    plans: dict[str, Any]
    members: tuple[str, ...]
    digests: tuple[str, ...]
    postprocessing: Postprocessing | None

    @property
    def sources(self) -> list[str]:
        """How records name the checkpoints: ``FILE.zip:fold_<k>/checkpoint.pt``."""
        return [f"{self.path}:{m}" for m in self.members]


def plans_difference(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys in which two plans differ (none: the same plan)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def model_info(checkpoints: Sequence[dict[str, Any]], folds: Sequence[int], checkpoint_name: str,
               digests: dict[str, str]) -> dict[str, Any]:
    """The content of ``model.json`` for these checkpoints (one plan) and member digests."""
    plans, config = Plans.from_json(checkpoints[0]["plans"]), checkpoints[0].get("config", {})
    names = plans.label_names or [str(v) for v in plans.labels]
    return {"format": FORMAT, "project_version": __version__, "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
            "dataset": plans.dataset, "classes": dict(zip(names, plans.labels)),
            "channels": plans.channel_names, "spacing": plans.target_spacing,
            "model_class": checkpoints[0]["model_class"], "preset": config.get("model_preset"),
            "model_variant": config.get("model_variant"), "precision": config.get("precision"),
            "patch_size": config.get("patch_size"), "checkpoint_name": checkpoint_name, "folds": list(folds),
            "sha256": digests}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_model(paths: Sequence[str | Path], checkpoints: Sequence[dict[str, Any]], folds: Sequence[int],
                 output: str | Path, checkpoint_name: str = "best", postprocessing: Postprocessing | None = None,
                 metrics: Sequence[str | Path] = ()) -> Path:
    """Write the model zip ``output`` (atomically) from the checkpoint files ``paths`` (already read and
    checked as ``checkpoints``, one plan), fold ``folds[i]`` being ``paths[i]``; with the postprocessing
    rules and the cross-validation metrics files where given."""
    if len(set(folds)) != len(folds):
        raise ValueError(f"folds {list(folds)}: each fold once")
    plans = checkpoints[0]["plans"]
    members: dict[str, bytes] = {}
    for path, checkpoint, fold in zip(paths, checkpoints, folds):
        members[f"fold_{fold}/checkpoint.pt"] = Path(path).read_bytes()
        members[f"fold_{fold}/training_config.json"] = _json(checkpoint.get("config", {}))
    members["plans.json"] = _json(plans)
    if plans.get("description"):
        members["dataset.json"] = _json(plans["description"])
    if postprocessing is not None:
        members[POSTPROCESSING_FILE] = _json(postprocessing.to_dict())
    for path in map(Path, metrics):
        members[f"{CROSSVAL_FOLDER}/{path.name}"] = path.read_bytes()
    digests = {name: _digest(data) for name, data in members.items()}
    members[MODEL_JSON] = _json(model_info(checkpoints, folds, checkpoint_name, digests))
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, data in members.items():
            # checkpoints stored as they are (torch's own zip), the JSON files compressed
            method = zipfile.ZIP_STORED if name.endswith(".pt") else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return Path(output)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def open_model(path: str | Path, dataset_name: str) -> ModelPackage:
    """Open and verify a model zip for dataset ``dataset_name``; ``ValueError`` naming the file and what is
    wrong (missing, not a zip, no model.json, a member missing or damaged, another dataset)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file (tools/export_model.py writes one)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MODEL_JSON not in names:
                raise ValueError(f"{path}: no {MODEL_JSON} inside: not a model written by tools/export_model.py")
            info = json.loads(archive.read(MODEL_JSON))
            if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("sha256"), dict):
                raise ValueError(f"{path}: {MODEL_JSON} is not of format {FORMAT} (written by another version?)")
            for name, expected in info["sha256"].items():
                if name not in names:
                    raise ValueError(f"{path}: member {name} is missing (the zip is incomplete)")
                if _digest(archive.read(name)) != expected:
                    raise ValueError(f"{path}: member {name} is damaged (its sha256 differs from {MODEL_JSON}'s)")
            plans = json.loads(archive.read("plans.json"))
            rules = (Postprocessing.from_dict(json.loads(archive.read(POSTPROCESSING_FILE)),
                                              f"{path}:{POSTPROCESSING_FILE}")
                     if POSTPROCESSING_FILE in info["sha256"] else None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable model zip, corrupted or truncated ({type(err).__name__}: "
                         f"{err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as err:
        raise ValueError(f"{path}: damaged ({type(err).__name__}: {err})") from None
    if info.get("dataset") != dataset_name:
        raise ValueError(f"{path}: a model of dataset {info.get('dataset')!r}, this script predicts {dataset_name!r}")
    folds = info.get("folds") or []
    members = tuple(f"fold_{k}/checkpoint.pt" for k in folds)
    if not members or any(m not in info["sha256"] for m in members):
        raise ValueError(f"{path}: {MODEL_JSON} lists folds {folds} without their checkpoints")
    return ModelPackage(path, info, plans, members, tuple(info["sha256"][m] for m in members), rules)


def check_plans(package: ModelPackage, plans: dict[str, Any], source: str | Path) -> None:
    """``ValueError`` when the package was trained with another plan than ``plans`` (read from ``source``)."""
    differ = plans_difference(package.plans, plans)
    if differ:
        raise ValueError(f"{package.path}: a model of another plan than {source} (they differ in {differ}); "
                         f"preprocess with the model's plans.json, or predict raw scans with --input_dir")


def read_member_checkpoint(package: ModelPackage, member: str) -> dict[str, Any]:
    """The checkpoint ``member`` of the zip, read with ``torch.load(weights_only=True)``; ``ValueError`` when
    it is not one of ours or its plan is not the zip's."""
    with zipfile.ZipFile(package.path) as archive:
        data = archive.read(member)
    name = f"{package.path}:{member}"
    checkpoint = read_checkpoint(io.BytesIO(data), name)
    if checkpoint.get("plans") != package.plans:
        raise ValueError(f"{name}: trained with another plan than the zip's plans.json (they differ in "
                         f"{plans_difference(package.plans, checkpoint.get('plans') or {})})")
    return checkpoint
