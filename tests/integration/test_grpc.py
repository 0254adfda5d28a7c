"""The Open Inference Protocol over gRPC, in-process: the app's lifespan serves gRPC on a free
port and real gRPC clients call it (ptserve's stubs over grpc.aio, ptserve's clients, the
standard health client). Metadata, raw and typed inference equal to HTTP V2 and to the model,
every datatype, errors and their status codes, deadlines, a full queue, one batch holding gRPC
and HTTP requests, drain and stop, API keys, request ids, metrics, images and hooks."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from grpc import aio
from grpc_health.v1 import health_pb2 as standard_health
from grpc_health.v1 import health_pb2_grpc as standard_health_grpc
from sklearn.datasets import load_digits
from torch import nn

from ptserve.app import create_app
from ptserve.client import AsyncGrpcClient, GrpcInferenceError
from ptserve.grpc import grpc_predict_v2_pb2 as pb
from ptserve.protocols.oip_tensors import pack_bytes
from ptserve.settings import EXAMPLE_MODEL, Settings
from tests import nets
from tests.conftest import RequestIds, serving_app
from tests.e2e.conftest import free_port
from tests.images import COLOURS, encoded, save_colour_model
from tests.multi_io import SETTINGS, save_two_inputs, two_inputs_batch, two_inputs_expected

pytestmark = pytest.mark.anyio
HTTP_HEADER = "Inference-Header-Content-Length"
Tensor = pb.ModelInferRequest.InferInputTensor


class V2:
    """inference.GRPCInferenceService over a grpc.aio channel, with ptserve's messages."""

    def __init__(self, channel: aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self._channel = channel

    def _method(self, name: str, response: Any) -> Any:
        return self._channel.unary_unary(
            f"/inference.GRPCInferenceService/{name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def call(self, name: str, request: Any, **kwargs: Any) -> Any:
        """The call object (await it for the response; its trailing metadata after)."""
        response = getattr(pb, f"{name}Response")
        kwargs.setdefault("metadata", self.metadata)
        return self._method(name, response)(request, **kwargs)

    async def infer(self, request: pb.ModelInferRequest, **kwargs: Any) -> pb.ModelInferResponse:
        response: pb.ModelInferResponse = await self.call("ModelInfer", request, **kwargs)
        return response


@dataclass
class Served:
    app: FastAPI
    http: httpx.AsyncClient
    target: str
    v2: V2

    @property
    def batcher(self) -> Any:
        return self.app.state.runtime.models.get(None).service.batcher


@asynccontextmanager
async def serving_grpc(model_path: Path, **settings: Any) -> AsyncIterator[Served]:
    """An in-process app serving gRPC too, with a channel to it."""
    port = free_port()
    async with serving_app(model_path, grpc_port=port, **settings) as (app, http):
        target = f"127.0.0.1:{port}"
        async with aio.insecure_channel(target) as channel:
            yield Served(app, http, target, V2(channel))


def digits(rows: int = 3) -> np.ndarray:
    return load_digits().data[:rows].astype(np.float32)


def reference(pixels: np.ndarray) -> np.ndarray:
    model = torch.load(EXAMPLE_MODEL, weights_only=False)
    with torch.inference_mode():
        return model(torch.from_numpy(pixels)).numpy()


def raw_request(model: str = "digits", **arrays: np.ndarray) -> pb.ModelInferRequest:
    datatypes = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "float16": "FP16"}
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=datatypes[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def output(response: pb.ModelInferResponse, name: str, dtype: Any = np.float32) -> np.ndarray:
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.name == name:
            return np.frombuffer(raw, dtype).reshape(tensor.shape)
    raise KeyError(name)


async def http_v2_binary(http: httpx.AsyncClient, pixels: np.ndarray) -> np.ndarray:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(pixels.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = await http.post(
        "/v2/models/digits/infer",
        content=header + pixels.tobytes(),
        headers={HTTP_HEADER: str(len(header))},
    )
    length = int(response.headers[HTTP_HEADER])
    return np.frombuffer(response.content[length:], np.float32).reshape(len(pixels), 10)


async def test_health_and_metadata_are_http_v2_s() -> None:
    async with serving_grpc(EXAMPLE_MODEL) as served:
        v2 = served.v2
        assert (await v2.call("ServerLive", pb.ServerLiveRequest())).live
        assert (await v2.call("ServerReady", pb.ServerReadyRequest())).ready
        ready = [
            (await v2.call("ModelReady", pb.ModelReadyRequest(name=name, version=version))).ready
            for name, version in [("digits", ""), ("digits", "1"), ("digits", "2"), ("other", ""), ("", "")]
        ]  # fmt: skip
        server = await v2.call("ServerMetadata", pb.ServerMetadataRequest())
        model = await v2.call("ModelMetadata", pb.ModelMetadataRequest(name="digits"))
        default = await v2.call("ModelMetadata", pb.ModelMetadataRequest())
        http_metadata = (await served.http.get("/v2/models/digits")).json()
        async with AsyncGrpcClient(served.target) as client:
            client_metadata = await client.metadata()
    assert ready == [True, True, False, False, True]
    assert (server.name, list(server.extensions)) == ("ptserve", [])
    assert model == default
    assert client_metadata == http_metadata


async def test_raw_and_typed_inference_equal_http_v2_and_the_model() -> None:
    pixels = digits(5)
    expected = reference(pixels)
    typed = pb.ModelInferRequest(model_name="digits", model_version="1", id="req-9")
    typed.inputs.add(name="input", datatype="FP32", shape=pixels.shape)
    typed.inputs[0].contents.fp32_contents.extend(pixels.reshape(-1).tolist())
    async with serving_grpc(EXAMPLE_MODEL) as served:
        raw = await served.v2.infer(raw_request(input=pixels))
        from_contents = await served.v2.infer(typed)
        over_http = await http_v2_binary(served.http, pixels)
        async with AsyncGrpcClient(served.target) as client:
            from_client = await client.infer(pixels.astype(np.float64))
    assert (raw.model_name, raw.model_version, raw.id) == ("digits", "1", "")
    assert from_contents.id == "req-9"
    assert [(o.name, o.datatype, list(o.shape)) for o in raw.outputs] == [
        ("output", "FP32", [5, 10])
    ]
    for outputs in (output(raw, "output"), output(from_contents, "output"), from_client["output"]):
        np.testing.assert_allclose(outputs, expected, rtol=1e-6)
        np.testing.assert_allclose(outputs, over_http, rtol=1e-6)
    assert from_client["output"].flags.writeable


DTYPES = [
    ("float32", "FP32", "FP32", np.float32), ("float64", "FP64", "FP64", np.float64),
    ("float16", "FP16", "FP32", np.float16), ("int64", "INT64", "INT64", np.int64),
    ("int32", "INT32", "INT32", np.int32), ("int16", "INT16", "INT16", np.int16),
    ("int8", "INT8", "INT8", np.int8), ("uint8", "UINT8", "UINT8", np.uint8),
    ("bool", "BOOL", "BOOL", np.bool_),
]  # fmt: skip
RETURNED = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
            "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


@pytest.mark.parametrize(("dtype", "sent", "returned", "numpy"), DTYPES)
async def test_every_input_dtype_round_trips_raw(
    dtype: str, sent: str, returned: str, numpy: Any, tmp_path: Path
) -> None:
    torch.save(nn.Identity(), tmp_path / "echo.pt")
    values = np.array([[0, 1, 2], [1, 0, 3]]) if dtype != "bool" else np.array([[1, 0, 1]] * 2)
    array = values.astype(numpy)
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="input", datatype=sent, shape=[2, 3])
    request.raw_input_contents.append(array.tobytes())
    async with serving_grpc(tmp_path / "echo.pt", input_shape=[3], input_dtype=dtype) as served:
        response = await served.v2.infer(request)
    (tensor,) = response.outputs
    assert tensor.datatype == returned
    np.testing.assert_array_equal(output(response, "output", RETURNED[returned]), values)


async def test_bf16_raw_reaches_a_bfloat16_model_exactly(tmp_path: Path) -> None:
    torch.save(nn.Identity(), tmp_path / "echo.pt")
    values = torch.tensor([[1.5, -2.0, 3.140625], [1e-3, 65280.0, 0.0078125]], dtype=torch.bfloat16)
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="input", datatype="BF16", shape=[2, 3])
    request.raw_input_contents.append(values.view(torch.int16).numpy().tobytes())
    async with serving_grpc(
        tmp_path / "echo.pt", input_shape=[3], input_dtype="bfloat16"
    ) as served:
        response = await served.v2.infer(request)
    np.testing.assert_array_equal(output(response, "output"), values.float().numpy())


def with_input(**changes: Any) -> pb.ModelInferRequest:
    request = raw_request(input=np.zeros((1, 64), np.float32))
    for key, value in changes.items():
        if key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        elif key == "raw":
            request.raw_input_contents[0] = value
        else:
            setattr(request.inputs[0], key, value)
    return request


def other(**fields: str) -> pb.ModelInferRequest:
    request = with_input()
    for key, value in fields.items():
        setattr(request, key, value)
    return request


ERRORS = [
    (with_input(shape=[1, 63], raw=bytes(252)), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "shape [1, 63] does not fit the model's [-1, 64]"),
    (with_input(datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "datatype 'FP64' does not match the model's 'FP32'"),
    (with_input(name="pixels"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "unknown input 'pixels'; the model takes 'input'"),
    (with_input(raw=bytes(100)), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "raw_input_contents has 100 bytes but shape [1, 64] of FP32 takes 256"),
    (with_input(shape=[9, 64], raw=bytes(9 * 256)), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "the batch size (first dim) must be 1 to 8, got 9"),
    (with_input(raw=np.full((1, 64), np.inf, np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "invalid_tensor", "NaN and Infinity are not allowed"),
    (other(model_name="other"), grpc.StatusCode.NOT_FOUND, "model_not_found", "no model named 'other'; this server serves 'digits'"),
    (other(model_version="2"), grpc.StatusCode.NOT_FOUND, "model_not_found", "model 'digits' has no version '2'"),
]  # fmt: skip


async def test_each_mistake_has_its_status_code_and_message_and_the_next_call_works() -> None:
    pixels = digits(1)
    async with serving_grpc(EXAMPLE_MODEL, max_instances=8) as served:
        for request, status, code, message in ERRORS:
            call = served.v2.call("ModelInfer", request, metadata=(("x-request-id", "bad-1"),))
            with pytest.raises(aio.AioRpcError) as raised:
                await call
            trailers = dict(raised.value.trailing_metadata() or ())
            assert raised.value.code() == status, message
            assert message in (raised.value.details() or ""), message
            assert trailers["ptserve-error-code"] == code
            assert trailers["x-request-id"] == "bad-1"
            good = await served.v2.infer(raw_request(input=pixels))
            np.testing.assert_allclose(output(good, "output"), reference(pixels), rtol=1e-6)


async def test_a_message_over_the_limit_is_resource_exhausted() -> None:
    async with serving_grpc(EXAMPLE_MODEL, grpc_max_message_bytes=64 * 1024) as served:
        with pytest.raises(aio.AioRpcError) as raised:
            await served.v2.infer(raw_request(input=np.zeros((300, 64), np.float32)))
        small = await served.v2.infer(raw_request(input=digits(1)))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (raised.value.details() or "")
    assert list(small.outputs[0].shape) == [1, 10]


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Served]:
    """A model the test holds inside a forward pass; one batch in the model at a time."""
    torch.save(nets.GatedNet(), tmp_path / "gated.pt")
    nets.GATE.clear()
    nets.ENTERED.clear()
    async with serving_grpc(
        tmp_path / "gated.pt", trust_modules=["tests.nets"], input_shape=[2], max_queue=12,
        execution="thread", inference_threads=1, max_batch_size=64,
    ) as served:  # fmt: skip
        yield served
        nets.GATE.set()


def gated_request(*rows: tuple[float, float]) -> pb.ModelInferRequest:
    return raw_request("gated", input=np.array(rows, np.float32))


async def hold(served: Served) -> "asyncio.Future[Any]":
    """A gRPC call whose batch waits inside the model until GATE opens."""
    held = asyncio.ensure_future(served.v2.infer(gated_request((nets.HOLD, 0))))
    await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, 10)
    return held


async def queued(served: Served, samples: int) -> None:
    """Until exactly ``samples`` samples wait in the queue (bounded: a hang guard, not a
    pace)."""
    async with asyncio.timeout(30):
        while served.batcher.queued_samples != samples:
            await asyncio.sleep(0.005)


async def test_grpc_and_http_requests_share_one_batch(gated: Served) -> None:
    held = await hold(gated)
    over_grpc = [gated.v2.infer(gated_request((i, -i))) for i in range(5)]
    over_http = [gated.http.post("/predict", json={"instances": [[10 + i, -i]]}) for i in range(5)]
    calls = asyncio.gather(*over_grpc, *over_http)
    await queued(gated, 10)
    before = gated.batcher.stats.batches
    nets.GATE.set()
    responses = await calls
    await held
    stats = gated.batcher.stats
    # after the held batch, ONE batch of all ten: five samples over gRPC, five over HTTP
    assert (stats.batches - before, stats.largest) == (1, 10)
    for i, response in enumerate(responses[:5]):
        np.testing.assert_array_equal(output(response, "output"), [[i, -i]])
    for i, response in enumerate(responses[5:]):
        assert response.json()["predictions"] == [[10 + i, -i]]
    metrics = (await gated.http.get("/metrics")).text
    assert (
        'ptserve_batch_size_bucket{le="8.0",model="gated",version="1"} 1.0' in metrics
    )  # the held one
    assert 'ptserve_batch_size_bucket{le="16.0",model="gated",version="1"} 2.0' in metrics


async def test_deadline_and_full_queue(gated: Served) -> None:
    held = await hold(gated)
    with pytest.raises(aio.AioRpcError) as late:
        await gated.v2.infer(gated_request((1, 2)), timeout=0.2)
    await queued(gated, 0)  # the expired request has left the queue (dropped, never computed)
    waiting = [
        asyncio.ensure_future(gated.v2.infer(gated_request(*[(3, 4)] * 6))) for _ in range(2)
    ]
    await queued(gated, 12)
    with pytest.raises(aio.AioRpcError) as refused:
        await gated.v2.infer(gated_request((5, 6)))
    nets.GATE.set()
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the server is at capacity" in (refused.value.details() or "")
    trailers = dict(refused.value.trailing_metadata() or ())
    assert (trailers["ptserve-error-code"], trailers["retry-after"]) == ("overloaded", "1")
    for response in await asyncio.gather(held, *waiting):
        assert response.outputs[0].datatype == "FP32"


async def test_stop_lets_the_call_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    torch.save(nets.GatedNet(), tmp_path / "gated.pt")
    nets.GATE.clear()
    nets.ENTERED.clear()
    port = free_port()
    app = create_app(
        Settings(
            model_path=tmp_path / "gated.pt",
            trust_modules=["tests.nets"],
            input_shape=[2],
            execution="thread",
            grpc_port=port,
        )
    )
    lifespan = app.router.lifespan_context(app)  # entered and left by hand: stopped mid-call
    await lifespan.__aenter__()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        v2 = V2(channel)
        held = asyncio.ensure_future(v2.infer(gated_request((nets.HOLD, 1))))
        await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, 10)
        stopping = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
        async with asyncio.timeout(30):
            while app.state.runtime.ready:
                await asyncio.sleep(0.005)
        with pytest.raises(aio.AioRpcError) as refused:
            await v2.infer(gated_request((1, 2)), timeout=10)
        nets.GATE.set()
        answer = await held
        await stopping
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    np.testing.assert_array_equal(output(answer, "output"), [[nets.HOLD, 1]])


def standard_check(target: str, service: str = "", key: str | None = None) -> Any:
    """grpc.health.v1 Check with grpcio-health-checking's own stubs (what grpc_health_probe
    sends), on a blocking channel."""
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(target) as channel:
        stub = standard_health_grpc.HealthStub(channel)
        return stub.Check(
            standard_health.HealthCheckRequest(service=service), timeout=10, metadata=metadata
        )


async def check(target: str, service: str = "", key: str | None = None) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        None, standard_check, target, service, key
    )


async def test_health_follows_readiness_and_draining_still_serves() -> None:
    serving = standard_health.HealthCheckResponse.SERVING
    not_serving = standard_health.HealthCheckResponse.NOT_SERVING
    async with serving_grpc(EXAMPLE_MODEL) as served:
        runtime = served.app.state.runtime
        whole, inference = (
            await check(served.target),
            await check(served.target, "inference.GRPCInferenceService"),
        )
        with pytest.raises(grpc.RpcError) as unknown:
            await check(served.target, "other.Service")
        async with aio.insecure_channel(served.target) as channel:
            watch = standard_health_grpc.HealthStub(channel).Watch(
                standard_health.HealthCheckRequest(), timeout=30
            )
            first = await watch.read()
            watching = (await served.http.get("/metrics")).text
            runtime.draining = True
            async with asyncio.timeout(30):
                second = await watch.read()
            draining = await check(served.target)
            ready = (await served.v2.call("ServerReady", pb.ServerReadyRequest())).ready
            model_ready = (
                await served.v2.call("ModelReady", pb.ModelReadyRequest(name="digits"))
            ).ready
            answered = await served.v2.infer(raw_request(input=digits(1)))
            runtime.draining = False
            runtime.ready = False  # as while loading: inference is refused too
            loading = await check(served.target)
            with pytest.raises(aio.AioRpcError) as not_ready:
                await served.v2.infer(raw_request(input=digits(1)))
            runtime.ready = True
            watch.cancel()
    assert (whole.status, inference.status) == (serving, serving)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert (first.status, second.status) == (serving, not_serving)
    # a watch is a subscription, not a request in flight: only the /metrics request itself is
    assert "\nptserve_requests_in_flight 1.0\n" in watching
    assert (draining.status, ready, model_ready) == (not_serving, False, True)
    assert list(answered.outputs[0].shape) == [1, 10]
    assert loading.status == not_serving
    assert not_ready.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the model is not ready" in (not_ready.value.details() or "")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("s3cret\n")
    return path


@pytest.mark.parametrize("protect_health", [False, True])
async def test_api_keys(key_file: Path, protect_health: bool) -> None:
    pixels = digits(1)
    async with serving_grpc(
        EXAMPLE_MODEL, api_key_file=key_file, protect_health=protect_health
    ) as served:
        outcomes = {}
        for label, metadata in [
            ("none", ()), ("wrong", (("x-api-key", "nope"),)),
            ("bearer", (("authorization", "Bearer s3cret"),)), ("x-api-key", (("x-api-key", "s3cret"),)),
        ]:  # fmt: skip
            try:
                await served.v2.infer(raw_request(input=pixels), metadata=metadata)
                outcomes[label] = "ok"
            except aio.AioRpcError as error:
                outcomes[label] = (error.code(), error.details())
        live = served.v2.call("ServerLive", pb.ServerLiveRequest())
        try:
            health = (await check(served.target)).status
        except grpc.RpcError as error:
            health = error.code()
        with_key = (await check(served.target, key="s3cret")).status
        async with AsyncGrpcClient(
            served.target, metadata={"authorization": "Bearer s3cret"}
        ) as client:
            by_client = await client.infer(pixels)
        async with AsyncGrpcClient(served.target, "digits") as keyless:
            with pytest.raises(GrpcInferenceError) as raised:
                await keyless.infer(pixels)
        if protect_health:
            with pytest.raises(aio.AioRpcError) as live_refused:
                await live
            assert live_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            assert (await live).live
    assert outcomes["none"] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "this server needs an API key: send metadata 'authorization: Bearer KEY' or 'x-api-key: KEY'",
    )
    assert outcomes["wrong"][0] == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a valid API key" in outcomes["wrong"][1]
    assert outcomes["bearer"] == outcomes["x-api-key"] == "ok"
    serving = standard_health.HealthCheckResponse.SERVING
    assert health == (grpc.StatusCode.UNAUTHENTICATED if protect_health else serving)
    assert with_key == serving
    np.testing.assert_allclose(by_client["output"], reference(pixels), rtol=1e-6)
    assert (raised.value.grpc_status, raised.value.code) == ("UNAUTHENTICATED", "unauthorized")


