"""The layer the numbered scripts call: one entry function per stage, taking the script's constants.

A numbered script is its docstring, its constants and one line::

    run(train, globals())

:func:`run` applies the ``--name=value`` overrides, calls the stage with the resolved constants, and
turns the exceptions that bad input raises (``ValueError`` and its kin, :class:`StageFailed`) into an
exit message naming the script. Everything below this layer raises exceptions; only here do they
become exit codes. Each stage writes the constants it ran with next to its outputs
(:func:`write_config`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from light_training.config import apply_overrides
from light_training.io import write_json

__all__ = ["Stage", "StageFailed", "run", "write_config", "run_script", "load_average"]

Stage = Callable[[dict[str, Any], str], Any]


class StageFailed(RuntimeError):
    """A stage could not finish; the message says why and what was kept."""


def write_config(config: dict[str, Any], script: str, folder: str | Path, stem: str | None = None) -> Path:
    """Write the resolved constants as ``<folder>/<stem or the script's stem>_config.json`` (atomically)."""
    path = Path(folder) / f"{stem or Path(script).stem}_config.json"
    write_json(config, path)
    return path


def run(stage: Stage, namespace: dict[str, Any], argv: list[str] | None = None) -> Any:
    """Apply the overrides to the script's constants (``namespace`` is its ``globals()``) and run ``stage``.

    Bad input ends the process with ``<script>: <what was wrong>`` and exit code 1; a bug keeps its
    traceback.
    """
    config = apply_overrides(namespace, argv)
    script = Path(namespace["__file__"]).name
    try:
        return stage(config, script)
    except (ValueError, StageFailed) as err:
        print(f"{script}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run_script(script: str, overrides: dict[str, Any], cwd: str | Path) -> float:
    """Run a numbered script in ``cwd`` as a user would (``python script --name=value ...``), printing the
    command and its wall time; returns the seconds. ``ValueError`` when it fails (its output says why).
    For the demo and the benchmarks, which chain the scripts."""
    args = [f"--{k}={v}" for k, v in overrides.items()]
    print(f"\n$ python {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, script, *args], cwd=cwd)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise ValueError(f"{script} failed (exit {result.returncode}); see its output above")
    print(f"[{script} took {seconds:.0f} s]", flush=True)
    return seconds


def load_average() -> str:
    """The machine's load average, for timings that other processes on the machine slow down."""
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"
