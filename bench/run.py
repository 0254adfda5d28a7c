"""Orchestrate a whole benchmark run and write results.json and throughput.png."""

import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.cli import parse_options
from bench.config import Options
from bench.inprocess import InProcessResult, measure_in_process
from bench.loadgen import write_lua
from bench.machine import load_average, machine_info
from bench.models import ModelArtifact, create_model
from bench.plot import plot_results
from bench.procstats import background_cores
from bench.ratios import compute_ratios
from bench.registry import ServerSpec, select_servers
from bench.report import in_process_table, load_table, ratio_table, relative_table, start_table
from bench.runner import ServerRun, run_server

logger = logging.getLogger("bench")

BUSY_WARNING_CORES = 0.2


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ptserve-bench-") as tmp:
        yield Path(tmp)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _estimate_s(options: Options, servers: Sequence[ServerSpec]) -> float:
    per_point = options.duration_s + options.warmup_s + 1
    load = len(options.models) * len(servers) * (len(options.concurrencies) * per_point + 5)
    in_process = 12 * options.in_process_round_s * (options.in_process_rounds + 1)
    return load + (in_process if options.in_process else 0)


def run_all(
    options: Options, servers: Sequence[ServerSpec], workdir: Path
) -> tuple[list[ModelArtifact], list[InProcessResult], list[ServerRun]]:
    """Create models, measure the in-process limit, then benchmark every server on each."""
    artifacts = [create_model(name, workdir) for name in options.models]
    lua = write_lua(workdir)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    in_process = []
    if options.in_process:
        for artifact in artifacts:
            logger.info("in-process limit: %s", artifact.name)
            in_process.append(
                measure_in_process(
                    artifact,
                    options.in_process_batch_sizes,
                    options.in_process_threads,
                    options.in_process_round_s,
                    options.in_process_rounds,
                )
            )
    runs = [
        run_server(spec, artifact, lua, logs, options) for artifact in artifacts for spec in servers
    ]
    return artifacts, in_process, runs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    options = parse_options(argv)
    if shutil.which("wrk") is None:
        logger.error("wrk is not installed (apt-get install wrk)")
        return 2
    try:
        servers = select_servers(options.servers or None)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info(
        "about %.0f s for %d server(s) x %d model(s)",
        _estimate_s(options, servers),
        len(servers),
        len(options.models),
    )
    machine = machine_info()
    machine["background_cores_at_start"] = busy = background_cores(1.0)
    if busy > BUSY_WARNING_CORES:
        logger.warning("other processes keep %.2f cores busy: numbers will be noisy", busy)
    started = time.monotonic()
    with _workdir(options.workdir) as workdir:
        artifacts, in_process, runs = run_all(options, servers, workdir)
    ratios = compute_ratios(runs, in_process, options.primary)
    machine["load_average_end"] = load_average()
    results = {
        "machine": machine,
        "options": options,
        "elapsed_s": round(time.monotonic() - started, 1),
        "models": artifacts,
        "in_process": in_process,
        "servers": runs,
        "ratios": ratios,
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = options.out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    png_path = options.out_dir / "throughput.png"
    title = (
        f"ptserve bench, {machine['nproc']} cores {machine['cpu_model']}, "
        f"torch {machine['torch']}, {machine['date']}, {options.duration_s} s/point, "
        f"other load at start {machine['background_cores_at_start']} cores"
    )
    plot_results(runs, in_process, options.models, png_path, title)
    sections = [
        ("Servers", start_table(runs)),
        ("Load (wrk; gRPC: bench/grpc_load.py; one sample per request)", load_table(runs)),
        ("In-process model limit", in_process_table(in_process)) if in_process else None,
        (f"Target ratios ({options.primary})", ratio_table(ratios)),
        (f"Relative to {options.primary}", relative_table(runs, options.primary)),
    ]
    for section in sections:
        if section is not None:
            sys.stdout.write(f"\n## {section[0]}\n{section[1]}\n")
    sys.stdout.write(f"\nwrote {json_path} and {png_path} in {results['elapsed_s']} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
