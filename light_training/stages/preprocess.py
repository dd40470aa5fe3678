"""Preprocessing stages: rename raw files to a dataset's other layout, and plan + preprocess a raw dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from light_training.datasets import load_dataset
from light_training.planning.network_plan import describe_network
from light_training.planning.dataset_plan import prepare_plans
from light_training.plans import Plans, plans_path
from light_training.preprocessing.preprocess import preprocess_dataset
from light_training.preprocessing.raw_cases import NIFTI_ENDINGS, find_raw_cases, layout_path
from light_training.config import settings_from
from light_training.stages import write_config

__all__ = ["PreprocessSettings", "RenameSettings", "preprocess", "rename"]


@dataclass(frozen=True)
class PreprocessSettings:
    """The preprocessing script's constants (their comments say what each does)."""
    dataset: str
    raw_dir: str
    output_dir: str
    target_spacing: list[float] | None
    gpu_memory_target_gb: float | None
    num_processes: int
    overwrite: bool
    skip_bad_cases: bool


@dataclass(frozen=True)
class RenameSettings:
    """The renaming script's constants."""
    dataset: str
    data_dir: str

def preprocess(config: dict[str, Any], script: str) -> None:
    """Plan the raw dataset and preprocess every case.

    Constants: ``dataset``, ``raw_dir``, ``output_dir`` (the plan goes to its parent), ``target_spacing``
    (None: the description's; ``[]``: the median), ``gpu_memory_target_gb`` (the planned network's training
    step fits it), ``num_processes``, ``overwrite``, ``skip_bad_cases``.
    """
    c = settings_from(PreprocessSettings, config)
    description = load_dataset(c.dataset)
    raw_dir, output_dir = Path(c.raw_dir), Path(c.output_dir)
    raw_cases = find_raw_cases(raw_dir, description)
    if not raw_cases:
        raise ValueError(f"{raw_dir}: no {description.name} case found (expected "
                         f"{' or '.join(description.raw_layout['images'])})")
    plans = prepare_plans(plans_path(output_dir), raw_cases, description, c.target_spacing, c.num_processes,
                          c.overwrite, c.skip_bad_cases, c.gpu_memory_target_gb)
    plan = Plans.from_json(plans)
    print(f"plan: {plans_path(output_dir)} ({description.name}, target spacing {plan.target_spacing}, "
          f"{plan.num_cases} cases)")
    if plan.network is not None:
        print("planned network: " + describe_network(plan.network.to_json()))
    empty = [case for case, fingerprint in plan.cases.items() if not any(fingerprint.label_values)]
    for case in empty:
        print(f"warning: {case}: its label has no foreground voxel; it is preprocessed, validation leaves it "
              f"out of the pseudo Dice, and the metrics list it as unscorable")
    summary = preprocess_dataset(raw_cases, plans, output_dir, c.num_processes, c.overwrite, c.skip_bad_cases)
    write_config(config, script, output_dir)
    print(summary.report())


def rename(config: dict[str, Any], script: str) -> None:
    """Rename every case's files from the first pattern of the dataset's raw layout to the last one
    (BraTS: ``<case>/<case>-t1n.nii.gz`` -> ``<case>/t1n.nii.gz``, as the original release does).

    Optional: preprocessing reads both. Running it twice is harmless. A case folder that holds both
    names of one file is an error naming it, found before anything is renamed. Constants: ``dataset``,
    ``data_dir``.
    """
    c = settings_from(RenameSettings, config)
    description = load_dataset(c.dataset)
    root = Path(c.data_dir)
    layout = description.raw_layout
    if len(layout["images"]) < 2 or len(layout["labels"]) < 2:
        raise ValueError(f"{description.name}'s raw layout has one naming only: nothing to rename")
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (expected {description.name} cases laid out as "
                         f"{layout['images'][0]})")
    cases = find_raw_cases(root, description)
    if not cases:
        raise ValueError(f"{root}: no {description.name} case found")
    renames, already, missing, clashes = [], 0, [], []
    files = [("images", c) for c in range(len(description.channel_names))] + [("labels", None)]
    for raw in cases:
        for kind, channel in files:
            ext = next((e for e in NIFTI_ENDINGS if (root / layout_path(layout[kind][0], raw.case, channel,
                                                                              description, e)).exists()),
                       description.file_ending)
            old = root / layout_path(layout[kind][0], raw.case, channel, description, ext)
            new = root / layout_path(layout[kind][-1], raw.case, channel, description, ext)
            if old.exists() and new.exists():
                clashes.append(f"{old.parent}: holds both {old.name} and {new.name}")
            elif old.exists():
                renames.append((old, new))
            elif new.exists():
                already += 1
            else:
                missing.append(f"{raw.case}: {description.channel_names[channel] if channel is not None else 'label'}")
    if clashes:
        raise ValueError("nothing renamed; remove one file of each pair:\n  " + "\n  ".join(clashes))
    for old, new in renames:
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
    write_config(config, script, root)
    print(f"{len(cases)} case(s) in {root}: {len(renames)} file(s) renamed, {already} already renamed, "
          f"{len(missing)} missing")
    if missing:
        print("missing: " + ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