async def test_request_ids_metrics_and_the_access_log(
    tmp_path: Path, request_ids: RequestIds, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(nets.FailsOnMarker(), tmp_path / "fails.pt")
    fine, marker = np.zeros((1, 4), np.float32), np.full((1, 4), -999, np.float32)
    async with serving_grpc(
        tmp_path / "fails.pt", trust_modules=["tests.nets"], input_shape=[4]
    ) as served:
        by_metadata = served.v2.call(
            "ModelInfer", raw_request("fails", input=fine), metadata=(("x-request-id", "meta-1"),)
        )
        response = await by_metadata
        trailers = dict(await by_metadata.trailing_metadata() or ())
        by_field = raw_request("fails", input=fine)
        by_field.id = "field-2"
        echoed = await served.v2.infer(by_field)
        failing = raw_request("fails", input=marker)
        failing.id = "boom-3"
        with pytest.raises(aio.AioRpcError) as failed:
            await served.v2.infer(failing)
        metrics = (await served.http.get("/metrics")).text
    assert response.id == ""  # no id asked for: none echoed
    assert trailers["x-request-id"] == "meta-1"
    assert trailers["server-timing"].startswith("queue;dur=")
    assert echoed.id == "field-2"
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert dict(failed.value.trailing_metadata() or ())["ptserve-error-code"] == "model_error"
    # the model's failure is logged (with its traceback) under the request's id
    assert any(rid == "boom-3" for _, rid in request_ids.seen), request_ids.seen
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'ptserve_requests_total{{method="grpc",route="{route}",status="OK"}} 2.0' in metrics
    assert (
        f'ptserve_requests_total{{method="grpc",route="{route}",status="INTERNAL"}} 1.0' in metrics
    )
    assert (
        'ptserve_inference_requests_total{model="fails",outcome="ok",protocol="grpc",version="1"} 2.0'
        in metrics
    )
    assert 'outcome="model_error",protocol="grpc"' in metrics
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "ptserve.access" in x]
    logged = {
        (x["method"], x["path"], x["status"], x.get("code"), x["model"], x["request_id"])
        for x in lines
    }
    assert ("GRPC", route, 200, None, "fails", "meta-1") in logged
    assert ("GRPC", route, 500, "model_error", "fails", "boom-3") in logged


