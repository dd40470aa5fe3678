"""What CPU a timing ran on, and how many threads its load leaves free.

Timings differ 2-3x between a CPU with bf16 units (AVX512-BF16, AMX) and one without (AVX2 only), and
up to 20x when another process takes a core from an OpenMP thread pool; so every printed timing names
its CPU (:func:`describe_cpu`), and the demo picks its threads from the load at its start
(:func:`threads_for_load` of :func:`busy_cores`).
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import torch

__all__ = ["cpu_name", "cpu_flags", "cpu_has_amx", "describe_cpu", "busy_cores", "threads_for_load"]


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, the platform's answer elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where ``/proc/cpuinfo`` is absent)."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_has_amx(flags: set[str]) -> bool:
    """Whether ``flags`` (see :func:`cpu_flags`) include Intel AMX tiles for bf16."""
    return "amx_bf16" in flags


def describe_cpu() -> str:
    """One line naming the CPU for a timing: model, cores, the vector units ATen and oneDNN use, and
    whether bf16 runs natively (oneDNN's answer: what decides the "auto" precision), e.g.
    ``AMD EPYC, 2 cores, ATen AVX512, bf16 units: yes (AVX512-BF16), AMX: no``."""
    from light_training.runtime import cpu_has_bf16

    flags = cpu_flags()
    bf16 = cpu_has_bf16()
    kind = "AMX" if cpu_has_amx(flags) else "AVX512-BF16" if "avx512_bf16" in flags else "?"
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{cpu_name()}, {os.cpu_count()} cores, ATen {torch.backends.cpu.get_cpu_capability()}"
            f"{f', oneDNN capped at {capped}' if capped else ''}, bf16 units: {f'yes ({kind})' if bf16 else 'no'}, "
            f"AMX: {'yes' if cpu_has_amx(flags) and bf16 else 'no'}")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from ``/proc/stat``; None where it is absent."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 1.0) -> float:
    """How many cores other processes keep busy now: the CPU time spent over ``interval`` seconds, in cores.
    The load average would lag by minutes (a finished job still counts for a while); where ``/proc/stat``
    is absent, the 1-minute load average."""
    before = _cpu_times()
    if before is None:
        return os.getloadavg()[0]
    time.sleep(interval)
    after = _cpu_times()
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / max(total, 1)


def threads_for_load(cores: int, load: float) -> int:
    """Torch threads for a run starting beside ``load`` (busy cores, :func:`busy_cores`) on ``cores`` cores:
    the cores other processes leave idle, at least 1. A thread that shares its core with a busy process
    stalls the whole OpenMP team at every barrier (4-20x slower steps measured), so a core counts as
    taken from a load of 0.5 on."""
    return max(1, min(cores, cores - math.floor(load + 0.5)))
