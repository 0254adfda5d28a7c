"""``ptserve serve MODEL --grpc-port PORT`` end to end, driven by Triton's own gRPC client
(``tritonclient.grpc``, sync and asyncio), Triton's stubs (for typed contents) and the standard
health client (what ``grpc_health_probe`` calls): metadata, raw and typed inference equal to HTTP
V2 and to the model, a batch, every error class, concurrency 64, API keys, one batch holding
gRPC and HTTP requests, drain on SIGTERM, two workers on one gRPC port, images and hooks as
BYTES, and the command's own refusals."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import torch
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.datasets import load_digits
from torch import nn
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ptserve.client import Client, GrpcClient
from ptserve.settings import EXAMPLE_MODEL
from tests import nets
from tests.e2e.conftest import REPO_ROOT, Server, free_port, run_cli, running_ptserve
from tests.e2e.test_operations import metric
from tests.guards import SERVER_START_S, hang_guard
from tests.images import COLOURS, encoded, save_colour_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}
HANG_GUARD_S = 60.0  # bounds waits for a server's state; never a pace


@dataclass
class GrpcServer:
    """A running ``ptserve serve --grpc-port``: its HTTP side and its gRPC target."""

    http: Server
    target: str

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.target)

    def metrics(self) -> str:
        return httpx.get(f"{self.http.base_url}/metrics", timeout=30).text


@contextlib.contextmanager
def running_grpc(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[GrpcServer]:
    """``ptserve serve ARGS --grpc-port P``, ready (gRPC starts before readiness turns on)."""
    port = free_port()
    with running_ptserve([*args, "--grpc-port", str(port)], log, env) as server:
        yield GrpcServer(server, f"127.0.0.1:{port}")


def until(condition: Any, what: str) -> None:
    """Poll ``condition()`` until true (bounded by a generous hang guard)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def health(target: str, service: str = "") -> Any:
    """grpc.health.v1 Check with the standard stubs, as grpc_health_probe sends it."""
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=30).status


def digit_rows(rows: int = 5, start: int = 0) -> np.ndarray:
    return load_digits().data[start : start + rows].astype(np.float32)


def reference(pixels: np.ndarray) -> np.ndarray:
    model = torch.load(EXAMPLE_MODEL, weights_only=False)
    with torch.inference_mode():
        return model(torch.from_numpy(pixels)).numpy()


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    """The bundled example; gRPC messages limited to 1 MB (to see the limit refuse one)."""
    log = tmp_path_factory.mktemp("digits") / "server.log"
    args = ["--max-instances", "8", "--grpc-max-message-bytes", "1000000"]
    with running_grpc(args, log) as server:
        yield server


def test_health_and_metadata_as_http_v2_gives_them(digits: GrpcServer) -> None:
    client = digits.client()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2")
    assert not client.is_model_ready("other")
    assert client.get_server_metadata().name == "ptserve"
    metadata = client.get_model_metadata("digits", as_json=True)
    for tensor_metadata in metadata["inputs"] + metadata["outputs"]:
        tensor_metadata["shape"] = [int(d) for d in tensor_metadata["shape"]]  # int64 as JSON
    with Client(digits.http.base_url) as http:
        assert metadata == http.metadata()
    assert health(digits.target) == SERVING
    assert health(digits.target, "inference.GRPCInferenceService") == SERVING
    client.close()


def test_a_batch_raw_and_typed_equals_http_v2_and_the_model(digits: GrpcServer) -> None:
    pixels = digit_rows(8)
    expected = reference(pixels)
    client = digits.client()
    result = client.infer("digits", [tensor("input", pixels)], request_id="batch-8")
    assert result.get_response().id == "batch-8"
    typed = service_pb2.ModelInferRequest(model_name="digits", model_version="1")
    typed.inputs.add(name="input", datatype="FP32", shape=pixels.shape)
    typed.inputs[0].contents.fp32_contents.extend(pixels.reshape(-1).tolist())
    with grpc.insecure_channel(digits.target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, timeout=30)
    from_typed = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(8, 10)
    with Client(digits.http.base_url) as http:
        over_http = http.infer(pixels)["output"]
    with GrpcClient(digits.target) as ours:
        from_ours = ours.infer(pixels)["output"]
    for outputs in (result.as_numpy("output"), from_typed, from_ours):
        np.testing.assert_allclose(outputs, expected, rtol=1e-6)
        np.testing.assert_allclose(outputs, over_http, rtol=1e-6)
    client.close()


