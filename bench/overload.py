"""Goodput under overload: does a small queue keep serving at ~10x its load?

    python -m bench.overload                 # about 40 s
    python -m bench.overload --duration 20

The bundled digits model at ptserve's defaults except ``--max-queue``. First its capacity: wrk
at 64 connections, every answer a 200. Then ten times the connections (closed loop: each
connection sends again as soon as it is answered, 503 or not) against a queue of 64 samples:
how many requests per second are still admitted and answered (200), and how the rest were
refused (503 with Retry-After, decided before the body is read) — and that none of the admitted
ones waited past its deadline (504). The goodput ratio is admitted req/s over capacity, in the
same run. Results: bench/results/overload.json.
"""

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.config import REPO_ROOT
from bench.loadgen import LoadResult, run_wrk, write_lua
from bench.procs import free_port, start_server, stop_server, wait_until_serving

DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12,
         0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0,
         0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip


def load(flags: list[str], body: Path, connections: int, duration: int, work: Path) -> LoadResult:
    """Start ptserve with ``flags``, warm it up, load it once, stop it."""
    port = free_port()
    command = [sys.executable, "-m", "ptserve", "serve", "--port", str(port), *flags]
    server = start_server(command, port, work / f"ptserve-{connections}.log")
    try:
        wait_until_serving(server, "/predict", body.read_bytes(), timeout_s=120)
        lua = write_lua(work)
        url = f"http://127.0.0.1:{port}/predict"
        run_wrk(url, lua, body, 64, 2, 1, 30)  # warm-up, not recorded
        return run_wrk(url, lua, body, connections, duration, 1, 30)
    finally:
        stop_server(server, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per load point")
    parser.add_argument("--queue", type=int, default=64, help="--max-queue under overload")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body = work / "body.json"
        body.write_text(json.dumps({"instances": [DIGIT]}))
        capacity = load([], body, 64, args.duration, work)
        overload = load(["--max-queue", str(args.queue)], body, 640, args.duration, work)
    admitted = (overload.requests - overload.non_2xx) / overload.duration_s
    refused = overload.non_2xx / overload.duration_s
    ratio = admitted / capacity.req_per_s if capacity.req_per_s else float("nan")
    summary = {
        "capacity_req_per_s": capacity.req_per_s,
        "capacity_errors": capacity.non_2xx + capacity.socket_errors + capacity.timeouts,
        "overload_connections": overload.concurrency,
        "queue": args.queue,
        "admitted_req_per_s": round(admitted, 1),
        "refused_req_per_s": round(refused, 1),
        "goodput_ratio": round(ratio, 3),
        "overload_p99_ms": overload.p99_ms,
        "overload_socket_errors": overload.socket_errors,
        "overload_timeouts": overload.timeouts,
    }
    sys.stdout.write("\n".join(f"{k:<24}{v}" for k, v in summary.items()) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(
        json.dumps(
            {"summary": summary, "capacity": asdict(capacity), "overload": asdict(overload)},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
