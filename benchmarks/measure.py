"""What the benchmarks measure with, defined once: timing, matmul peaks, FLOP counts, peak memory and the
float32 math in force. Imported by bench_speed.py and gpu_profile.py (scripts, whose top level runs)."""
from __future__ import annotations

import time
from statistics import median
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffunet.conv import pytorch_choice
from light_training.memory.live_bytes import measure_cpu_peak

__all__ = ["sync", "timed", "matmul_peak", "flops_of", "peak_bytes", "held_bytes", "inherited", "fp32_math"]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, n: int = 3) -> float:
    """Median seconds of ``n`` calls of ``fn`` on ``device`` after one warm-up call (compiles, cuDNN's search)."""
    fn()
    sync(device)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """TFLOP/s of an ``n`` x ``n`` matmul in ``dtype`` (None: 8192 on CUDA, 2048 on the CPU): the peak the
    networks' shares are of. Runs under the float32 math in force (see :func:`fp32_math`)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, n=5) / 1e12


def flops_of(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (``torch.utils.flop_counter``: convolutions, their backward, matmuls).
    Convolutions take PyTorch's kernel choice here: the direct oneDNN call of diffunet.conv would count 0."""
    with pytorch_choice(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def held_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors`` (what a call starts with on the CPU)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def peak_bytes(fn: Callable[[], Any], device: torch.device, held: int = 0) -> int:
    """The most memory allocated at once while ``fn()`` runs. CUDA: ``max_memory_allocated`` (everything the
    process holds); the CPU: ``held`` (what is allocated when it starts, :func:`held_bytes`) plus the running
    sum of the CPU allocator's events that ``torch.profiler`` records."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device)
    return measure_cpu_peak(fn, held)


def inherited(settings: Sequence[str], default: str) -> str:
    """The value of a setting that inherits: the first of ``settings`` (the operator's own, its backend's,
    the global one) that is not "none", else ``default``."""
    return next((s for s in settings if s != "none"), default)


def fp32_math(device_type: str = "cuda") -> dict[str, str]:
    """What float32 convolutions and matmuls run as now on ``device_type``, from torch's ``fp32_precision``
    switches (the operator's, its backend's, then ``torch.backends.fp32_precision``, each "none" inheriting
    the next). CUDA (cuDNN, cuBLAS): "ieee" or "tf32", and where all are "none" torch's defaults, TF32
    convolutions and IEEE matmuls. The CPU (oneDNN): "ieee", or "bf16"/"tf32" where asked for."""
    top = torch.backends.fp32_precision
    if device_type != "cuda":
        mkldnn = torch.backends.mkldnn
        return {"conv": inherited([mkldnn.conv.fp32_precision, mkldnn.fp32_precision, top], "ieee"),
                "matmul": inherited([mkldnn.matmul.fp32_precision, mkldnn.fp32_precision, top], "ieee")}
    return {"conv": inherited([torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.fp32_precision, top],
                              "tf32"),
            "matmul": inherited([torch.backends.cuda.matmul.fp32_precision, top], "ieee")}
