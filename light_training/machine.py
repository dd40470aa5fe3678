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
from typing import Mapping

import torch

__all__ = ["ONEDNN_ISA_BITS", "cpu_name", "cpu_flags", "cpu_has_amx", "onednn_isa_cap", "cpu_bf16_units",
           "this_cpu_bf16_units", "describe_cpu", "busy_cores", "threads_for_load"]

# oneDNN's ISA levels as its dnnl_cpu_isa_t bit masks (dnnl_types.h): a level includes every level whose bits
# it holds, so a cap of ONEDNN_MAX_CPU_ISA=X allows level L exactly when X's bits include L's
ONEDNN_ISA_BITS = {"SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F,
                   "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7,
                   "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF, "AVX10_1_512_AMX": 0xFEF,
                   "AVX512_CORE_AMX": 0xFEF, "AVX10_1_512_AMX_FP16": 0x1FEF, "AVX512_CORE_AMX_FP16": 0x1FEF}
_AVX512_CORE_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # oneDNN's avx512_core


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


def onednn_isa_cap(environ: Mapping[str, str]) -> str | None:
    """The ISA level oneDNN is capped at by ``environ`` (``ONEDNN_MAX_CPU_ISA``, or its older name
    ``DNNL_MAX_CPU_ISA``), upper-case; None without a cap ("ALL", "DEFAULT" or unset)."""
    value = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def _allowed(level: str, cap: str | None) -> bool:
    """Whether oneDNN may use ISA ``level`` under ``cap``; a cap oneDNN does not know is taken as no cap."""
    if cap is None or cap not in ONEDNN_ISA_BITS:
        return True
    return ONEDNN_ISA_BITS[cap] & ONEDNN_ISA_BITS[level] == ONEDNN_ISA_BITS[level]


def cpu_bf16_units(flags: set[str], cap: str | None = None) -> str:
    """How oneDNN runs bf16 on a CPU with feature ``flags`` (:func:`cpu_flags`) under the ISA ``cap``
    (:func:`onednn_isa_cap`): "AMX" or "AVX512-BF16" (native: bf16 dot products in hardware), "emulated"
    (AVX-512 without them, or capped below them: oneDNN converts to fp32 and back, slower than fp32 itself:
    the tiny model's window 0.74 s in bf16 vs 0.41 s in fp32 on an AMD EPYC capped at AVX512_CORE, issue 25),
    or "none" (no AVX-512: oneDNN has no bf16 path)."""
    if not _AVX512_CORE_FLAGS <= flags or not _allowed("AVX512_CORE", cap):
        return "none"
    if cpu_has_amx(flags) and "amx_tile" in flags and _allowed("AVX512_CORE_AMX", cap):
        return "AMX"
    if "avx512_bf16" in flags and _allowed("AVX512_CORE_BF16", cap):
        return "AVX512-BF16"
    return "emulated"


def this_cpu_bf16_units() -> str:
    """:func:`cpu_bf16_units` of this CPU's flags and this process's oneDNN cap ("none" in a torch without oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return "none"
    return cpu_bf16_units(cpu_flags(), onednn_isa_cap(os.environ))


def describe_cpu() -> str:
    """One line naming the CPU for a timing: model, cores, the vector units ATen and oneDNN use, and
    how bf16 runs (:func:`cpu_bf16_units`: what decides the "auto" precision), e.g.
    ``AMD EPYC, 2 cores, ATen AVX512, bf16 units: yes (AVX512-BF16), AMX: no`` or
    ``Intel Xeon, 4 cores, ATen AVX512, oneDNN capped at AVX512_CORE, bf16 units: no (emulated), AMX: no``."""
    cap, units = onednn_isa_cap(os.environ), this_cpu_bf16_units()
    bf16 = f"yes ({units})" if units in ("AMX", "AVX512-BF16") else "no (emulated)" if units == "emulated" else "no"
    return (f"{cpu_name()}, {os.cpu_count()} cores, ATen {torch.backends.cpu.get_cpu_capability()}"
            f"{f', oneDNN capped at {cap}' if cap else ''}, bf16 units: {bf16}, "
            f"AMX: {'yes' if units == 'AMX' else 'no'}")


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
