"""A repository over gRPC, in-process: ModelInfer reaches each version by name and version, and a
version swapped out after gRPC used it is freed (its gRPC codec goes with it)."""

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from grpc import aio

from ptserve.client import AsyncGrpcClient
from ptserve.grpc import grpc_predict_v2_pb2 as pb
from tests.conftest import serving_app
from tests.e2e.conftest import free_port
from tests.repos import add_version, marked_net, write_config

pytestmark = pytest.mark.anyio
ZEROS = np.zeros((1, 4), np.float32)


async def infer_version(target: str, version: str) -> tuple[str, float]:
    """ModelInfer on model m at ``version`` ("" for the highest served), with raw contents."""
    request = pb.ModelInferRequest(model_name="m", model_version=version)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(ZEROS.tobytes())
    async with aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response: pb.ModelInferResponse = await call(request)
    marker = np.frombuffer(response.raw_output_contents[0], np.float32)[0]
    return response.model_version, float(marker)


async def test_grpc_reaches_each_version_and_lets_a_swapped_out_one_go(tmp_path: Path) -> None:
    add_version(tmp_path, "m", 1, marked_net(1))
    write_config(tmp_path, "m", 'version_policy = "all"\n')
    port = free_port()
    async with serving_app(tmp_path, grpc_port=port) as (app, client):
        target = f"127.0.0.1:{port}"
        add_version(tmp_path, "m", 2, marked_net(2))
        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        both = [await infer_version(target, v) for v in ("1", "2", "")]
        async with AsyncGrpcClient(target, model="m") as grpc_client:
            latest = await grpc_client.infer(ZEROS)
        loaded_after_start = weakref.ref(app.state.runtime.serving("m", "2").service)
        write_config(tmp_path, "m", 'version_policy = "latest"\n')
        add_version(tmp_path, "m", 3, marked_net(3))
        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        after = await infer_version(target, "")
        gc.collect()
        released = loaded_after_start() is None
    assert both == [("1", 1.0), ("2", 2.0), ("2", 2.0)]
    assert latest["output"].tolist() == [[2.0, 2.0]]
    assert after == ("3", 3.0)
    assert released
