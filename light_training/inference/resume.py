"""Which cases a prediction run does: its part of the folder, and only those not already done.

A case is done when its record ``<save_dir>/<case>_record.json`` (written last, atomically, after every
output of the case) names the same run fingerprint (the checkpoints' contents and every setting that
changes the outputs), the same source files (size and modification time), and every output it lists is
there. A run killed at any moment therefore leaves each case either done or redone on the next start.

Parts (nnU-Net's ``-num_parts``/``-part_id``): the sorted case names dealt round-robin, so parts are
disjoint, cover the folder and do not depend on the order files are listed in. Under ``torchrun`` each
rank is a part of its own (``WORLD_SIZE`` x ``num_parts`` parts), on ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from light_training.io import read_json, write_json

__all__ = ["RECORD_SUFFIX", "OUTPUT_SETTINGS", "case_part", "resolve_part", "file_digest", "postprocessed_cases",
           "run_fingerprint", "source_stamp", "case_outputs", "record_path", "is_done", "write_record"]

RECORD_SUFFIX = "_record.json"
# the prediction constants that change what is written (not: device, threads, workers, paths, parts)
OUTPUT_SETTINGS = ("overlap", "mirror_axes", "sw_batch_size", "precision", "steps", "fusion", "uncertainty", "seed",
                   "nonfinite", "fold", "save_probabilities", "save_uncertainty", "save_preview", "postprocessing",
                   "cast_weights")


def case_part(names: Sequence[str], num_parts: int, part_id: int) -> list[str]:
    """Part ``part_id`` of ``num_parts`` of the cases: every ``num_parts``-th of the sorted names."""
    if not isinstance(num_parts, int) or num_parts < 1:
        raise ValueError(f"num_parts={num_parts!r}: expected an integer >= 1")
    if not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id={part_id!r}: expected an integer in [0, num_parts - 1] = [0, {num_parts - 1}]")
    return sorted(names)[part_id::num_parts]


def resolve_part(num_parts: int, part_id: int, env: Mapping[str, str]) -> tuple[int, int]:
    """``(num_parts, part_id)`` of this process: under torchrun (``WORLD_SIZE`` > 1 in ``env``) each of the
    ``num_parts`` parts is split again between the ranks, rank ``RANK`` taking its own."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return num_parts, part_id
    return num_parts * world, part_id * world + int(env["RANK"])


def file_digest(path: str | Path) -> str:
    """sha256 of a file's contents (a checkpoint retrained in place gets another)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(checkpoint_digests: Sequence[str], config: Mapping[str, Any]) -> str:
    """One string for the checkpoints (in order) and the :data:`OUTPUT_SETTINGS` of ``config``."""
    settings = {k: config.get(k) for k in OUTPUT_SETTINGS}
    text = json.dumps({"checkpoints": list(checkpoint_digests), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def source_stamp(paths: Sequence[str | Path]) -> list[list]:
    """``[name, size, mtime_ns]`` of each source file of a case (size and time None for a missing file)."""
    stamp = []
    for p in map(Path, paths):
        stat = p.stat() if p.is_file() else None
        stamp.append([p.name, stat and stat.st_size, stat and stat.st_mtime_ns])
    return stamp


def case_outputs(save_dir: str | Path, case: str, save_probabilities: bool, save_uncertainty: bool,
                 save_preview: bool) -> list[Path]:
    """The files a prediction of ``case`` writes."""
    save_dir = Path(save_dir)
    names = ([f"{case}.nii.gz"] + ([f"{case}.npz"] if save_probabilities else [])
             + ([f"{case}_uncertainty.nii.gz"] if save_uncertainty else [])
             + ([f"{case}_preview.png"] if save_preview else []))
    return [save_dir / n for n in names]


def record_path(save_dir: str | Path, case: str) -> Path:
    return Path(save_dir) / f"{case}{RECORD_SUFFIX}"


def postprocessed_cases(save_dir: str | Path, cases: Sequence[str]) -> list[str]:
    """The ``cases`` of ``save_dir`` whose records say postprocessing was applied to their label map: not
    the raw held-out predictions that choosing postprocessing, or comparing configurations, needs."""
    return [case for case in cases if record_path(save_dir, case).is_file()
            and read_json(record_path(save_dir, case)).get("postprocessing")]


def is_done(save_dir: str | Path, case: str, fingerprint: str, stamp: list[list], outputs: Sequence[Path]) -> bool:
    """True when ``case`` was predicted by the same run (fingerprint and sources) and all ``outputs`` exist."""
    path = record_path(save_dir, case)
    if not path.is_file():
        return False
    try:
        record = read_json(path)
    except ValueError:  # an unreadable record: predict again
        return False
    return (isinstance(record, dict) and record.get("fingerprint") == fingerprint and record.get("source") == stamp
            and sorted(record.get("outputs", [])) == sorted(p.name for p in outputs)
            and all(p.is_file() for p in outputs))


def write_record(save_dir: str | Path, case: str, fingerprint: str, stamp: list[list], outputs: Sequence[Path],
                 checkpoints: Sequence[str], notes: Sequence[str] = (), seconds: Mapping[str, float] | None = None,
                 postprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write the record of a finished case (after its outputs: the record is the proof they are complete);
    ``seconds`` per step of the case, for the log and benchmarks/bench_prediction.py; ``postprocessing``:
    the rules applied to its label map (None: none)."""
    path = record_path(save_dir, case)
    write_json({"case": case, "fingerprint": fingerprint, "source": stamp, "outputs": [p.name for p in outputs],
                "checkpoints": list(checkpoints), "notes": list(notes),
                "seconds": {k: round(v, 3) for k, v in (seconds or {}).items()},
                "postprocessing": dict(postprocessing) if postprocessing else None}, path)
    return path