async def test_two_inputs_and_requested_outputs(tmp_path: Path) -> None:
    path = save_two_inputs(tmp_path)
    image, extra = two_inputs_batch(4)
    expected = two_inputs_expected(path, image, extra)
    async with serving_grpc(path, **SETTINGS) as served, AsyncGrpcClient(served.target) as client:
        everything = await client.infer({"image": torch.from_numpy(image), "extra": extra})
        norm_only = await client.infer({"image": image, "extra": extra}, outputs=["norm"])
        with pytest.raises(ValueError, match="pass them by name"):
            await client.infer(image)
    assert everything.keys() == {"sum", "norm"}
    for name, array in everything.items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-6)
    assert norm_only.keys() == {"norm"}


async def test_an_image_model_takes_encoded_images_as_bytes(tmp_path: Path) -> None:
    path = save_colour_model(tmp_path)
    images = [encoded((255, 0, 0)), encoded((0, 0, 255), fmt="JPEG"), encoded((0, 255, 0))]
    raw = pb.ModelInferRequest(model_name="colours")
    raw.inputs.add(name="input", datatype="BYTES", shape=[3])
    raw.raw_input_contents.append(pack_bytes(images))
    typed = pb.ModelInferRequest(model_name="colours")
    typed.inputs.add(name="input", datatype="BYTES", shape=[1])
    typed.inputs[0].contents.bytes_contents.append(b"GIF89a nope")
    async with serving_grpc(path, input_shape=[3, 8, 8]) as served:
        response = await served.v2.infer(raw)
        with pytest.raises(aio.AioRpcError) as bad:
            await served.v2.infer(typed)
    means = output(response, "output")
    assert [COLOURS[i] for i in means.argmax(1)] == ["red", "blue", "green"]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input'[0]: not an image" in (bad.value.details() or "")


