"""Benchmark one server on one model: start, cold start, load points, memory, stop."""

import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.config import Options
from bench.grpc_load import check_grpc, grpc_body, run_grpc_load
from bench.loadgen import LoadError, LoadResult, run_wrk
from bench.models import ModelArtifact
from bench.procs import (
    ServerProcess,
    ServerStartError,
    free_port,
    log_tail,
    start_server,
    stop_server,
    wait_until_serving,
)
from bench.procstats import GroupMemory, group_cpu_seconds, group_memory, system_busy_seconds
from bench.registry import ServerSpec

logger = logging.getLogger(__name__)

RunStatus = Literal["ok", "failed", "unavailable"]


@dataclass(frozen=True)
class Point:
    """One concurrency level: wrk's numbers plus the server's CPU and memory.

    ``background_cpu_cores`` is the machine's busy CPU that was neither the server nor wrk
    (other processes on the box); well above ~0.1 means the point was measured under noise.
    """

    load: LoadResult
    samples_per_s: float
    server_cpu_s: float
    server_cpu_cores: float
    server_cpu_us_per_request: float | None
    background_cpu_cores: float
    memory: GroupMemory


@dataclass
class ServerRun:
    """Everything measured for one (model, server) pair, or why it could not be."""

    model: str
    server: str
    kind: str
    description: str
    status: RunStatus
    command: list[str]
    reason: str | None = None
    cold_start_s: float | None = None
    response_ok: bool | None = None
    memory_idle: GroupMemory | None = None
    points: list[Point] = field(default_factory=list)
    point_errors: dict[int, str] = field(default_factory=dict)
    stopped_gracefully: bool | None = None


Load = Callable[[int, int], LoadResult]  # (concurrency, seconds) -> one load run


def _wire_body(spec: ServerSpec, model: ModelArtifact) -> tuple[Path, int | None]:
    """The HTTP body that shows ``spec`` serving (its wire's, gRPC's: JSON), and its V2 JSON
    header length."""
    if spec.wire == "v2-binary":
        return model.v2_body_path, model.v2_header_length
    return model.body_path, None


def _load(
    spec: ServerSpec, model: ModelArtifact, server: ServerProcess, lua: Path, options: Options,
    grpc_target: str | None,
) -> Load:  # fmt: skip
    """How to put load on ``server`` in ``spec``'s wire format."""
    if grpc_target is not None:
        body = grpc_body(model)
        return lambda c, seconds: run_grpc_load(
            grpc_target, body, c, seconds, options.wrk_timeout_s
        )
    url = f"http://127.0.0.1:{server.port}{spec.predict_path}"
    body_path, header_length = _wire_body(spec, model)
    return lambda c, seconds: run_wrk(
        url, lua, body_path, c, seconds, options.wrk_threads, options.wrk_timeout_s,
        header_length,
    )  # fmt: skip


def _check_response(spec: ServerSpec, payload: bytes) -> bool | None:
    """For model servers: one prediction came back. Ceilings answer a constant."""
    if spec.kind != "model":
        return None
    if spec.wire == "v2-binary":  # a JSON header, then the raw output tensor
        return b'"binary_data_size"' in payload and b'"shape":[1,' in payload
    try:
        predictions = json.loads(payload)["predictions"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(predictions, list) and len(predictions) == 1


def _missing_module(spec: ServerSpec) -> str | None:
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            return f"Python package '{module}' is not importable"
    return None


def _measure_point(
    server: ServerProcess, run_load: Load, concurrency: int, options: Options
) -> Point:
    if options.warmup_s > 0:
        run_load(concurrency, options.warmup_s)
    cpu_before = group_cpu_seconds(server.pgid)
    busy_before = system_busy_seconds()
    load = run_load(concurrency, options.duration_s)
    cpu_s = round(group_cpu_seconds(server.pgid) - cpu_before, 2)
    busy_s = system_busy_seconds() - busy_before
    background_s = max(busy_s - cpu_s - load.client_cpu_s, 0.0)
    return Point(
        load=load,
        samples_per_s=load.req_per_s,  # one sample per request
        server_cpu_s=cpu_s,
        server_cpu_cores=round(cpu_s / load.duration_s, 2) if load.duration_s else 0.0,
        server_cpu_us_per_request=round(cpu_s / load.requests * 1e6, 1) if load.requests else None,
        background_cpu_cores=round(background_s / load.duration_s, 2) if load.duration_s else 0.0,
        memory=group_memory(server.pgid),
    )


def run_server(
    spec: ServerSpec, model: ModelArtifact, lua: Path, logs: Path, options: Options
) -> ServerRun:
    """Benchmark ``spec`` on ``model``; failures are recorded in the result, never raised."""
    port = free_port()
    command = spec.command(model, port)
    run = ServerRun(
        model=model.name,
        server=spec.name,
        kind=spec.kind,
        description=spec.description,
        status="ok",
        command=command,
    )
    missing = _missing_module(spec)
    if missing is not None:
        run.status, run.reason = "unavailable", missing
        logger.warning("%s/%s unavailable: %s", model.name, spec.name, missing)
        return run
    body_path, header_length = _wire_body(spec, model)
    headers = None
    if header_length is not None:
        headers = {"Inference-Header-Content-Length": str(header_length)}
    grpc_target = None
    if spec.wire == "grpc":
        grpc_port = free_port()
        grpc_target = f"127.0.0.1:{grpc_port}"
        command += ["--grpc-port", str(grpc_port)]
    server = start_server(command, port, logs / f"{model.name}-{spec.name}.log")
    try:
        # gRPC starts before readiness: the first HTTP 200 means both answer
        run.cold_start_s, payload = wait_until_serving(
            server, spec.predict_path, body_path.read_bytes(), options.start_timeout_s, headers
        )
        run.cold_start_s = round(run.cold_start_s, 3)
        run.response_ok = _check_response(spec, payload)
        if grpc_target is not None:
            run.response_ok = check_grpc(grpc_target, grpc_body(model))
        run_load = _load(spec, model, server, lua, options, grpc_target)
        run.memory_idle = group_memory(server.pgid)
        logger.info("%s/%s ready in %.2f s", model.name, spec.name, run.cold_start_s)
        for concurrency in options.concurrencies:
            if server.popen.poll() is not None:
                run.point_errors[concurrency] = f"server exited: {log_tail(server.log_path)}"
                continue
            try:
                point = _measure_point(server, run_load, concurrency, options)
            except LoadError as exc:
                run.point_errors[concurrency] = str(exc)
                continue
            run.points.append(point)
            logger.info(
                "%s/%s c=%d: %.0f req/s, p99 %s ms",
                model.name,
                spec.name,
                concurrency,
                point.load.req_per_s,
                point.load.p99_ms,
            )
    except ServerStartError as exc:
        run.status, run.reason = "failed", str(exc)
        logger.warning("%s/%s failed to start: %s", model.name, spec.name, exc)
    finally:
        run.stopped_gracefully = stop_server(
            server, spec.stop_timeout_s or options.stop_timeout_s, spec.stop_leader_only
        )
    return run
