"""Soak: steady, moderate traffic on a ptserve server for a long time, and its memory drift.

    python -m bench.soak --minutes 30                      # the bundled digits model
    python -m bench.soak --minutes 60 -- --workers 2       # flags after -- go to ptserve serve

Threads send a paced mix of requests (valid and invalid /predict, V2 infer, health, metrics,
some on new connections); every answer must have its expected status. The summed RSS of the
server's processes is sampled every few seconds; the drift is the median of the last fifth of
the run against the median of the fifth after the warm-up fifth. ``tests/e2e/test_soak.py``
runs two minutes of this in CI; longer runs are this script's job.
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procs import free_port, start_server, stop_server, wait_until_serving
from bench.procstats import group_memory

DIGIT = [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0] * 8
MIX: list[tuple[str, str, object, int]] = [
    *[("POST", "/predict", {"instances": [DIGIT]}, 200)] * 14,
    ("POST", "/predict", {"instances": [[1.0, 2.0]]}, 422),
    ("POST", "/predict", {"instances": [DIGIT] * 8, "top_k": 3}, 200),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": DIGIT}]},
        200,
    ),
    ("GET", "/health/ready", None, 200),
    ("GET", "/metrics", None, 200),
]
NEW_CONNECTION_EVERY = 20
SAMPLE_EVERY_S = 2.0


@dataclass
class Soak:
    """What a soak saw: requests per outcome and (seconds, RSS MiB) samples."""

    outcomes: Counter[str] = field(default_factory=Counter)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)

    def drift(self) -> float:
        """(late - settled) / settled, medians of the last fifth and the second fifth."""
        values = [rss for _, rss in self.rss_mib]
        fifth = max(1, len(values) // 5)
        settled = statistics.median(values[fifth : 2 * fifth])
        late = statistics.median(values[-fifth:])
        return (late - settled) / settled

    def failures(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome != "ok")


def soak(
    base_url: str, rss_mib: Callable[[], float], seconds: float, rate: float, threads: int
) -> Soak:
    """Send ``rate`` requests/s from ``threads`` threads for ``seconds``, sampling RSS."""
    result = Soak()
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + seconds

    def client_loop(index: int) -> None:
        interval = threads / rate
        client = httpx.Client(base_url=base_url, timeout=60)
        n = index
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            method, path, body, status = MIX[n % len(MIX)]
            if n % NEW_CONNECTION_EVERY == 0:
                client.close()
                client = httpx.Client(base_url=base_url, timeout=60)
            try:
                response = client.request(method, path, json=body)
                outcome = "ok" if response.status_code == status else f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            with lock:
                result.outcomes[outcome] += 1
            n += threads
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        client.close()

    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    while time.monotonic() < stop_at:
        result.rss_mib.append((round(time.monotonic() - started, 1), rss_mib()))
        time.sleep(SAMPLE_EVERY_S)
    for worker in workers:
        worker.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=150, help="requests per second")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("serve_args", nargs="*", help="ptserve serve flags (after --)")
    args = parser.parse_args(argv)
    port = free_port()
    command = [sys.executable, "-m", "ptserve", "serve", "--port", str(port),
               "--no-access-log", *args.serve_args]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(command, port, Path(folder) / "server.log")
        try:
            body = json.dumps({"instances": [DIGIT]}).encode()
            wait_until_serving(server, "/predict", body, 120)
            result = soak(
                f"http://127.0.0.1:{port}",
                lambda: group_memory(server.pgid).rss_mib,
                args.minutes * 60,
                args.rate,
                args.threads,
            )
        finally:
            stop_server(server, 30)
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "requests": sum(result.outcomes.values()),
        "outcomes": dict(result.outcomes),
        "rss_mib_first_last": [result.rss_mib[0][1], result.rss_mib[-1][1]],
        "rss_drift": round(result.drift(), 4),
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.failures() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
