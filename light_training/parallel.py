"""Run a function on every case in worker processes, with a progress bar and per-case error capture."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from tqdm import tqdm

__all__ = ["map_cases"]


def _guarded(fn: Callable[[Any], Any], raw: Any) -> tuple[bool, Any]:
    try:
        return True, fn(raw)
    except ValueError as err:  # bad input (ImageReadError included); anything else is a bug and propagates
        return False, f"{raw.case}: {err}"


def map_cases(fn: Callable[[Any], Any], raw_cases: Sequence[Any], num_processes: int, desc: str,
              skip_bad_cases: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``fn`` on every case (``num_processes`` forked workers; 0 or 1: in this process) with a progress bar.

    Returns ``({case: result}, {case: error message})``. Without ``skip_bad_cases`` the first bad case
    raises ``ValueError``; cases already running are finished, the rest are not started.
    """
    results, failures = {}, {}

    def record(case: str, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            results[case] = value
            return
        failures[case] = value
        if not skip_bad_cases:
            raise ValueError(f"{value}\n(stopped; fix or remove the case, or run with --skip_bad_cases=True)")

    with tqdm(total=len(raw_cases), desc=desc, unit="case") as progress:
        if num_processes <= 1 or len(raw_cases) <= 1:
            for raw in raw_cases:
                record(raw.case, _guarded(fn, raw))
                progress.update()
        else:  # fork: the numbered scripts have no __main__ guard, so spawned workers would rerun them
            with ProcessPoolExecutor(min(num_processes, len(raw_cases)), mp_context=get_context("fork")) as pool:
                futures = {pool.submit(_guarded, fn, raw): raw.case for raw in raw_cases}
                try:
                    for future in as_completed(futures):
                        record(futures[future], future.result())
                        progress.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results, failures