def python_snippet(document: str, heading: str) -> str:
    text = (REPO_ROOT / document).read_text()
    return text.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_snippets_run(digits: GrpcServer) -> None:
    triton_snippet = python_snippet("docs/grpc.md", "### tritonclient")
    namespace: dict[str, Any] = {}
    exec(triton_snippet.replace("127.0.0.1:8001", digits.target), namespace)
    assert namespace["logits"].shape == (2, 10)
    namespace["client"].close()
    for document, heading in [
        ("docs/grpc.md", "### ptserve.client"),
        ("README.md", "### Over gRPC"),
    ]:
        ours: dict[str, Any] = {}
        exec(python_snippet(document, heading).replace("127.0.0.1:8001", digits.target), ours)
        assert ours["outputs"]["output"].shape == (1, 10), document


def wrong_shape() -> dict[str, Any]:
    return {"inputs": [tensor("input", np.zeros((1, 63), np.float32))]}


def wrong_datatype() -> dict[str, Any]:
    return {"inputs": [tensor("input", np.zeros((1, 64)), "FP64")]}


def bytes_for_numbers() -> dict[str, Any]:
    return {"inputs": [tensor("input", np.array([[b"0"] * 64], dtype=np.object_), "BYTES")]}


def unknown_input() -> dict[str, Any]:
    zeros = np.zeros((1, 64), np.float32)
    return {"inputs": [tensor("pixels", zeros), tensor("input", zeros)]}


def too_many_rows() -> dict[str, Any]:
    return {"inputs": [tensor("input", np.zeros((9, 64), np.float32))]}


def unknown_output() -> dict[str, Any]:
    return {
        "inputs": [tensor("input", np.zeros((1, 64), np.float32))],
        "outputs": [triton.InferRequestedOutput("logits")],
    }


def unknown_model() -> dict[str, Any]:
    return {"model_name": "other", "inputs": [tensor("input", np.zeros((1, 64), np.float32))]}


def unknown_version() -> dict[str, Any]:
    return {**wrong_shape(), "model_version": "2"}


def too_large() -> dict[str, Any]:
    return {"inputs": [tensor("input", np.zeros((4096, 64), np.float32))]}  # 1 MiB


GRPC_ERRORS = [
    (wrong_shape, "INVALID_ARGUMENT", "shape [1, 63] does not fit the model's [-1, 64]"),
    (wrong_datatype, "INVALID_ARGUMENT", "datatype 'FP64' does not match the model's 'FP32'"),
    (bytes_for_numbers, "INVALID_ARGUMENT", "datatype 'BYTES' does not match the model's 'FP32'"),
    (unknown_input, "INVALID_ARGUMENT", "unknown input 'pixels'; the model takes 'input'"),
    (too_many_rows, "INVALID_ARGUMENT", "the batch size (first dim) must be 1 to 8, got 9"),
    (unknown_output, "INVALID_ARGUMENT", "unknown output 'logits'; the model gives 'output'"),
    (unknown_model, "NOT_FOUND", "no model named 'other'"),
    (unknown_version, "NOT_FOUND", "model 'digits' has no version '2'"),
    (too_large, "RESOURCE_EXHAUSTED", "larger than max"),
]


@pytest.mark.parametrize(("make", "status", "message"), GRPC_ERRORS)
def test_tritonclient_gets_each_error_and_its_next_call_works(
    digits: GrpcServer, make: Any, status: str, message: str
) -> None:
    client = digits.client()  # one channel, reused after the error
    with pytest.raises(InferenceServerException) as raised:
        client.infer(**{"model_name": "digits", **make()})
    assert raised.value.status() == f"StatusCode.{status}"
    assert message in raised.value.message()
    pixels = digit_rows(1)
    result = client.infer("digits", [tensor("input", pixels)])
    np.testing.assert_allclose(result.as_numpy("output"), reference(pixels), rtol=1e-6)
    client.close()


