import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ptserve.settings import EXAMPLE_MODEL
from tests.conftest import serving
from tests.integration.test_grpc import raw_request, serving_grpc

pytestmark = pytest.mark.anyio
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: the global provider
    return exporter


async def test_a_span_per_request_with_queue_and_inference_children(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    traceparent = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
    async with serving(EXAMPLE_MODEL, tracing=True) as client:
        response = await client.post(
            "/predict", json={"instances": [[0] * 64]}, headers={"traceparent": traceparent}
        )
    assert response.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request = spans["POST /predict"]
    assert f"{request.context.trace_id:032x}" == PARENT_TRACE  # continues the caller's trace
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["ptserve.request_id"] == response.headers["x-request-id"]
    for child in ("queue", "inference"):
        assert spans[child].parent.span_id == request.context.span_id
        assert spans[child].start_time <= spans[child].end_time
    assert spans["queue"].end_time == spans["inference"].start_time
    assert spans["inference"].attributes["ptserve.batch_size"] == 1


async def test_no_spans_when_tracing_is_off(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    async with serving(EXAMPLE_MODEL) as client:
        assert (await client.post("/predict", json={"instances": [[0] * 64]})).status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == []


async def test_a_grpc_call_gets_its_span_continuing_the_trace_from_metadata(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    traceparent = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
    async with serving_grpc(EXAMPLE_MODEL, tracing=True) as served:
        call = served.v2.call(
            "ModelInfer",
            raw_request(input=np.zeros((1, 64), np.float32)),
            metadata=(("traceparent", traceparent), ("x-request-id", "traced-1")),
        )
        await call
        assert await call.code() == grpc.StatusCode.OK
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request = spans["GRPC /inference.GRPCInferenceService/ModelInfer"]
    assert f"{request.context.trace_id:032x}" == PARENT_TRACE
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["ptserve.request_id"] == "traced-1"
    for child in ("queue", "inference"):
        assert spans[child].parent.span_id == request.context.span_id
