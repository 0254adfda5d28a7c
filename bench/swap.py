"""What swapping model versions under load costs the requests being served.

    python -m bench.swap                                # mlp and conv, 20 s per phase
    python -m bench.swap --models mlp --duration 8 --swaps 2

For each model, ptserve serves a repository holding it as version 1, with ``--watch``. wrk sends
the one-sample JSON body to ``/v1/models/m:predict`` at one concurrency for two phases of equal
length: *steady*, then *swapping*, during which new versions (copies of the model file, so each is
a full load, warm-up, swap and release) are renamed into the folder one after another, spread over
the phase. Per phase: req/s, p50/p99/max latency, non-2xx responses and socket errors. Per swap:
seconds from the rename to the first metadata listing the new version (this includes the two
looks ``--watch`` takes before it acts, at ``--watch-interval-s``). The server's RSS before the
first swap and after the last shows that old versions are released. Ratios compare the two phases
of the same run. Results: bench/results/swap.json.
"""

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.config import REPO_ROOT
from bench.loadgen import LoadResult, run_wrk, write_lua
from bench.models import create_model
from bench.procs import free_port, start_server, stop_server, wait_until_serving
from bench.procstats import group_memory

RESULTS = REPO_ROOT / "bench" / "results" / "swap.json"
POLL_S = 0.02  # how often the swapper asks which version serves
TAKEOVER_TIMEOUT_S = 300.0  # a swap that takes longer than this stops the run


def serving_versions(port: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v2/models/m")
        response = conn.getresponse()
        body = json.loads(response.read())
        return list(body.get("versions", [])) if response.status == 200 else []
    finally:
        conn.close()


def swap_versions(
    repo: Path, model: Path, port: int, count: int, spacing_s: float, seconds: list[float]
) -> None:
    """Rename versions 2, 3, ... into the folder, each ``spacing_s`` after the previous one
    began, waiting for each to serve; append each swap's duration to ``seconds``."""
    for version in range(2, count + 2):
        started = time.monotonic()
        stage = repo / "m" / f".stage-{version}"
        stage.mkdir()
        shutil.copy(model, stage / "model.pt")
        dropped = time.monotonic()
        stage.rename(repo / "m" / str(version))
        while serving_versions(port) != [str(version)]:
            if time.monotonic() - dropped > TAKEOVER_TIMEOUT_S:
                raise RuntimeError(f"version {version} did not take over")
            time.sleep(POLL_S)
        seconds.append(round(time.monotonic() - dropped, 3))
        time.sleep(max(0.0, spacing_s - (time.monotonic() - started)))


def measure(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    artefact = create_model(name, work)
    repo = work / f"repo-{name}"
    (repo / "m" / "1").mkdir(parents=True)
    shutil.copy(artefact.path, repo / "m" / "1" / "model.pt")
    shape = ", ".join(map(str, artefact.input_shape))
    (repo / "m" / "ptserve.toml").write_text(f"input_shape = [{shape}]\n")
    port = free_port()
    command = [
        sys.executable, "-m", "ptserve", "serve", str(repo), "--port", str(port), "--watch",
        "--watch-interval-s", str(args.watch_interval), "--log-level", "warning",
        "--no-access-log",
    ]  # fmt: skip
    server = start_server(command, port, work / f"{name}.log")
    try:
        wait_until_serving(server, "/v1/models/m:predict", artefact.body_path.read_bytes(), 120)
        lua = write_lua(work)
        url = f"http://127.0.0.1:{port}/v1/models/m:predict"

        def load() -> LoadResult:
            return run_wrk(url, lua, artefact.body_path, args.concurrency, args.duration, 1, 30)

        run_wrk(url, lua, artefact.body_path, args.concurrency, 2, 1, 30)  # warm-up
        steady = load()
        rss_before = group_memory(server.pgid).rss_mib
        seconds: list[float] = []
        spacing = args.duration / (args.swaps + 1)
        swapper = threading.Thread(
            target=swap_versions,
            args=(repo, artefact.path, port, args.swaps, spacing, seconds),
        )
        swapper.start()
        swapping = load()
        swapper.join()
        rss_after = group_memory(server.pgid).rss_mib
    finally:
        stop_server(server, 30)
    return {
        "model": name,
        "concurrency": args.concurrency,
        "steady": asdict(steady),
        "swapping": asdict(swapping),
        "swap_seconds": seconds,
        "rss_mib_before_swaps": rss_before,
        "rss_mib_after_swaps": rss_after,
        "ratios_swapping_to_steady": {
            "req_per_s": _ratio(swapping.req_per_s, steady.req_per_s),
            "p50": _ratio(swapping.p50_ms, steady.p50_ms),
            "p99": _ratio(swapping.p99_ms, steady.p99_ms),
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} at c={result['concurrency']}:"]
    for phase in ("steady", "swapping"):
        r = result[phase]
        lines.append(
            f"  {phase:9} {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
            f"  max {r['max_ms']} ms  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}"
        )
    lines.append(f"  swaps: {result['swap_seconds']} s from rename to serving")
    lines.append(
        f"  RSS {result['rss_mib_before_swaps']} MiB before, "
        f"{result['rss_mib_after_swaps']} MiB after; ratios {result['ratios_swapping_to_steady']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase")
    parser.add_argument("--swaps", type=int, default=3, help="swaps in the swapping phase")
    parser.add_argument("--concurrency", type=int, default=8, help="wrk connections")
    parser.add_argument("--watch-interval", type=float, default=0.5, help="--watch-interval-s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptserve-bench-swap-") as folder:
        results = [measure(name, args, Path(folder)) for name in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write("\n".join(report(r) for r in results) + "\n")


if __name__ == "__main__":
    main()
