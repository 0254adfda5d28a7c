"""Drive a gRPC server's ModelInfer (wrk cannot speak gRPC): a bounded asyncio load generator.

``run_grpc_load`` starts ``python -m bench.grpc_load`` as a child process (so its CPU counts as
the client's, as wrk's does) and returns the same ``LoadResult`` as ``run_wrk``. The child keeps
``concurrency`` calls in flight on one channel for ``duration`` seconds, each sending the same
pre-serialised ``ModelInferRequest`` as bytes (no protobuf work per call on the client), and
prints one JSON line: latencies in microseconds and failures by gRPC status.
"""

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.loadgen import RESULT_MARKER, LoadError, LoadResult, load_result

if TYPE_CHECKING:  # the load generator's process imports neither torch nor the models
    from bench.models import ModelArtifact

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def grpc_body(model: "ModelArtifact") -> Path:
    """The model's one-sample ModelInfer request (raw FP32 contents, its output asked for),
    serialised beside its other bodies."""
    from bench.models import load_sample_batch
    from ptserve.grpc.grpc_predict_v2_pb2 import ModelInferRequest

    path = model.body_path.with_suffix(".grpc")
    if not path.exists():
        batch = load_sample_batch(model, 1).numpy()
        request = ModelInferRequest(model_name="bench")
        request.inputs.add(name="input", datatype="FP32", shape=batch.shape)
        request.raw_input_contents.append(batch.tobytes())
        request.outputs.add(name="output")
        path.write_bytes(request.SerializeToString())
    return path


def check_grpc(target: str, body_path: Path) -> bool:
    """One call: whether the answer holds one output row (the benchmark's response check)."""
    import grpc

    from ptserve.grpc.grpc_predict_v2_pb2 import ModelInferResponse

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(target, options=options) as channel:
        payload = channel.unary_unary(METHOD)(body_path.read_bytes(), timeout=30)
    response = ModelInferResponse.FromString(payload)
    return len(response.outputs) == 1 and list(response.outputs[0].shape)[:1] == [1]


def run_grpc_load(
    target: str, body_path: Path, concurrency: int, duration_s: int, timeout_s: int
) -> LoadResult:
    """Run the load generator against ``target`` (host:port) and return its numbers."""
    command = [
        sys.executable, "-m", "bench.grpc_load", target, str(body_path),
        "--concurrency", str(concurrency), "--duration", str(duration_s),
        "--timeout", str(timeout_s),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + timeout_s + 60, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise LoadError(
            f"grpc_load exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}"
        )
    raw = json.loads(line[len(RESULT_MARKER) :])
    failures: dict[str, int] = raw["failures"]
    return load_result(
        raw,
        concurrency,
        raw["duration_s"],
        # as wrk reports them: refusals (any status but the two below), connection failures,
        # and calls past their deadline
        non_2xx=sum(
            n for s, n in failures.items() if s not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        ),
        socket_errors=failures.get("UNAVAILABLE", 0),
        timeouts=failures.get("DEADLINE_EXCEEDED", 0),
        client_cpu_s=raw["cpu_s"],  # during the load only, not the child's start
    )


async def _drive(
    target: str, body: bytes, concurrency: int, duration_s: float, timeout_s: float
) -> dict[str, object]:
    from grpc import aio

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    latencies: list[int] = []
    failures: dict[str, int] = {}
    async with aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no protobuf work here
        started = time.perf_counter()
        stop_at = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter_ns()
                try:
                    await call(body, timeout=timeout_s)
                except aio.AioRpcError as exc:
                    name = exc.code().name
                    failures[name] = failures.get(name, 0) + 1
                    continue
                latencies.append(time.perf_counter_ns() - sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies_us = np.array(latencies or [0]) / 1e3  # no answers: zeros (and requests 0)
    p50, p90, p99 = np.percentile(latencies_us, [50, 90, 99])
    return {
        "duration_s": elapsed,
        "requests": len(latencies),
        "p50_us": p50, "p90_us": p90, "p99_us": p99,
        "mean_us": float(latencies_us.mean()), "max_us": float(latencies_us.max()),
        "failures": failures,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="gRPC ModelInfer load for the benchmark")
    parser.add_argument("target", help="host:port")
    parser.add_argument("body", type=Path, help="a serialised ModelInferRequest")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="each call's deadline")
    args = parser.parse_args()
    before = resource.getrusage(resource.RUSAGE_SELF)  # every thread, gRPC's own included
    result = asyncio.run(
        _drive(args.target, args.body.read_bytes(), args.concurrency, args.duration, args.timeout)
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
