"""Where a ptserve server's time goes under load: a py-spy profile, summed by part.

    python -m bench.profile                    # the MLP at defaults, c=64, 15 s
    python -m bench.profile --model conv -- --execution thread

ptserve serves the benchmark model (ptserve's defaults, plus any flags after ``--``); wrk loads it
at 64 connections while ``py-spy record`` samples every thread. Each sample goes to the part of
ptserve (or the stack beneath it) its innermost recognised frame belongs to; the table gives
each part's share of the samples. Requires wrk and py-spy (``pip install py-spy``).
"""

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.loadgen import run_wrk, write_lua
from bench.models import create_model
from bench.procs import free_port, start_server, stop_server, wait_until_serving

# (part, what a frame's "function (file:line)" text contains), tried from the innermost frame
PARTS = [
    ("model forward (torch)", "ptserve/runner.py"),
    ("label scores, once per batch", "scores (ptserve/postprocess.py"),
    ("decode and validate the body", "ptserve/validation.py"),
    ("decode and validate the body", "ptserve/protocols/json_arrays.py"),
    ("predictions and encoding", "ptserve/postprocess.py"),
    ("predictions and encoding", "encode (ptserve/protocols/simple.py"),
    ("batcher", "ptserve/batching.py"),
    ("access log (writer thread)", "ptserve/observability/access.py"),
    ("metrics", "prometheus_client/"),
    ("metrics", "ptserve/observability/metrics.py"),
    ("gateway: ids, timing, keys, errors, metrics tally", "ptserve/gateway.py"),
    ("pipeline, service and codec", "ptserve/"),
    ("uvicorn (HTTP parsing and writing)", "uvicorn/"),
]
OTHER = "event loop and the rest"


def part_of(stack: str) -> str:
    """The part one sampled stack (py-spy's raw frames, outermost first) belongs to."""
    for frame in reversed(stack.split(";")):
        for part, marker in PARTS:
            if marker in frame:
                return part
    return OTHER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("flags", nargs="*", help="ptserve serve flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = create_model(args.model, work)
        port = free_port()
        shape = [str(d) for d in model.input_shape]
        command = [sys.executable, "-m", "ptserve", "serve", str(model.path), "--port",
                   str(port), "--input-shape", *shape, *args.flags]  # fmt: skip
        server = start_server(command, port, work / "server.log")
        try:
            wait_until_serving(server, "/predict", model.body_path.read_bytes(), 300)
            lua = write_lua(work)
            url = f"http://127.0.0.1:{port}/predict"
            run_wrk(url, lua, model.body_path, 64, 2, 1, 30)  # warm-up
            raw = work / "profile.txt"
            load = threading.Thread(
                target=run_wrk, args=(url, lua, model.body_path, 64, args.seconds + 4, 1, 30)
            )
            load.start()
            subprocess.run(
                ["py-spy", "record", "--pid", str(server.popen.pid), "--duration",
                 str(args.seconds), "--rate", "250", "--format", "raw", "--nonblocking",
                 "--output", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            load.join()
        finally:
            stop_server(server, 30)
        samples: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples[part_of(stack)] += int(count)
    total = sum(samples.values())
    rows = [f"{'part':<52}share of samples ({total} samples)"]
    rows += [f"{part:<52}{n / total:>6.1%}" for part, n in samples.most_common()]
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
