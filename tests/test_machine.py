"""The CPU and run-time choices the timings and the demo depend on."""
import os

import pytest
import torch

import light_training.machine as machine
from light_training.machine import cpu_bf16_units, cpu_has_amx, describe_cpu, onednn_isa_cap, threads_for_load
from light_training.compilation import resolve_training_compile
from light_training.runtime import cpu_has_bf16, cpu_precision, resolve_precision

# /proc/cpuinfo flags by oneDNN ISA level (the bf16-relevant ones), with CPUs that report them
AVX512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
CPUS = {
    "AVX2": {"avx2", "fma"},  # Haswell to Alder Lake, AMD Zen 1-3
    "AVX512_CORE": AVX512,  # Skylake-SP
    "AVX512_CORE_VNNI": AVX512 | {"avx512_vnni"},  # Cascade Lake, Ice Lake
    "AVX512_CORE_BF16": AVX512 | {"avx512_vnni", "avx512_bf16"},  # Cooper Lake, AMD Zen 4 and 5
    "AVX512_CORE_AMX": AVX512 | {"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"},  # Sapphire Rapids
}
UNITS = {"AVX2": "none", "AVX512_CORE": "emulated", "AVX512_CORE_VNNI": "emulated", "AVX512_CORE_BF16": "AVX512-BF16",
         "AVX512_CORE_AMX": "AMX"}
LEVELS = list(CPUS)  # in oneDNN's order


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_native_only_with_bf16_units(level):
    flags = CPUS[level]
    assert cpu_bf16_units(flags) == UNITS[level]
    assert cpu_precision("auto", UNITS[level]) == ("bf16" if UNITS[level] in ("AMX", "AVX512-BF16") else "fp32")
    assert [cpu_precision(p, UNITS[level]) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]  # as asked
    # capping oneDNN at a lower level turns bf16 into what that level runs (an AMX CPU capped at AVX512_CORE
    # emulates bf16, as issue 25 reproduced); a cap above the CPU changes nothing
    for cap in LEVELS:
        expected = UNITS[LEVELS[min(LEVELS.index(cap), LEVELS.index(level))]]
        assert cpu_bf16_units(flags, cap) == expected, (level, cap)
    assert cpu_bf16_units(flags, "SSE41") == "none" and cpu_bf16_units(flags, "AVX512_CORE_AMX_FP16") == UNITS[level]


def test_onednn_cap_from_the_environment():
    assert onednn_isa_cap({}) is None and onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "ALL"}) is None
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "avx512_core"}) == "AVX512_CORE"
    assert onednn_isa_cap({"DNNL_MAX_CPU_ISA": "AVX2"}) == "AVX2"  # oneDNN's older name
    assert cpu_bf16_units(CPUS["AVX512_CORE_AMX"], "NOT_AN_ISA") == "AMX"  # oneDNN ignores a cap it does not know


@pytest.mark.parametrize("level,cap", [("AVX512_CORE", None), ("AVX512_CORE_AMX", "AVX512_CORE"),
                                       ("AVX512_CORE_BF16", None), ("AVX2", None)])
def test_auto_precision_and_description_follow_the_flags(monkeypatch, level, cap):
    """What this process decides on a CPU of ``level``: "auto" and describe_cpu, flags and cap patched in."""
    monkeypatch.setattr(machine, "cpu_flags", lambda: CPUS[level])
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    units = cpu_bf16_units(CPUS[level], cap)
    native = units in ("AMX", "AVX512-BF16")
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert cpu_has_bf16() == native
    line = describe_cpu()
    assert ("bf16 units: no (emulated)" in line) == (units == "emulated")
    assert (f"bf16 units: yes ({units})" in line) == native and (f"capped at {cap}" in line) == bool(cap)


def test_training_compile_on_cuda_only_unless_asked():
    assert resolve_training_compile(None, torch.device("cuda", 1))
    assert not resolve_training_compile(None, torch.device("cpu"))
    assert resolve_training_compile(True, torch.device("cpu"))
    assert not resolve_training_compile(False, torch.device("cuda", 0))
    with pytest.raises(ValueError, match="torch_compile"):
        resolve_training_compile("yes", torch.device("cpu"))


def test_threads_left_by_the_load():
    assert threads_for_load(2, 0.1) == 2  # idle
    assert threads_for_load(2, 1.0) == 1  # one busy process
    assert threads_for_load(2, 3.7) == 1  # never 0
    assert threads_for_load(16, 4.4) == 12


def test_cpu_description_names_cores_and_bf16():
    line = describe_cpu()
    assert f"{os.cpu_count()} cores" in line
    assert ("bf16 units: yes" in line) == cpu_has_bf16()
    assert cpu_has_amx({"avx512f", "amx_bf16", "amx_tile"}) and not cpu_has_amx({"avx2", "avx512_bf16"})


def test_busy_cores_sees_a_busy_process():
    import subprocess
    import sys

    from light_training.machine import busy_cores

    idle = busy_cores(0.5)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = busy_cores(1.0)
    finally:
        spinner.kill()
    assert 0 <= idle <= os.cpu_count() and busy >= 0.7  # one core taken by the spinning process
