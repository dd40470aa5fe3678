"""A plan read through typed fields (:class:`Plans`, its planned network :class:`NetworkPlan`).

:mod:`light_training.planning.dataset_plan` writes ``plans.json`` (:func:`plans_path`); every later stage reads it, and every
checkpoint and model zip stores it as the plain dict it was read from (``to_json``), so old checkpoints
load and new ones hold the same bytes. The types sit beside the other shared descriptions (datasets,
I/O), below the training, inference and preprocessing rooms that read them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["plans_path", "plans_hash", "CaseFingerprint", "NetworkPlan", "Plans"]

# every plan entry that changes the preprocessed arrays, and the planned network: a case preprocessed under
# another hash is redone
_PLANS_HASH_KEYS = ("dataset", "channel_names", "labels", "normalization", "target_spacing", "intensity_properties",
                    "resampling", "network")


def plans_path(data_dir: str | Path) -> Path:
    """Where the plan of the preprocessed cases in ``data_dir`` lives: ``<data_dir>/../plans.json``."""
    return Path(data_dir).parent / "plans.json"


def plans_hash(plans: dict[str, Any]) -> str:
    """A short hash of what decides the preprocessed arrays; stored in every case's properties."""
    text = json.dumps({k: plans.get(k) for k in _PLANS_HASH_KEYS}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CaseFingerprint:
    """One case of the plan's ``"cases"``: its spacing and shape (z, y, x), its shape after cropping to the
    nonzero box, and the label values present in it."""
    spacing: list[float]
    shape: list[int]
    shape_after_crop: list[int]
    label_values: list[int]

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> CaseFingerprint:
        return cls(entry["spacing"], entry["shape"], entry["shape_after_crop"], entry["label_values"])


@dataclass(frozen=True)
class NetworkPlan:
    """The plan's ``"network"`` entry, read (:func:`~light_training.planning.network_plan.plan_network`):
    the training patch (z, y, x), the batch, per-stage strides and kernels, the spacing they were derived at
    (None in plans older than it). :meth:`to_json` gives back the entry itself."""
    patch_size: list[int]
    batch_size: int
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    spacing: list[float] | None
    source: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> NetworkPlan:
        return cls(list(entry["patch_size"]), int(entry["batch_size"]), entry.get("strides"),
                   entry.get("kernel_sizes"), entry.get("spacing"), entry)

    def to_json(self) -> dict[str, Any]:
        return self.source  # type: ignore[return-value]  # the entry as read, unchanged


@dataclass(frozen=True)
class Plans:
    """A plan (``plans.json``, a checkpoint's ``"plans"``) read through typed fields. Plans of a converted
    release checkpoint hold only the dataset, channel and label names (the rest None). :meth:`to_json` gives
    back the dict it was read from, unchanged: what checkpoints and model zips store."""
    dataset: str | None
    channel_names: list[str]
    labels: list[int]
    label_names: list[str] | None
    num_classes: int | None
    target_spacing: list[float] | None
    description: dict[str, Any] | None
    network: NetworkPlan | None
    num_cases: int | None
    cases: dict[str, CaseFingerprint]
    source: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, plans: Mapping[str, Any]) -> Plans:
        network = plans.get("network")
        return cls(plans.get("dataset"), list(plans.get("channel_names") or []), list(plans.get("labels") or []),
                   plans.get("label_names"), plans.get("num_classes"), plans.get("target_spacing"),
                   plans.get("description"), NetworkPlan.from_json(network) if network else None,
                   plans.get("num_cases"),
                   {name: CaseFingerprint.from_json(case) for name, case in (plans.get("cases") or {}).items()}, plans)

    def to_json(self) -> dict[str, Any]:
        return self.source  # type: ignore[return-value]  # the plan as read, unchanged
