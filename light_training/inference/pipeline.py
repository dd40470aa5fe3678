"""The prediction pipeline: CPU work in worker processes beside the network, and a case that runs out of
GPU memory redone with its whole-volume buffers on the CPU.

Three stages per case: ``load`` (read, check, preprocess), ``predict`` (the network, in this process, on
the device) and ``export`` (restore to the source grid, write). With ``num_processes_preprocessing`` =
P > 0 and ``num_processes_export`` = E > 0, P worker processes load the next cases and E write the
finished ones while the network runs. The queues are bounded: at most P + 1 cases are loaded ahead and
at most E + 1 wait to be written, so with the case in the network at most P + E + 3 cases are in memory
(2 + 1 + 2 = 6 with the defaults on CUDA; without workers, one). Workers are forked (the numbered scripts
have no ``__main__`` guard, which spawned or forkserver workers would need: both rerun the main module), all
at once when :class:`WorkerPools` is made, which the prediction stage does before a model touches the GPU: a
fork of a process with a live CUDA context or inductor's compile threads is fragile (a child that touches
CUDA dies, a lock held by another thread at the fork stays held). Results travel back pickled.

An error in a worker ends the run cleanly: the other workers are stopped and joined, the cases already
written stay (with their records, so a restart resumes), and the error names the case and its file.
With ``skip_bad_input`` a case whose input is bad (``ValueError``) is listed and the others go on.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from concurrent.futures import Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from light_training.inference.prediction import InferenceSettings, predict_ensemble

__all__ = ["PipelineError", "CaseFailed", "default_workers", "allocation_failure", "oom_next_step", "empty_cache",
           "predict_with_fallback", "WorkerPools", "check_all", "run_pipeline"]

Members = Sequence[tuple[torch.nn.Module, InferenceSettings]]


class PipelineError(RuntimeError):
    """A case could not be loaded or written; the message names the case (and file) and what was kept."""


class CaseFailed(RuntimeError):
    """One case could not be predicted (out of memory even with the buffers on the CPU); the others go on."""


def default_workers(device_type: str, cpu_count: int) -> tuple[int, int]:
    """``(num_processes_preprocessing, num_processes_export)`` when the constants are None: on CUDA
    (2, 1), fewer when the CPU has fewer than 4 cores (the main process feeds the GPU); on the CPU
    (0, 0), where the workers take the cores the network needs (measured: benchmarks/bench_prediction.py)."""
    if device_type != "cuda":
        return 0, 0
    spare = max(cpu_count - 1, 0)
    return min(2, spare), min(1, spare)


# how a failed allocation reads when it is not torch's own OutOfMemoryError: cuDNN and cuBLAS report theirs
# as a RuntimeError with their status name, a CUDA kernel launch or a library as "out of memory"
_ALLOCATION_FAILURES = {"CUDNN_STATUS_ALLOC_FAILED": "cuDNN", "CUBLAS_STATUS_ALLOC_FAILED": "cuBLAS",
                        "out of memory": "CUDA"}


def allocation_failure(error: BaseException) -> str | None:
    """Who failed to allocate memory when ``error`` was raised: "torch" (``torch.OutOfMemoryError``, the
    caching allocator), "cuDNN", "cuBLAS" or "CUDA" (a ``RuntimeError`` naming the failure); None for any
    other error."""
    if isinstance(error, torch.OutOfMemoryError):
        return "torch"
    if isinstance(error, RuntimeError):
        message = str(error)
        for marker, who in _ALLOCATION_FAILURES.items():
            if marker.lower() in message.lower():
                return who
    return None


def oom_next_step(error: BaseException, buffers_on_cpu: bool) -> str:
    """What to do after ``error`` while predicting a case: "raise" (not an allocation failure,
    :func:`allocation_failure`), "retry_buffers_on_cpu" (the first time: the whole-volume sums to the CPU,
    windows stay on the GPU), "fail" (out of memory with the buffers already on the CPU: list the case,
    predict the others)."""
    if allocation_failure(error) is None:
        return "raise"
    return "fail" if buffers_on_cpu else "retry_buffers_on_cpu"


def empty_cache(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back (after an out-of-memory error); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def predict_with_fallback(members: Members, image: Any, device: torch.device, seed: int | None,
                          case: str = "") -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """:func:`predict_ensemble`, redone once with ``buffers_on_cpu`` after an allocation failure (torch's,
    cuDNN's, cuBLAS's: :func:`oom_next_step`), with a note naming the case and the error;
    ``(probabilities, uncertainty, notes)``. ``CaseFailed`` when the retry runs out of memory too."""
    buffers_on_cpu = all(s.buffers_on_cpu for _, s in members)
    notes: list[str] = []
    while True:
        try:
            probabilities, uncertainty = predict_ensemble(members, image, device, seed)
            return probabilities, uncertainty, notes
        except Exception as err:  # noqa: BLE001 - oom_next_step re-raises everything but out-of-memory
            step, message = oom_next_step(err, buffers_on_cpu), f"{type(err).__name__}: {str(err)[:200]}"
            if step == "raise":
                raise
            who = allocation_failure(err)
        empty_cache(device)  # outside the except block: the traceback no longer holds the tensors
        if step == "fail":
            raise CaseFailed(f"{case}: out of memory on {device} ({who}) even with the whole-volume buffers on the "
                             f"CPU ({message}); try a smaller sw_batch_size or precision='bf16'")
        note = (f"{case}: out of memory on {device} ({who}: {message}); predicting it again with the whole-volume "
                f"buffers on the CPU (windows still on {device})")
        print(f"warning: {note}", flush=True)
        notes.append(note)
        members = [(m, dataclasses.replace(s, buffers_on_cpu=True)) for m, s in members]
        buffers_on_cpu = True


def _guarded(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except ValueError as err:  # bad input (ImageReadError included)
        return False, str(err)


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """``workers`` forked processes, all started now (None for 0: the stage runs in this process)."""
    if workers <= 0:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_worker_init)
    wait([pool.submit(os.getpid) for _ in range(workers)])  # a fork pool forks every worker at its first task
    return pool


class WorkerPools:
    """The pipeline's two process pools (loading, writing), their workers forked when this is made: make it
    before anything touches the GPU (module docstring). A context manager; closing joins every worker."""

    def __init__(self, num_processes_preprocessing: int = 0, num_processes_export: int = 0):
        self.sizes = (max(0, int(num_processes_preprocessing)), max(0, int(num_processes_export)))
        self.loader = _start_pool(self.sizes[0])
        try:
            self.writer = _start_pool(self.sizes[1])
        except BaseException:
            self.close(cancel=True)
            raise

    def close(self, cancel: bool = False) -> None:
        for pool in (self.loader, getattr(self, "writer", None)):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=cancel)  # joins every worker: no orphans

    def __enter__(self) -> WorkerPools:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(cancel=error is not None)


class _Stage:
    """One pipeline stage: in this process (``pool`` None) or in a pool of ``workers`` processes, at most
    ``workers`` + 1 items submitted and not yet collected."""

    def __init__(self, fn: Callable[[Any], Any], pool: ProcessPoolExecutor | None, workers: int, what: str):
        self.fn, self.what, self.pool = fn, what, pool
        self.depth = (workers if pool is not None else 0) + 1
        self.pending: collections.deque[tuple[str, Future | tuple[bool, Any]]] = collections.deque()

    def submit(self, name: str, item: Any) -> None:
        self.pending.append((name, self.pool.submit(_guarded, self.fn, item) if self.pool else _guarded(self.fn, item)))

    def full(self) -> bool:
        return len(self.pending) >= self.depth

    def collect(self) -> tuple[str, bool, Any]:
        """The oldest item's ``(name, ok, result or the bad input's message)``; ``PipelineError`` for any
        other failure (a bug, a full disk, a worker killed), naming the case."""
        name, outcome = self.pending.popleft()
        try:
            ok, value = outcome.result() if isinstance(outcome, Future) else outcome
        except Exception as err:  # noqa: BLE001 - reported with the case's name, the run then stops
            raise PipelineError(f"{name}: {self.what} failed ({type(err).__name__}: {err})") from err
        return name, ok, value


def _worker_init() -> None:
    torch.set_num_threads(1)  # a worker's torch calls must not fight the network for the cores


def check_all(items: Sequence[tuple[str, Any]], check: Callable[[Any], Any], pools: WorkerPools
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``check(item)`` for every ``(name, item)`` in the loading pool (or here, without one), all of them
    whatever fails: ``({name: result}, {name: the bad input's message})`` (a ``ValueError`` is a bad input).
    ``PipelineError`` for any other failure, naming the case."""
    stage = _Stage(check, pools.loader, pools.sizes[0], "checking")
    for name, item in items:
        stage.submit(name, item)
    results, bad = {}, {}
    with tqdm(total=len(items), desc="checking scans", unit="case") as bar:
        while stage.pending:
            name, ok, value = stage.collect()
            (results if ok else bad)[name] = value
            bar.update()
    return results, bad


