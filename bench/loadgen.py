"""Drive a server with wrk: POST one JSON body from a file, report throughput and latency."""

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_JSON "

# The body is read in init() (wrk formats the request after it), and done() prints exact
# numbers as one JSON line so nothing depends on parsing wrk's human-readable units.
LUA_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  if args[2] then  -- an Open Inference Protocol binary body: its JSON header's length
    wrk.headers["Content-Type"] = "application/octet-stream"
    wrk.headers["Inference-Header-Content-Length"] = args[2]
  end
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"max_us":%d}\\n',
    "MARKER", summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
""".replace("MARKER", RESULT_MARKER)


class LoadError(RuntimeError):
    """wrk failed or printed no result."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. ``non_2xx`` counts responses with status >= 400 (wrk's "Non-2xx")."""

    concurrency: int
    duration_s: float
    requests: int
    req_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    non_2xx: int
    socket_errors: int
    timeouts: int
    client_cpu_s: float


def wrk_version() -> str:
    """The first line wrk prints about itself, or 'missing'."""
    if shutil.which("wrk") is None:
        return "missing"
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def write_lua(directory: Path) -> Path:
    """Write the wrk script into ``directory`` and return its path."""
    path = directory / "post_body.lua"
    path.write_text(LUA_SCRIPT)
    return path


def run_wrk(
    url: str,
    lua_path: Path,
    body_path: Path,
    concurrency: int,
    duration_s: int,
    threads: int,
    timeout_s: int,
    header_length: int | None = None,
) -> LoadResult:
    """Run wrk against ``url`` for ``duration_s`` seconds at ``concurrency`` connections."""
    command = [
        "wrk",
        f"-t{min(threads, concurrency)}",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(lua_path),
        url,
        "--",
        str(body_path),
        *([str(header_length)] if header_length is not None else []),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise LoadError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}")
    raw = json.loads(line[len(RESULT_MARKER) :])
    return load_result(
        raw,
        concurrency,
        raw["duration_us"] / 1e6,
        non_2xx=raw["status"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"],
        timeouts=raw["timeout"],
        client_cpu_s=client_cpu,
    )


def load_result(
    raw: dict[str, Any],
    concurrency: int,
    duration: float,
    *,
    non_2xx: int,
    socket_errors: int,
    timeouts: int,
    client_cpu_s: float,
) -> LoadResult:
    """A load generator's report (``requests`` and latencies in µs: ``p50_us`` ... ``max_us``,
    zeros when nothing was answered) as a ``LoadResult``."""
    answered = raw["requests"] > 0

    def ms(key: str) -> float | None:
        return round(raw[key] / 1e3, 3) if answered else None

    return LoadResult(
        concurrency=concurrency,
        duration_s=round(duration, 3),
        requests=raw["requests"],
        req_per_s=round(raw["requests"] / duration, 1) if duration else 0.0,
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        mean_ms=ms("mean_us"),
        max_ms=ms("max_us"),
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        timeouts=timeouts,
        client_cpu_s=round(client_cpu_s, 2),
    )
