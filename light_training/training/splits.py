"""Deterministic 5-fold cross-validation splits of the preprocessed cases, written once to ``splits.json``.

The file lies next to the plan, in the parent folder of ``data_dir`` (``./data/fullres/splits.json``),
and, once written, is the single source of truth: training reads its fold from it and prediction reads
the held-out cases from it, so both agree even if cases are added to ``data_dir`` later. A fixed test
list (the original's way of holding cases out) is kept out of every fold and stored in the file too.

``splits.json``::

    {"num_folds": 5, "seed": 12345, "test": [...],
     "folds": [{"train": [...], "val": [...]}, ...]}
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from light_training.io import read_json, write_json
from light_training.preprocessing.preprocess import list_cases

__all__ = ["splits_path", "make_splits", "load_or_create_splits", "fold_cases", "held_out_cases"]

NUM_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's seed for its 5-fold split; any fixed value would do


def splits_path(data_dir: str | Path) -> Path:
    """``<data_dir>/../splits.json``."""
    return Path(data_dir).parent / "splits.json"


def make_splits(cases: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED,
                test_cases: Sequence[str] = ()) -> dict[str, Any]:
    """Split ``cases`` (minus ``test_cases``) into ``num_folds`` folds; the same input gives the same split.

    The sorted cases are shuffled with ``seed`` and cut into ``num_folds`` nearly equal parts; fold ``k``
    validates on part ``k`` and trains on the rest. With fewer cases than folds some folds validate on none.
    """
    test = sorted(set(test_cases))
    pool = sorted(set(cases) - set(test))
    if len(pool) < 2:
        raise ValueError(f"need at least 2 training cases to split, got {len(pool)} "
                         f"({len(cases)} case(s), {len(test)} in the test list)")
    order = np.random.default_rng(seed).permutation(len(pool))
    parts = np.array_split(order, num_folds)
    folds = []
    for part in parts:
        val = {pool[i] for i in part}
        folds.append({"train": sorted(set(pool) - val), "val": sorted(val)})
    return {"num_folds": num_folds, "seed": seed, "test": test, "folds": folds}


def _check_against_data(splits: dict[str, Any], cases: Sequence[str], path: Path,
                        test_cases: Sequence[str] | None) -> None:
    listed = set(splits["test"]).union(*(set(f["train"]) | set(f["val"]) for f in splits["folds"]))
    missing = sorted(listed - set(cases))
    if missing:
        raise ValueError(f"{path} lists case(s) that are not preprocessed in the data folder: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}; preprocess them, or delete {path} to split again")
    if test_cases is not None and sorted(set(test_cases)) != splits["test"]:
        raise ValueError(f"{path} was written with the test list {splits['test']}, not {sorted(set(test_cases))}; "
                         f"delete {path} to split again with the new test list")
    new = sorted(set(cases) - listed)
    if new:
        warnings.warn(f"{len(new)} preprocessed case(s) are not in {path} and will not be used "
                      f"(e.g. {new[:3]}); delete {path} to split again", stacklevel=3)


def load_or_create_splits(data_dir: str | Path, test_cases: Sequence[str] | None = None) -> dict[str, Any]:
    """The splits of ``data_dir``: read from ``splits.json``, or made from its cases and written once.

    ``test_cases`` (optional): cases kept out of every fold; they must be preprocessed cases of ``data_dir``.
    An existing file is checked against the data (cases it lists must exist) and the test list.
    """
    path = splits_path(data_dir)
    cases = list_cases(data_dir)
    if not cases:
        raise ValueError(f"{data_dir}: no preprocessed case found (run the preprocessing script first)")
    if test_cases:
        unknown = sorted(set(test_cases) - set(cases))
        if unknown:
            raise ValueError(f"test case(s) {unknown} are not preprocessed cases of {data_dir}")
    if path.is_file():
        splits = read_json(path)
        if not isinstance(splits, dict) or not {"folds", "test"} <= set(splits):
            raise ValueError(f"{path}: not a splits file (expected keys 'folds' and 'test'); delete it to split again")
        _check_against_data(splits, cases, path, test_cases)
        return splits
    splits = make_splits(cases, test_cases=test_cases or ())
    write_json(splits, path)
    return splits


def fold_cases(data_dir: str | Path, fold: int, test_cases: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """``(train cases, validation cases)`` of ``fold`` (0-4), creating ``splits.json`` when needed."""
    splits = load_or_create_splits(data_dir, test_cases)
    folds = splits["folds"]
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise ValueError(f"fold must be one of 0..{len(folds) - 1}, got {fold!r}")
    return list(folds[fold]["train"]), list(folds[fold]["val"])


def held_out_cases(data_dir: str | Path, fold: int) -> list[str]:
    """The cases to predict and score after training ``fold``: the fixed test list when one was given,
    otherwise the fold's validation cases (never trained on)."""
    splits = load_or_create_splits(data_dir)
    if splits["test"]:
        return list(splits["test"])
    return fold_cases(data_dir, fold)[1]