def run_pipeline(items: Sequence[tuple[str, Any]], load: Callable[[Any], Any], predict: Callable[[Any], Any],
                 export: Callable[[Any], Any], num_processes_preprocessing: int = 0, num_processes_export: int = 0,
                 skip_bad_input: bool = False, progress: bool = True, pools: WorkerPools | None = None
                 ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Run ``export(predict(load(item)))`` for every ``(name, item)``, in order, the loads and exports in
    workers (see the module's docstring): those of ``pools`` (started earlier, closed by their owner), else
    ``num_processes_preprocessing`` and ``num_processes_export`` forked now and joined at the end.
    ``predict`` runs here and may raise :class:`CaseFailed`.

    Returns ``(written case names, {case: bad input}, {case: failure})``. ``PipelineError`` (the run
    stops; what was written stays) for a bad input without ``skip_bad_input`` or any worker failure.
    """
    own = pools is None
    pools = WorkerPools(num_processes_preprocessing, num_processes_export) if own else pools
    loader = _Stage(load, pools.loader, pools.sizes[0], "reading and preprocessing")
    writer = _Stage(export, pools.writer, pools.sizes[1], "restoring and writing")
    written, bad, failed = [], {}, {}

    def drain(until_not_full: bool) -> None:
        while writer.pending and (writer.full() or not until_not_full):
            name, ok, value = writer.collect()
            if not ok:
                raise PipelineError(f"{name}: restoring and writing failed: {value}")
            written.append(name)

    queue = collections.deque(items)
    finished = False
    try:
        with tqdm(total=len(items), desc="cases", unit="case", disable=not progress) as bar:
            while queue or loader.pending:
                while queue and not loader.full():
                    loader.submit(*queue.popleft())
                name, ok, value = loader.collect()
                if not ok:
                    if not skip_bad_input:
                        raise PipelineError(f"{value}\n(stopped; fix or remove the case, or run with "
                                            f"--skip_bad_cases=True)")
                    bad[name] = value
                else:
                    try:
                        job = predict(value)
                    except CaseFailed as err:
                        failed[name] = str(err)
                    else:
                        del value  # the input is no longer needed: free it before the next case
                        drain(until_not_full=True)
                        writer.submit(name, job)
                        del job
                bar.update()
            drain(until_not_full=False)
        finished = True
    finally:
        if own:
            pools.close(cancel=not finished)
        elif not finished:  # the owner's pools go on: drop what this run left queued
            for stage in (loader, writer):
                for _, outcome in stage.pending:
                    if isinstance(outcome, Future):
                        outcome.cancel()
    return written, bad, failed
