"""The CPU and run-time choices the timings and the demo depend on."""
import os

import pytest
import torch

from light_training.machine import cpu_has_amx, describe_cpu, threads_for_load
from light_training.runtime import cpu_has_bf16, resolve_training_compile


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