async def test_a_hook_model_takes_bytes_instances_and_returns_predictions(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    torch.save(net, tmp_path / "adder.pt")
    request = pb.ModelInferRequest(model_name="adder")
    request.inputs.add(name="instances", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(pack_bytes([b"1,2", b"3.5,4"]))
    failing = pb.ModelInferRequest(model_name="adder")
    failing.inputs.add(name="instances", datatype="BYTES", shape=[1])
    failing.inputs[0].contents.bytes_contents.append(b"boom")
    async with serving_grpc(tmp_path / "adder.pt", handler="tests.hooks_bytes") as served:
        response = await served.v2.infer(request)
        with pytest.raises(aio.AioRpcError) as crashed:
            await served.v2.infer(failing)
        async with AsyncGrpcClient(served.target) as client:
            metadata = await client.metadata()
    sums = output(response, "output")
    np.testing.assert_allclose(sums, [[3.0], [7.5]])
    (raw,) = [
        r
        for o, r in zip(response.outputs, response.raw_output_contents, strict=True)
        if o.name == "prediction"
    ]
    assert raw == pack_bytes([b'{"sum":3.0}', b'{"sum":7.5}'])
    assert crashed.value.code() == grpc.StatusCode.INTERNAL
    assert "the preprocess hook failed" in (crashed.value.details() or "")
    assert metadata["inputs"] == [{"name": "instances", "datatype": "BYTES", "shape": [-1]}]
