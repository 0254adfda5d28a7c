"""CPU instructions per request of each server, counted by valgrind: a figure a busy machine
cannot blur.

    python -m bench.instructions                      # about 3 minutes
    python -m bench.instructions --servers ptserve bare-fastapi --seconds 10

Each server runs under ``valgrind --tool=callgrind`` with counting off; once it answers, wrk
warms it up, counting is switched on for ``--seconds`` of wrk load (c=64, the MLP's one-sample
body) and off again, and the server is stopped. Instructions per request = instructions counted
/ requests answered in that window (the server's every thread; wrk runs outside valgrind). The
server runs some 50 times slower under valgrind, so batches form as under heavy load. Requires
valgrind (Debian's ``valgrind``) and wrk. Results: bench/results/instructions.json.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.config import REPO_ROOT
from bench.loadgen import run_wrk, write_lua
from bench.models import create_model
from bench.procs import free_port, start_server, stop_server, wait_until_serving
from bench.registry import ServerSpec, select_servers

DEFAULT_SERVERS = ("bare-starlette", "bare-fastapi", "textbook", "ptserve", "ptserve-no-access-log")
COLLECTED = re.compile(r"Collected : (\d+)")


def count(spec: ServerSpec, seconds: int, work: Path) -> dict[str, float]:
    """Instructions and requests of ``spec`` under load."""
    model = create_model("mlp", work)
    port = free_port()
    command = spec.command(model, port)
    assert command[0] == sys.executable, command
    valgrind_log = work / f"{spec.name}.vg"
    counted = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--log-file={valgrind_log}",
        f"--callgrind-out-file={work}/callgrind.out.%p", *command,
    ]  # fmt: skip
    server = start_server(counted, port, work / f"{spec.name}.log")
    try:
        wait_until_serving(server, spec.predict_path, model.body_path.read_bytes(), 900)
        lua = write_lua(work)
        url = f"http://127.0.0.1:{port}{spec.predict_path}"
        run_wrk(url, lua, model.body_path, 64, 3, 1, 60)  # warm-up, not counted
        _instrument(server.popen.pid, "on")
        load = run_wrk(url, lua, model.body_path, 64, seconds, 1, 60)
        _instrument(server.popen.pid, "off")
    finally:
        stop_server(server, 120)
    found = COLLECTED.findall(valgrind_log.read_text())
    instructions = sum(int(n) for n in found)
    answered = load.requests - load.non_2xx
    return {
        "requests": answered,
        "instructions": instructions,
        "instructions_per_request": round(instructions / answered) if answered else 0,
    }


def _instrument(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=list(DEFAULT_SERVERS))
    parser.add_argument("--seconds", type=int, default=20, help="counted seconds of load")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in select_servers(tuple(args.servers)):
            results[spec.name] = count(spec, args.seconds, Path(tmp))
            sys.stderr.write(f"{spec.name}: {results[spec.name]}\n")
    base = results.get("bare-fastapi", {}).get("instructions_per_request")
    rows = ["server                   instructions/request   vs bare-fastapi"]
    for name, row in results.items():
        ratio = f"{base / row['instructions_per_request']:.2f}x" if base else "-"
        rows.append(f"{name:<25}{row['instructions_per_request']:>20,}{ratio:>18}")
    sys.stdout.write("\n".join(rows) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
