"""Backpressure and deadlines over HTTP, with a model the test holds inside a forward pass."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI

from tests import nets
from tests.conftest import serving_app
from tests.guards import REQUEST_S, hang_guard

pytestmark = pytest.mark.anyio


@pytest.fixture
async def gated_app(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    torch.save(nets.GatedNet(), tmp_path / "gated.pt")
    nets.GATE.clear()
    nets.ENTERED.clear()
    async with serving_app(
        tmp_path / "gated.pt",
        trust_modules=["tests.nets"],
        input_shape=[2],
        max_queue=2,
        execution="thread",  # the test holds the model inside a forward pass
    ) as served:
        yield served
        nets.GATE.set()


@pytest.fixture
def gated(gated_app: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return gated_app[1]


async def hold_the_model(client: httpx.AsyncClient) -> "asyncio.Task[httpx.Response]":
    held = asyncio.ensure_future(client.post("/predict", json={"instances": [[nets.HOLD, 0]]}))
    await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, hang_guard(REQUEST_S))
    return held


async def test_request_past_its_deadline_gets_504(gated: httpx.AsyncClient) -> None:
    held = await hold_the_model(gated)
    late = await gated.post(
        "/predict", json={"instances": [[1, 2]]}, headers={"X-Request-Timeout-Ms": "20"}
    )
    nets.GATE.set()
    assert late.status_code == 504
    assert late.json()["code"] == "deadline_exceeded"
    assert (await held).status_code == 200


async def test_full_queue_gets_503_with_retry_after(
    gated_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, gated = gated_app
    batcher = app.state.runtime.models.get(None).service.batcher
    held = await hold_the_model(gated)
    queued = asyncio.ensure_future(gated.post("/predict", json={"instances": [[1, 2], [3, 4]]}))
    while batcher.queued_samples < 2:
        await asyncio.sleep(0)
    refused = await gated.post("/predict", json={"instances": [[5, 6]]})
    nets.GATE.set()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"
    assert (await held).status_code == 200
    assert (await queued).json()["predictions"] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("value", ["soon", "-5", "0", "inf"])
async def test_bad_timeout_header_is_a_400(value: str, gated: httpx.AsyncClient) -> None:
    response = await gated.post(
        "/predict", json={"instances": [[1, 2]]}, headers={"X-Request-Timeout-Ms": value}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_header"
