"""Dataset descriptions: a dataset is a JSON file, not code.

A description is nnU-Net v2's ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) plus a few optional fields that every stage reads:

- ``labels``: ``{"background": 0, "airway": 1}``; entries whose value is a list are *regions* for
  evaluation, e.g. ``"whole tumor": [1, 2, 3]``. The plain labels are the network's classes, in value
  order; their values must be 0, 1, ..., K-1. (nnU-Net v2 reads list values as region-based *training*
  and then needs ``regions_class_order``; such a file is refused here with that reason: the network
  here trains on the plain labels.)
- ``raw_layout``: where a case's files are, relative to the raw folder, as patterns with ``{case}``,
  ``{channel}`` (the channel's name), ``{channel_index}`` (``0000``, ``0001``, ...) and ``{ext}``
  (``file_ending``; ``.nii`` and ``.nii.gz`` are both accepted). Each entry is a list of alternatives,
  the first one that exists wins: ``images``, ``labels`` (training) and ``unlabeled_images`` (a folder
  of scans to predict). Default: nnU-Net's layout (``imagesTr/{case}_{channel_index}{ext}``,
  ``labelsTr/{case}{ext}``; ``imagesTs/`` or the folder itself for prediction).
- ``normalization``: ``{"0": "CT"}`` per channel; default nnU-Net's rule (a channel named "CT" gets the
  CT scheme, every other channel a z-score).
- ``target_spacing``: ``[z, y, x]`` mm; absent or null: the dataset's median spacing.
- ``metrics``: ``"dice_hd95"`` (default: Dice and HD95 per label and region), ``"aiib2023"`` or
  ``"brats2023"`` (the challenges' official definitions); ``evaluate``: the label and region names to
  score (default: every foreground label and every region).

The two challenge datasets ship as ``light_training/descriptions/{aiib2023,brats2023}.json``; a user's
dataset is its own ``dataset.json`` (see the README, "Your own dataset").
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SHIPPED", "METRIC_SETS", "NNUNET_LAYOUT", "DatasetDescription", "load_dataset", "parse_description",
           "as_description"]

SHIPPED = Path(__file__).resolve().parent / "descriptions"  # the descriptions that ship with the project
METRIC_SETS = ("dice_hd95", "aiib2023", "brats2023")
NORMALIZATIONS = ("CT", "ZScore")
NNUNET_LAYOUT = {
    "images": ["imagesTr/{case}_{channel_index}{ext}"],
    "labels": ["labelsTr/{case}{ext}"],
    "unlabeled_images": ["imagesTs/{case}_{channel_index}{ext}", "{case}_{channel_index}{ext}"],
}
_PLACEHOLDERS = {"case", "channel", "channel_index", "ext"}


@dataclass(frozen=True)
class DatasetDescription:
    """A validated dataset description (see the module docstring). ``source``: the file it came from."""
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]  # plain labels, in value order 0..K-1
    regions: dict[str, tuple[int, ...]]  # evaluation regions
    file_ending: str
    num_training: int
    raw_layout: dict[str, tuple[str, ...]]
    normalization: tuple[str, ...]
    target_spacing: tuple[float, float, float] | None
    metrics: str
    evaluate: tuple[str, ...]
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)  # the JSON as read

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def label_values(self) -> list[int]:
        return list(self.labels.values())

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    def evaluation_regions(self) -> dict[str, list[int]]:
        """``{name: [label values]}`` of what ``evaluate`` names (a plain label is a one-value region)."""
        return {n: list(self.regions[n]) if n in self.regions else [self.labels[n]] for n in self.evaluate}

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON (stored in plans.json and so in every checkpoint)."""
        return dict(self.raw, name=self.name)


def _error(source: str, field_name: str, message: str) -> ValueError:
    return ValueError(f"{source}: field {field_name!r}: {message}")