def test_64_concurrent_grpc_calls_beside_http(digits: GrpcServer) -> None:
    pixels = digit_rows(80)
    expected = reference(pixels)
    before = digits.metrics()

    async def load() -> list[np.ndarray]:
        client = triton_aio.InferenceServerClient(url=digits.target)
        try:
            async with httpx.AsyncClient(base_url=digits.http.base_url, timeout=60) as http:
                over_grpc = [
                    client.infer("digits", [tensor("input", pixels[i : i + 1])]) for i in range(64)
                ]
                over_http = [
                    http.post("/predict", json={"instances": pixels[i : i + 1].tolist()})
                    for i in range(64, 80)
                ]
                answers = await asyncio.gather(*over_grpc, *over_http)
        finally:
            await client.close()
        return [a.as_numpy("output")[0] for a in answers[:64]] + [
            np.array(a.json()["predictions"][0]["output"], np.float32) for a in answers[64:]
        ]

    outputs = asyncio.run(load())
    after = digits.metrics()
    np.testing.assert_allclose(
        np.stack(outputs), expected, rtol=1e-5, atol=1e-5
    )  # batch sizes vary

    def added(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    route = "/inference.GRPCInferenceService/ModelInfer"
    assert added("ptserve_requests_total", route=route, method="grpc", status="OK") == 64
    assert added("ptserve_inference_requests_total", protocol="grpc", outcome="ok") == 64
    assert added("ptserve_inference_requests_total", protocol="simple", outcome="ok") == 16
    assert added("ptserve_batch_size_sum", model="digits") == 80


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcServer, Path]]:
    """A model the test holds in a forward pass (until a file exists), behind API keys; one
    batch in the model at a time, at most 6 samples queued."""
    folder = tmp_path_factory.mktemp("gated")
    torch.save(nets.FileGatedNet(), folder / "gated.pt")
    (folder / "keys").write_text(f"{KEY}\n")
    gate = folder / "gate"
    args = [str(folder / "gated.pt"), "--trust-module", "tests.nets", "--input-shape", "2",
            "--execution", "thread", "--inference-threads", "1", "--max-queue", "6",
            "--api-key-file", str(folder / "keys")]  # fmt: skip
    with running_grpc(args, folder / "server.log", {"TEST_GATE_FILE": str(gate)}) as server:
        yield server, gate


@contextlib.contextmanager
def held(server: GrpcServer, gate: Path) -> Iterator[ThreadPoolExecutor]:
    """The model held inside a forward pass for the block; released (and the gate re-armed)
    at its end. Yields a pool for calls that have to wait."""
    with ThreadPoolExecutor(16) as pool:
        client = server.client()
        hold = pool.submit(
            client.infer, "gated", [tensor("input", np.array([[nets.HOLD, 0.0]], np.float32))],
            headers=AUTH,
        )  # fmt: skip
        until(lambda: metric(server.metrics(), "ptserve_requests_in_flight") >= 2, "the hold")
        try:
            yield pool
        finally:
            gate.touch()
            hold.result(timeout=HANG_GUARD_S)
            gate.unlink()
            client.close()


def queue_depth(server: GrpcServer) -> float:
    return metric(server.metrics(), "ptserve_queue_depth", model="gated")


def test_api_keys_guard_all_but_health(gated: tuple[GrpcServer, Path]) -> None:
    server, _ = gated
    client = server.client()
    rows = [tensor("input", np.array([[1.0, 2.0]], np.float32))]
    with pytest.raises(InferenceServerException) as refused:
        client.infer("gated", rows)
    with pytest.raises(InferenceServerException) as wrong:
        client.infer("gated", rows, headers={"x-api-key": "nope"})
    assert refused.value.status() == wrong.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "this server needs an API key" in refused.value.message()
    assert "needs a valid API key" in wrong.value.message()
    np.testing.assert_array_equal(
        client.infer("gated", rows, headers=AUTH).as_numpy("output"), [[1, 2]]
    )
    np.testing.assert_array_equal(
        client.infer("gated", rows, headers={"x-api-key": KEY}).as_numpy("output"), [[1, 2]]
    )
    assert client.is_server_live()  # health calls stay open
    assert health(server.target) == SERVING
    client.close()


