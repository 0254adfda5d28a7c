"""The issue's target ratios for ptserve, computed from one run's measurements."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.inprocess import InProcessResult
from bench.runner import Point, ServerRun

Metric = Literal["req_per_s", "samples_per_s", "p50_ms", "p99_ms", "cold_start_s"]
IN_PROCESS = "in-process"


@dataclass(frozen=True)
class Target:
    """ptserve's ``metric`` divided by ``baseline``'s must be ``op`` ``bound``."""

    name: str
    model: str
    metric: Metric
    concurrency: int | None
    baseline: str
    op: Literal[">=", "<="]
    bound: float
    server: str = "{primary}"  # the ptserve server measured, named from the primary one


@dataclass(frozen=True)
class RatioResult:
    """A computed ratio: its value, whether it meets the target, and what it was made of."""

    name: str
    expression: str
    target: str
    value: float | None
    met: bool | None
    numerator: float | None
    denominator: float | None
    note: str | None


TARGETS: tuple[Target, ...] = (
    Target("mlp_c64_rps_vs_bare_fastapi", "mlp", "req_per_s", 64, "bare-fastapi", ">=", 1.5),
    Target("mlp_c64_rps_vs_textbook", "mlp", "req_per_s", 64, "textbook", ">=", 3.0),
    Target("mlp_c64_rps_vs_litserve", "mlp", "req_per_s", 64, "litserve", ">=", 5.0),
    Target("conv_c64_samples_vs_in_process", "conv", "samples_per_s", 64, IN_PROCESS, ">=", 0.85),
    Target("conv_c64_p99_vs_litserve", "conv", "p99_ms", 64, "litserve", "<=", 0.5),
    Target("mlp_c1_p50_vs_textbook", "mlp", "p50_ms", 1, "textbook", "<=", 1.3),
    Target("conv_c1_p50_vs_textbook", "conv", "p50_ms", 1, "textbook", "<=", 1.3),
    Target("mlp_cold_start_vs_textbook", "mlp", "cold_start_s", None, "textbook", "<=", 1.2),
    Target("conv_cold_start_vs_textbook", "conv", "cold_start_s", None, "textbook", "<=", 1.2),
    Target(
        "conv_c64_v2_binary_samples_vs_in_process",
        "conv",
        "samples_per_s",
        64,
        IN_PROCESS,
        ">=",
        0.9,
        server="{primary}-v2",
    ),
    Target(
        "conv_c64_grpc_raw_samples_vs_in_process",
        "conv",
        "samples_per_s",
        64,
        IN_PROCESS,
        ">=",
        0.9,
        server="{primary}-grpc",
    ),
)

_POINT_METRICS: dict[str, Callable[[Point], float | None]] = {
    "req_per_s": lambda p: p.load.req_per_s,
    "samples_per_s": lambda p: p.samples_per_s,
    "p50_ms": lambda p: p.load.p50_ms,
    "p99_ms": lambda p: p.load.p99_ms,
}


def _value(
    runs: Sequence[ServerRun], server: str, target: Target
) -> tuple[float | None, str | None]:
    """(value, problem): the metric for one server, and why it is missing or unclean."""
    run = next((r for r in runs if r.model == target.model and r.server == server), None)
    if run is None:
        return None, f"{server} not run on {target.model}"
    if run.status != "ok":
        return None, f"{server} {run.status}"
    if target.metric == "cold_start_s":
        return run.cold_start_s, None
    point = next((p for p in run.points if p.load.concurrency == target.concurrency), None)
    if point is None:
        return None, f"{server} has no c={target.concurrency} point"
    value = _POINT_METRICS[target.metric](point)
    if value is None:
        return None, f"{server} completed no requests at c={target.concurrency}"
    errors = point.load.non_2xx + point.load.socket_errors + point.load.timeouts
    problem = f"{server} had {errors} failed requests" if errors else None
    return value, problem


def _in_process_best(in_process: Sequence[InProcessResult], model: str) -> float | None:
    result = next((r for r in in_process if r.model == model), None)
    return result.best.samples_per_s if result else None


def compute_ratios(
    runs: Sequence[ServerRun], in_process: Sequence[InProcessResult], primary: str
) -> list[RatioResult]:
    """Every target ratio for the ``primary`` ptserve configuration."""
    results = []
    for target in TARGETS:
        server = target.server.format(primary=primary)
        numerator, problem = _value(runs, server, target)
        if target.baseline == IN_PROCESS:
            denominator = _in_process_best(in_process, target.model)
            base_problem = None if denominator else "in-process limit not measured"
        else:
            denominator, base_problem = _value(runs, target.baseline, target)
        notes = [n for n in (problem, base_problem) if n]
        value = numerator / denominator if numerator is not None and denominator else None
        met: bool | None = None
        if value is not None:
            within = value >= target.bound if target.op == ">=" else value <= target.bound
            met = within and not notes  # failed requests make a ratio untrustworthy
        at = f" c={target.concurrency}" if target.concurrency is not None else ""
        baseline_label = (
            "in-process best samples_per_s"
            if target.baseline == IN_PROCESS
            else f"{target.baseline} {target.metric}"
        )
        results.append(
            RatioResult(
                name=target.name,
                expression=f"{target.model}{at}: {server} {target.metric} / {baseline_label}",
                target=f"{target.op} {target.bound}",
                value=round(value, 3) if value is not None else None,
                met=met,
                numerator=numerator,
                denominator=denominator,
                note="; ".join(notes) or None,
            )
        )
    return results
