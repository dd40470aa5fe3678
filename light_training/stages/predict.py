"""The prediction stage: a checkpoint's model over the held-out fold or a folder of raw scans.

Every input is found and checked before the first window is predicted: unreadable or truncated files,
wrong dimensionality, missing sequences, channel count, NaN/Inf, sequences of one case on different
grids. All problems are listed at once, by case and file; ``skip_bad_cases`` predicts the rest.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from light_training.datasets import DatasetDescription, load_dataset
from light_training.inference.prediction import InferenceSettings, predict_volume, save_prediction
from light_training.preprocessing.preprocess import load_case, preprocess_case
from light_training.preprocessing.raw_cases import RawCase, find_raw_cases, read_raw_case
from light_training.runtime import compile_for_inference, resolve_device, seed_everything, set_cpu_threads
from light_training.stages import write_config
from light_training.training.splits import held_out_cases

__all__ = ["NONFINITE_POLICIES", "load_predictor", "check_scans", "predict"]

NONFINITE_POLICIES = ("error", "replace")  # NaN/Inf in a scan to predict: refuse it, or use the scan's minimum


def load_predictor(checkpoint_path: str | Path, dataset: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint alone: ``(model in eval mode on device, checkpoint)``.

    ``ValueError`` when the file is missing, not a checkpoint of ours, or trained on another dataset.
    """
    from light_training.checkpoint import build_model, load_checkpoint

    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}: train first (the training script writes "
                         f"<logdir>/model/best.pt) or set --checkpoint=PATH")
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


def _read_scan(raw: RawCase, description: DatasetDescription, nonfinite: str) -> tuple[np.ndarray, Any, list[str]]:
    """Read a scan to predict; ``(image, geometry, warnings)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, geometry, _ = read_raw_case(raw, description, replace_nonfinite=nonfinite == "replace")
    return image, geometry, [str(w.message) for w in caught]


def check_scans(raw_cases: list[RawCase], description: DatasetDescription,
                nonfinite: str = "error") -> tuple[list[RawCase], dict[str, str]]:
    """Read and check every scan: ``(usable cases, {case: problem})``. Nothing is predicted here."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={nonfinite!r}: expected one of {list(NONFINITE_POLICIES)}")
    good, bad = [], {}
    for raw in tqdm(raw_cases, desc="checking scans", unit="case"):
        try:
            _read_scan(raw, description, nonfinite)
            good.append(raw)
        except ValueError as err:  # ImageReadError included
            bad[raw.case] = str(err)
    return good, bad


def _listing(problems: dict[str, str]) -> str:
    return "\n".join(f"  {case}: {why}" for case, why in problems.items())


def predict(config: dict[str, Any], script: str) -> list[Path]:
    """Predict the held-out fold of ``data_dir`` (or every scan of ``input_dir``) into ``save_dir``.

    Writes ``<case>.nii.gz`` on the source image's geometry, and on request ``<case>_uncertainty.nii.gz``,
    ``<case>.npz`` and ``<case>_preview.png``; then the resolved constants.
    """
    c = config
    set_cpu_threads(c["num_threads"])
    device = resolve_device(c["device"])
    model, checkpoint = load_predictor(c["checkpoint"] or Path(c["logdir"]) / "model" / "best.pt", c["dataset"], device)
    plans = checkpoint["plans"]
    description = load_dataset(plans["description"])
    skipped: dict[str, str] = {}
    if c["input_dir"]:
        raw_cases = find_raw_cases(c["input_dir"], description, with_labels=False)
        if not raw_cases:
            raise ValueError(f"{c['input_dir']}: no scans found (expected "
                             f"{' or '.join(description.raw_layout['unlabeled_images'])})")
        raw_cases, skipped = check_scans(raw_cases, description, c["nonfinite"])
        if skipped and not c["skip_bad_cases"]:
            raise ValueError(f"{len(skipped)} of {len(raw_cases) + len(skipped)} scan(s) cannot be predicted; "
                             f"nothing was predicted:\n{_listing(skipped)}\n(fix or remove them, or run with "
                             f"--skip_bad_cases=True to predict the others)")
        names = [raw.case for raw in raw_cases]
    else:
        names = held_out_cases(c["data_dir"], checkpoint["config"]["fold"] if c["fold"] is None else c["fold"])
        missing = [n for n in names if not (Path(c["data_dir"]) / f"{n}.json").is_file()]
        if missing:
            raise ValueError(f"{c['data_dir']}: no preprocessed case(s) {missing}; run the preprocessing script")
    if c["torch_compile"]:
        compile_for_inference(model)
    settings = InferenceSettings(patch_size=checkpoint["config"]["patch_size"], overlap=c["overlap"],
                                 mirror_axes=c["mirror_axes"], sw_batch_size=c["sw_batch_size"],
                                 precision=c["precision"], steps=c["steps"], fusion=c["fusion"],
                                 uncertainty=c["uncertainty"])
    written = []
    for i, name in enumerate(tqdm(names, desc="cases", unit="case")):
        label = None
        if c["input_dir"]:
            image, geometry, notes = _read_scan(raw_cases[i], description, c["nonfinite"])
            for note in notes:
                print(f"warning: {note}")
            image, _, properties = preprocess_case(image, geometry, None, plans, case=name)
        else:
            image, label, properties = load_case(c["data_dir"], name)
        if c["seed"] is not None:  # per case: a case's prediction does not depend on which others were predicted
            seed_everything(c["seed"])
        probabilities, uncertainty = predict_volume(model, image, settings, device)
        written.append(save_prediction(probabilities, uncertainty, properties, plans["labels"], c["save_dir"],
                                       c["save_probabilities"], c["save_uncertainty"]))
        if c["save_preview"]:
            _write_preview(c["save_dir"], name, image, label, probabilities, uncertainty, plans, description)
    write_config(c, script, c["save_dir"])
    print(f"{len(written)} prediction(s) written to {c['save_dir']}")
    if c["save_preview"] and written:
        print(f"previews: {Path(c['save_dir']) / '<case>_preview.png'}")
    if skipped:
        print(f"skipped {len(skipped)} scan(s) that cannot be predicted:\n{_listing(skipped)}")
    return written


def _write_preview(save_dir: str | Path, case: str, image: np.ndarray, label: np.ndarray | None,
                   probabilities: torch.Tensor, uncertainty: torch.Tensor, plans: dict[str, Any],
                   description: DatasetDescription) -> Path:
    """``<case>_preview.png`` on the preprocessed grid (the scan as the network saw it)."""
    from light_training.inference.preview import preview_path, write_preview

    values = np.asarray(plans["labels"], dtype=np.uint8)
    prediction = values[probabilities.argmax(0).cpu().numpy()]
    return write_preview(preview_path(save_dir, case), np.asarray(image), prediction,
                         uncertainty=uncertainty.cpu().numpy(),
                         ground_truth=None if label is None else values[np.asarray(label)],
                         spacing=plans["target_spacing"], label_names=dict(zip(plans["labels"], plans["label_names"])),
                         airway_mip=description.metrics == "aiib2023")
