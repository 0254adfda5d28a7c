"""ptserve against the textbook fastai deployment, for one fastai vision export.

    python examples/fastai_vision/run.py      # once: trains, exports and converts the learner
    python -m bench.fastai_vision             # in an environment with torchvision

Three servers get the same JSON body (one held-out digit PNG, base64) from wrk at each
concurrency, one after the other on this machine: ptserve on the converted folder (``ptserve
convert``: no fastai in the server), ptserve on the export itself (``--trust-pickle``: fastai's
own transforms) and the textbook server. The table gives each one's throughput and latency and
its ratio to the textbook server. Results: bench/results/fastai_vision.json.
"""

import argparse
import base64
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.config import REPO_ROOT
from bench.loadgen import LoadResult, run_wrk, write_lua
from bench.procs import free_port, start_server, stop_server, wait_until_serving

EXAMPLE = REPO_ROOT / "examples" / "fastai_vision" / "build"
PTSERVE = ["--log-level", "warning", "--no-access-log"]
# name: the server's arguments, given the export, the converted folder and the port
SERVERS = {
    "ptserve": lambda export, folder, port: ["-m", "ptserve", "serve", folder,
                                             "--port", str(port), *PTSERVE],
    "trusted": lambda export, folder, port: ["-m", "ptserve", "serve", export, "--trust-pickle",
                                             "--port", str(port), *PTSERVE],
    "textbook": lambda export, folder, port: ["-m", "bench.servers.fastai_textbook", export,
                                              "--port", str(port)],
}  # fmt: skip


def measure(
    name: str, sources: tuple[Path, Path], body: Path, concurrency: list[int], duration: int,
    work: Path,
) -> list[LoadResult]:  # fmt: skip
    """Start one server, load it at each concurrency, stop it."""
    port = free_port()
    command = [sys.executable, *SERVERS[name](str(sources[0]), str(sources[1]), port)]
    server = start_server(command, port, work / f"{name}.log")
    try:
        wait_until_serving(server, "/predict", body.read_bytes(), timeout_s=120)
        lua = write_lua(work)
        url = f"http://127.0.0.1:{port}/predict"
        run_wrk(url, lua, body, concurrency[0], 2, 1, 30)  # warm-up, not recorded
        return [run_wrk(url, lua, body, c, duration, 1, 30) for c in concurrency]
    finally:
        stop_server(server, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=EXAMPLE / "export.pkl")
    parser.add_argument("--folder", type=Path, default=EXAMPLE / "digits", help="converted")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    if not args.export.is_file() or not (args.folder / "ptserve.json").is_file():
        sys.exit(f"{args.export}: no export or folder; run python examples/fastai_vision/run.py")
    image = sorted((args.export.parent / "held_out").glob("*.png"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body = work / "body.json"
        encoded = base64.b64encode(image.read_bytes()).decode()
        body.write_text(json.dumps({"instances": [{"image": encoded}]}))
        results = {
            name: measure(
                name, (args.export, args.folder), body, args.concurrency, args.duration, work
            )
            for name in SERVERS
        }
    rows = ["server    conc    req/s    p50 ms    p99 ms  errors   ratio (req/s)"]
    for name, points in results.items():
        for point, base in zip(points, results["textbook"], strict=True):
            errors = point.non_2xx + point.socket_errors + point.timeouts
            ratio = point.req_per_s / base.req_per_s if base.req_per_s else float("nan")
            rows.append(
                f"{name:<9}{point.concurrency:>5}{point.req_per_s:>9.1f}{point.p50_ms or 0:>10.2f}"
                f"{point.p99_ms or 0:>10.2f}{errors:>8}{ratio:>10.2f}x"
            )
    sys.stdout.write("\n".join(rows) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fastai_vision.json").write_text(
        json.dumps({k: [asdict(p) for p in v] for k, v in results.items()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
