"""Plain-text tables of a run for the terminal."""

from collections.abc import Sequence

from bench.inprocess import InProcessResult
from bench.ratios import RatioResult
from bench.runner import ServerRun


def _is_number(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "").replace("-", "").isdigit() or cell == "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to width; numbers right-aligned, text left-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    numeric = [
        bool(rows) and all(_is_number(str(row[i])) or not row[i] for row in rows)
        for i in range(len(header))
    ]
    lines = [
        "  ".join(
            str(c).rjust(w) if numeric[i] else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def load_table(runs: Sequence[ServerRun]) -> str:
    """One row per (model, server, concurrency): throughput, latency, errors, CPU, memory."""
    header = (
        "model",
        "server",
        "c",
        "req/s",
        "samples/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU cores",
        "CPU us/req",
        "bg cores",
        "PSS MiB",
    )
    rows: list[tuple[str, ...]] = []
    blank = ("",) * (len(header) - 4)
    for run in runs:
        if run.status != "ok":
            rows.append((run.model, run.server, "-", run.status, *blank))
            continue
        for p in run.points:
            errors = p.load.non_2xx + p.load.socket_errors + p.load.timeouts
            rows.append(
                (
                    run.model,
                    run.server,
                    str(p.load.concurrency),
                    _num(p.load.req_per_s, 0),
                    _num(p.samples_per_s, 0),
                    _num(p.load.p50_ms, 2),
                    _num(p.load.p99_ms, 2),
                    str(errors),
                    _num(p.server_cpu_cores, 2),
                    _num(p.server_cpu_us_per_request, 0),
                    _num(p.background_cpu_cores, 2),
                    _num(p.memory.pss_mib, 0),
                )
            )
        for concurrency in run.point_errors:  # the message is in results.json
            rows.append((run.model, run.server, str(concurrency), "error", *blank))
    return _table(header, rows)


def relative_table(runs: Sequence[ServerRun], baseline: str) -> str:
    """Each model server's req/s and latency divided by ``baseline``'s, at the same model and
    concurrency (e.g. what Ray Serve's proxy costs: ray-1 / ptserve)."""
    points = {(r.model, r.server, p.load.concurrency): p for r in runs for p in r.points}
    header = ("model", "server", "c", f"req/s / {baseline}", "p50 ratio", "p99 ratio")
    rows = []
    for (model, server, concurrency), point in points.items():
        base = points.get((model, baseline, concurrency))
        if server == baseline or base is None:
            continue
        rows.append(
            (
                model,
                server,
                str(concurrency),
                _num(_ratio(point.load.req_per_s, base.load.req_per_s), 2),
                _num(_ratio(point.load.p50_ms, base.load.p50_ms), 2),
                _num(_ratio(point.load.p99_ms, base.load.p99_ms), 2),
            )
        )
    return _table(header, rows)


def start_table(runs: Sequence[ServerRun]) -> str:
    """Cold start, idle memory and status per (model, server)."""
    header = ("model", "server", "status", "cold start s", "idle PSS MiB", "procs", "reason")
    rows = [
        (
            r.model,
            r.server,
            r.status,
            _num(r.cold_start_s, 2),
            _num(r.memory_idle.pss_mib if r.memory_idle else None, 0),
            str(r.memory_idle.processes) if r.memory_idle else "-",
            (r.reason or "").splitlines()[0][:70] if r.reason else "",
        )
        for r in runs
    ]
    return _table(header, rows)


def in_process_table(results: Sequence[InProcessResult]) -> str:
    """Samples/s of the model alone per batch size and thread count."""
    header = ("model", "batch", "threads", "samples/s", "ms/batch")
    rows = [
        (
            r.model,
            str(p.batch_size),
            str(p.threads),
            _num(p.samples_per_s, 0),
            _num(p.ms_per_batch, 3),
        )
        for r in results
        for p in r.points
    ]
    return _table(header, rows)


def ratio_table(ratios: Sequence[RatioResult]) -> str:
    """Each target ratio with its value and verdict."""
    header = ("ratio", "value", "target", "met", "note")
    verdict = {True: "yes", False: "NO", None: "n/a"}
    rows = [
        (r.name, _num(r.value, 2), r.target, verdict[r.met], (r.note or "")[:60]) for r in ratios
    ]
    return _table(header, rows)