def test_grpc_and_http_requests_share_one_batch(gated: tuple[GrpcServer, Path]) -> None:
    server, gate = gated
    before = server.metrics()
    client = server.client()
    with held(server, gate) as pool:
        over_grpc = [
            pool.submit(
                client.infer,
                "gated",
                [tensor("input", np.array([[i, -i]], np.float32))],
                headers=AUTH,
            )
            for i in range(3)
        ]
        over_http = [
            pool.submit(
                httpx.post,
                f"{server.http.base_url}/predict",
                json={"instances": [[10 + i, -i]]},
                headers=AUTH,
                timeout=HANG_GUARD_S,
            )
            for i in range(3)
        ]
        until(lambda: queue_depth(server) == 6, "six queued samples")
    after = server.metrics()
    for i, answer in enumerate(over_grpc):
        np.testing.assert_array_equal(answer.result().as_numpy("output"), [[i, -i]])
    for i, answer in enumerate(over_http):
        assert answer.result().json()["predictions"] == [[10 + i, -i]]

    def added(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Seven samples: the held one, three over gRPC, three over HTTP. A batch of more than four
    # must hold both kinds (gRPC's three and the held one are only four): there is one.
    assert added("ptserve_batch_size_sum", model="gated") == 7
    batches = added("ptserve_batch_size_count", model="gated")
    assert batches - added("ptserve_batch_size_bucket", model="gated", le="4.0") == 1
    client.close()


def test_deadline_and_full_queue(gated: tuple[GrpcServer, Path]) -> None:
    server, gate = gated
    client = server.client()
    one = [tensor("input", np.array([[1.0, 2.0]], np.float32))]
    with held(server, gate) as pool:
        with pytest.raises(InferenceServerException) as late:
            client.infer("gated", one, headers=AUTH, client_timeout=0.5)
        until(lambda: queue_depth(server) == 0, "the late request to leave the queue")
        six = [tensor("input", np.array([[3.0, 4.0]] * 6, np.float32))]
        queued = pool.submit(client.infer, "gated", six, headers=AUTH)
        until(lambda: queue_depth(server) == 6, "a full queue")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("gated", one, headers=AUTH)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "the server is at capacity" in refused.value.message()
    assert queued.result().as_numpy("output").shape == (6, 2)
    client.close()


def test_sigterm_drains_grpc_calls_in_flight_and_serves_late_ones(tmp_path: Path) -> None:
    torch.save(nets.FileGatedNet(), tmp_path / "held.pt")
    gate = tmp_path / "gate"
    args = [str(tmp_path / "held.pt"), "--trust-module", "tests.nets", "--input-shape", "2",
            "--execution", "thread", "--max-batch-size", "4", "--drain-timeout-s", "30"]  # fmt: skip
    held_row = [tensor("input", np.array([[nets.HOLD, 1.0]], np.float32))]
    with (
        running_grpc(args, tmp_path / "log", {"TEST_GATE_FILE": str(gate)}) as server,
        ThreadPoolExecutor(12) as pool,
    ):
        client = server.client()
        accepted = [pool.submit(client.infer, "held", held_row) for _ in range(10)]
        until(lambda: metric(server.metrics(), "ptserve_requests_in_flight") >= 11, "10 calls")
        os.kill(server.http.process.pid, signal.SIGTERM)
        until(lambda: health(server.target) == NOT_SERVING, "NOT_SERVING")
        assert not client.is_server_ready()
        # readiness is off (load balancers stop sending), but a call that still arrives is served
        late = pool.submit(
            client.infer, "held", [tensor("input", np.array([[1.0, 2.0]], np.float32))]
        )
        until(lambda: metric(server.metrics(), "ptserve_requests_in_flight") >= 12, "the late call")
        gate.touch()
        results = [f.result(timeout=HANG_GUARD_S) for f in accepted]
        exit_code = server.http.process.wait(timeout=HANG_GUARD_S)
        client.close()
    assert all(np.array_equal(r.as_numpy("output"), [[nets.HOLD, 1.0]]) for r in results)
    np.testing.assert_array_equal(late.result().as_numpy("output"), [[1.0, 2.0]])
    assert exit_code == 0
    assert "drained: every accepted request was answered" in server.http.log()


GRPC_STARTED = "gRPC (Open Inference Protocol, health) on"


def test_two_workers_share_the_grpc_port(tmp_path: Path) -> None:
    pixels = digit_rows(1)
    with running_grpc(["--workers", "2"], tmp_path / "log") as server:
        # the first worker up makes the server ready; wait for the second's gRPC server too
        deadline = time.monotonic() + hang_guard(SERVER_START_S)
        while server.http.log().count(GRPC_STARTED) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval
        for _ in range(20):  # a new channel each time: new connections spread over workers
            client = server.client()
            result = client.infer("digits", [tensor("input", pixels)])
            np.testing.assert_allclose(result.as_numpy("output"), reference(pixels), rtol=1e-6)
            client.close()
        text = server.metrics()
    assert server.http.log().count(GRPC_STARTED) == 2
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert metric(text, "ptserve_requests_total", route=route, status="OK") == 20


def test_an_image_model_takes_encoded_images_as_bytes(tmp_path: Path) -> None:
    path = save_colour_model(tmp_path)
    images = [encoded((255, 0, 0)), encoded((0, 0, 255), fmt="JPEG"), encoded((0, 255, 0))]
    with running_grpc([str(path), "--input-shape", "3", "8", "8"], tmp_path / "log") as server:
        client = server.client()
        result = client.infer(
            "colours", [tensor("input", np.array(images, dtype=np.object_), "BYTES")]
        )
        with pytest.raises(InferenceServerException) as bad:
            client.infer(
                "colours", [tensor("input", np.array([b"GIF89a nope"], dtype=np.object_), "BYTES")]
            )
        client.close()
        solid = [
            np.array(c, np.float32)[:, None, None] / 255
            for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
        ]
        with Client(server.http.base_url) as http:  # the same images as pixels, over HTTP V2
            over_http = http.infer(np.stack([np.broadcast_to(c, (3, 8, 8)) for c in solid]))
    means = result.as_numpy("output")
    assert [COLOURS[i] for i in means.argmax(1)] == ["red", "blue", "green"]
    np.testing.assert_allclose(means, over_http["output"], atol=0.02)  # JPEG is lossy
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not an image" in bad.value.message()


def test_a_hook_model_takes_bytes_instances(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    torch.save(net, tmp_path / "adder.pt")
    args = [str(tmp_path / "adder.pt"), "--handler", "tests.hooks_bytes"]
    with running_grpc(args, tmp_path / "log") as server:
        client = server.client()
        instances = tensor("instances", np.array([b"1,2", b"3.5,4"], dtype=np.object_), "BYTES")
        result = client.infer("adder", [instances])
        predictions_only = client.infer(
            "adder", [instances], outputs=[triton.InferRequestedOutput("prediction")]
        )
        with pytest.raises(InferenceServerException) as crashed:
            client.infer(
                "adder", [tensor("instances", np.array([b"boom"], dtype=np.object_), "BYTES")]
            )
        client.close()
    np.testing.assert_allclose(result.as_numpy("output"), [[3.0], [7.5]])
    predictions = [orjson.loads(p) for p in predictions_only.as_numpy("prediction")]
    assert predictions == [{"sum": 3.0}, {"sum": 7.5}]
    assert predictions_only.as_numpy("output") is None
    assert crashed.value.status() == "StatusCode.INTERNAL"
    assert "the preprocess hook failed" in crashed.value.message()


def test_the_command_refuses_a_taken_or_shared_port_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_cli(["serve", "--port", str(free_port()), "--grpc-port", str(port)])
    assert in_use.returncode == 2
    assert f"ptserve: --grpc-port {port}: cannot listen on 127.0.0.1:{port}" in in_use.stderr
    assert "Traceback" not in in_use.stderr
    same = run_cli(["serve", "--port", "8123", "--grpc-port", "8123"])
    assert same.returncode == 2
    assert "--grpc-port 8123 is the HTTP port" in same.stderr


def test_without_grpcio_the_command_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['grpc'] = None; from ptserve.cli import main; "
        "main(['serve', '--grpc-port', '8001'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ptserve: --grpc-port needs gRPC: pip install 'ptserve[grpc]'" in done.stderr