def _check_pattern(source: str, key: str, pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise _error(source, f"raw_layout.{key}", f"expected a list of path patterns, got {pattern!r}")
    names = set(re.findall(r"{(\w+)}", pattern))
    if names - _PLACEHOLDERS:
        raise _error(source, f"raw_layout.{key}", f"{pattern!r} uses {sorted(names - _PLACEHOLDERS)}; "
                                                   f"the placeholders are {sorted(_PLACEHOLDERS)}")
    if "case" not in names or "ext" not in names or not pattern.endswith("{ext}"):
        raise _error(source, f"raw_layout.{key}", f"{pattern!r} must contain {{case}} and end with {{ext}}")
    return pattern


def parse_description(data: Any, source: str = "<description>") -> DatasetDescription:
    """Validate a description's JSON content; raises ``ValueError`` naming the file and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    for required in ("channel_names", "labels", "file_ending"):
        if required not in data:
            raise _error(source, required, "missing (nnU-Net's dataset.json fields channel_names, labels, "
                                           "numTraining and file_ending are required)")
    channels = data["channel_names"]
    if (not isinstance(channels, dict) or not channels
            or sorted(channels, key=lambda k: int(k) if str(k).isdigit() else -1) != [str(i) for i in range(len(channels))]
            or not all(isinstance(v, str) and v for v in channels.values())):
        raise _error(source, "channel_names", f'expected {{"0": "name", "1": ...}} with keys 0..C-1, got {channels!r}')
    channel_names = tuple(channels[str(i)] for i in range(len(channels)))
    if "regions_class_order" in data:
        raise _error(source, "regions_class_order", "nnU-Net's region-based training is not supported: give "
                                                    "the plain labels 0, 1, ..., K-1 (the classes the network "
                                                    "learns) and regions as lists, which are evaluated")
    labels, regions = {}, {}
    if not isinstance(data["labels"], dict):
        raise _error(source, "labels", f'expected {{"background": 0, "name": 1, ...}}, got {data["labels"]!r}')
    for name, value in data["labels"].items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise _error(source, "labels", f"{name!r}: expected an int label value or a list (a region), got {value!r}")
        if isinstance(value, int):
            labels[name] = value
        else:
            regions[name] = value
    values = sorted(labels.values())
    if values != list(range(len(values))) or len(values) < 2:
        raise _error(source, "labels", f"the plain label values must be 0, 1, ..., K-1 with K >= 2 (0 the "
                                       f"background), got {values}")
    labels = dict(sorted(labels.items(), key=lambda item: item[1]))
    for name, members in regions.items():
        unknown = [v for v in members if isinstance(v, bool) or not isinstance(v, int) or v not in values[1:]]
        if not members or unknown:
            raise _error(source, "labels", f"region {name!r} = {members!r} names unknown label value(s) {unknown}; "
                                           f"the foreground labels are {dict(list(labels.items())[1:])}")
        regions[name] = tuple(members)
    file_ending = data["file_ending"]
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise _error(source, "file_ending", f"expected e.g. '.nii.gz', got {file_ending!r}")
    num_training = data.get("numTraining", 0)
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise _error(source, "numTraining", f"expected a non-negative int, got {num_training!r}")
    layout_in = data.get("raw_layout", NNUNET_LAYOUT)
    if not isinstance(layout_in, dict) or set(layout_in) - set(NNUNET_LAYOUT) or "images" not in layout_in:
        raise _error(source, "raw_layout", f"expected an object with 'images' and optionally 'labels', "
                                           f"'unlabeled_images', got {layout_in!r}")
    layout = {}
    for key in NNUNET_LAYOUT:
        patterns = layout_in.get(key, layout_in["images"] if key == "unlabeled_images" else NNUNET_LAYOUT[key])
        patterns = [patterns] if isinstance(patterns, str) else patterns
        if not isinstance(patterns, list) or not patterns:
            raise _error(source, f"raw_layout.{key}", f"expected a list of path patterns, got {patterns!r}")
        layout[key] = tuple(_check_pattern(source, key, p) for p in patterns)
    norm_in = data.get("normalization")
    if norm_in is None:
        normalization = tuple("CT" if c.upper() == "CT" else "ZScore" for c in channel_names)
    elif not isinstance(norm_in, dict) or set(norm_in) != set(channels) or set(norm_in.values()) - set(NORMALIZATIONS):
        raise _error(source, "normalization", f"expected one of {list(NORMALIZATIONS)} per channel key "
                                              f"{list(channels)}, got {norm_in!r}")
    else:
        normalization = tuple(norm_in[str(i)] for i in range(len(channels)))
    spacing = data.get("target_spacing")
    if spacing is not None:
        if (not isinstance(spacing, list) or len(spacing) != 3
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)):
            raise _error(source, "target_spacing", f"expected [z, y, x] in mm (three positive numbers) or null, "
                                                   f"got {spacing!r}")
        spacing = tuple(float(s) for s in spacing)
    metrics = data.get("metrics", "dice_hd95")
    if metrics not in METRIC_SETS:
        raise _error(source, "metrics", f"expected one of {list(METRIC_SETS)}, got {metrics!r}")
    known = [n for n in labels if labels[n] != 0] + list(regions)
    evaluate = data.get("evaluate", known)
    if not isinstance(evaluate, list) or not evaluate or any(n not in known for n in evaluate):
        raise _error(source, "evaluate", f"expected a list of foreground label or region names from {known}, "
                                         f"got {evaluate!r}")
    name = data.get("name") or Path(source).parent.name or "dataset"
    if not isinstance(name, str):
        raise _error(source, "name", f"expected a string, got {name!r}")
    name = re.sub(r"[^\w.-]+", "_", name)  # it names folders and checks that a checkpoint fits a dataset
    return DatasetDescription(name, channel_names, labels, regions, file_ending, num_training, layout, normalization,
                              spacing, metrics, tuple(evaluate), source, dict(data))


def load_dataset(dataset: str | Path | dict) -> DatasetDescription:
    """A description by the name of a shipped one ("aiib2023", "brats2023"), a ``dataset.json`` path,
    a folder holding ``dataset.json``, or an already-read dict (e.g. from a plan). Raises ``ValueError``."""
    if isinstance(dataset, dict):
        return parse_description(dataset, f"description of {dataset.get('name', 'a dataset')!r}")
    shipped = {p.stem: p for p in SHIPPED.glob("*.json")}
    path = shipped.get(str(dataset)) or Path(dataset)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise ValueError(f"dataset {str(dataset)!r}: not a shipped description ({sorted(shipped)}) and no such "
                         f"file {path}; a dataset of your own needs a dataset.json (README: 'Your own dataset')")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return parse_description(data, str(path))


def as_description(dataset: DatasetDescription | str | Path | dict) -> DatasetDescription:
    """``dataset`` itself when it is a description, else :func:`load_dataset` of it."""
    return dataset if isinstance(dataset, DatasetDescription) else load_dataset(dataset)
