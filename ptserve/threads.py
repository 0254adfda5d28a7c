"""Where the model runs and with how many threads, chosen from measurements at warm-up.

A model whose full batch takes under a millisecond runs inline on the event loop: a hop to a
thread costs more. A slower model runs on inference threads; then three layouts are timed on a
full batch — torch threads = cores - 1 (a core left to the event loop), = cores, and one
single-threaded batch per core at once — and the one with the best predicted throughput wins,
counting the event loop's own work per request (``LOOP_COST_S``) against the cores it shares.
``--execution``, ``--torch-threads`` and ``--inference-threads`` override the choice.
"""

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptserve.settings import Settings

INLINE_BELOW_S = 0.001  # a full batch faster than this runs on the event loop
# The event loop's CPU per request (HTTP, decoding, encoding, bookkeeping) for a small JSON
# body, as measured with bench/ on the 2-core development machine; large bodies cost more, so
# this errs towards leaving the loop a core.
LOOP_COST_S = 200e-6
PASSES = 2


@dataclass(frozen=True)
class ThreadPlan:
    """The chosen layout and what it was chosen from."""

    execution: str  # "inline" or "thread"
    torch_threads: int
    inference: int  # batches in the model at once, each on its own thread
    batch_seconds: float  # the full batch's time in the chosen layout
    reason: str

    def describe(self, batch: int) -> str:
        where = "on the event loop" if self.execution == "inline" else "on inference threads"
        return (
            f"a batch of {batch} takes {self.batch_seconds * 1000:.2f} ms; the model runs {where}"
            f" with {self.torch_threads} torch thread(s) x {self.inference} batch(es) at once"
            f" ({self.reason})"
        )

    def describe_dict(self) -> dict[str, Any]:
        return {
            "torch": self.torch_threads,
            "inference": self.inference,
            "batch_ms": round(self.batch_seconds * 1000, 3),
            "reason": self.reason,
        }


def available_cores(workers: int) -> int:
    """This worker's share of the CPUs it may run on (affinity and a cgroup quota count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota()
    total = min(cores or 1, quota) if quota else (cores or 1)
    return max(1, total // workers)


def choose_threads(settings: Settings, forward: Callable[[], object]) -> ThreadPlan:
    """Time ``forward`` (one full batch) in the candidate layouts, pick one, and set torch's
    thread count to it."""

    def measure(threads: int, inference: int) -> float:
        if inference == 1:
            return _timed(forward, threads)
        return _timed_concurrently(forward, inference)

    plan = plan_threads(settings, available_cores(settings.workers), measure)
    torch.set_num_threads(plan.torch_threads)
    return plan


def plan_threads(
    settings: Settings, cores: int, measure: Callable[[int, int], float]
) -> ThreadPlan:
    """The layout to serve with. ``measure(torch_threads, inference)`` gives the seconds a full
    batch takes in a layout (with ``inference`` batches at once: the wall time of them all)."""
    fixed_torch = settings.torch_threads
    low = fixed_torch or max(1, cores - 1)
    inference = settings.inference_threads or 1
    seconds = measure(low, 1)
    execution = settings.execution
    if execution == "auto":
        execution = "inline" if seconds < INLINE_BELOW_S and inference == 1 else "thread"
    if execution == "inline":
        return ThreadPlan("inline", low, 1, seconds, "a full batch is faster than a thread hop")
    if fixed_torch is not None or settings.inference_threads is not None or cores == 1:
        return ThreadPlan("thread", low, inference, seconds, "as set")
    candidates = [(low, 1, seconds), (cores, 1, measure(cores, 1)), (1, cores, measure(1, cores))]
    best = max(candidates, key=lambda c: _predicted(c[2], c[0] * c[1], cores, c[1]))
    rates = ", ".join(f"{t}x{i}: {i / s:.1f} batches/s" for t, i, s in candidates)
    return ThreadPlan("thread", best[0], best[1], best[2], f"measured {rates}")


def _predicted(seconds: float, busy: int, cores: int, inference: int) -> float:
    """Batches per second a layout should serve: the model's own rate, slowed by the event
    loop's work when the model's threads take every core."""
    rate = inference / seconds
    if busy < cores:
        return rate
    return rate / (1 + LOOP_COST_S * rate * busy / cores)


def _timed(forward: Callable[[], object], threads: int) -> float:
    torch.set_num_threads(threads)
    best = float("inf")
    for _ in range(PASSES):
        started = time.perf_counter()
        forward()
        best = min(best, time.perf_counter() - started)
    return best


def _timed_concurrently(forward: Callable[[], object], count: int) -> float:
    """Wall time of ``count`` single-threaded batches run at once (one per thread)."""
    torch.set_num_threads(1)
    best = float("inf")
    with ThreadPoolExecutor(count) as pool:
        for _ in range(PASSES):
            started = time.perf_counter()
            for done in [pool.submit(forward) for _ in range(count)]:
                done.result()
            best = min(best, time.perf_counter() - started)
    return best


def _cgroup_quota() -> int | None:
    """The CPUs a cgroup v2 ``cpu.max`` quota allows, rounded up; None without one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))
