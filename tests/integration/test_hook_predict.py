"""User hooks over HTTP: custom instances in, custom predictions out, clear errors."""

from pathlib import Path

import pytest
import torch
from torch import nn

from ptserve.settings import EXAMPLE_MODEL
from tests.conftest import RequestIds, serving

pytestmark = pytest.mark.anyio


def adder(folder: Path) -> Path:
    """x, y -> x + y, as a pickled nn.Linear."""
    net = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    torch.save(net, folder / "adder.pt")
    return folder / "adder.pt"


async def test_hooks_shape_requests_and_predictions(tmp_path: Path) -> None:
    points = [{"x": 1, "y": 2}, {"x": 3.5, "y": 4}]
    async with serving(adder(tmp_path), handler="tests.hooks_example") as client:
        response = await client.post("/predict", json={"instances": points})
        meta = (await client.get("/models/adder")).json()
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [{"sum": 3.0}, {"sum": 7.5}]
    assert meta["handler"] == "tests.hooks_example"


HOOK_ERRORS = [
    ([{"x": "a", "y": 1}], 422, "invalid_input", "instances[0].x: expected a number, got 'a'"),
    (["nope"], 422, "invalid_input", "'nope' is not a point"),
    ([{"x": 1, "y": 2}, "boom"], 500, "hook_error", "the preprocess hook failed"),
    ([{"x": 6, "y": 7}], 500, "hook_error", "the postprocess hook failed"),
]


@pytest.mark.parametrize(("instances", "status", "code", "message"), HOOK_ERRORS)
async def test_hook_errors(
    tmp_path: Path,
    request_ids: RequestIds,
    instances: list[object],
    status: int,
    code: str,
    message: str,
) -> None:
    async with serving(adder(tmp_path), handler="tests.hooks_example") as client:
        response = await client.post(
            "/predict", json={"instances": instances}, headers={"x-request-id": "req-42"}
        )
        after = await client.post("/predict", json={"instances": [{"x": 1, "y": 1}]})
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert message in response.json()["error"]
    assert after.json()["predictions"] == [{"sum": 2.0}]
    if status == 500:
        hook_lines = ("the preprocess hook", "the postprocess hook")
        logged = [rid for msg, rid in request_ids.seen if msg.startswith(hook_lines)]
        assert logged == ["req-42"]  # the cause is logged with the request id


async def test_the_worked_example_handler() -> None:
    """Its own example (a drawn zero, shown in /docs) is read as a zero."""
    handler = str(Path(__file__).resolve().parents[2] / "examples" / "hooks" / "handler.py")
    async with serving(EXAMPLE_MODEL, handler=handler) as client:
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        (zero,) = body["example"]["instances"]
        response = await client.post("/predict", json={"instances": [zero]})
        short = await client.post("/predict", json={"instances": [zero[:7]]})
    assert zero[1] == "  ####  "  # the drawing, not arrays of numbers
    (prediction,) = response.json()["predictions"]
    assert prediction["digit"] == "0"
    assert prediction["sure"] is True
    assert short.status_code == 422
    assert short.json()["error"] == "instances[0]: expected 8 values, got 7"


HANDLER_WITH_EXAMPLE = """
import numpy as np

example = {"x": 1.5, "y": 2}


def preprocess(instances):
    return np.array([[p["x"], p["y"]] for p in instances], dtype=np.float32)
"""


async def test_a_handlers_example_is_the_openapi_example(tmp_path: Path) -> None:
    handler = tmp_path / "points.py"
    handler.write_text(HANDLER_WITH_EXAMPLE)
    async with serving(adder(tmp_path), handler=str(handler)) as client:
        schema = (await client.get("/openapi.json")).json()
        content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        example = content["application/json"]["example"]
        response = await client.post("/predict", json=example)
    assert example == {"instances": [{"x": 1.5, "y": 2}]}
    assert schema["components"]["schemas"]["PredictRequest"]["examples"] == [example]
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [[3.5]]
