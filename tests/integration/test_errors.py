"""One error boundary: every error response — 4xx, 404/405, an unexpected 500 — is rendered the
same way, carries X-Request-ID, and its log line carries the request id; a model failure in a
batch is logged with the ids of the requests it failed."""

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ptserve.observability import context
from ptserve.settings import EXAMPLE_MODEL
from tests import nets
from tests.conftest import serving, serving_app
from tests.guards import REQUEST_S, hang_guard

pytestmark = pytest.mark.anyio


class Records(logging.Handler):
    """Every ptserve log record, with the request id in force when it was logged."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[logging.LogRecord, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record, context.request_id.get()))


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logging.getLogger("ptserve").addHandler(handler)
    yield handler
    logging.getLogger("ptserve").removeHandler(handler)


async def test_every_kind_of_error_response_carries_the_request_id() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        answers = {
            "422": await client.post("/predict", json={"instances": [[1]]}),
            "400": await client.post("/predict", content=b"{", headers={"content-type": "application/json"}),
            "404 route": await client.get("/nope"),
            "404 model": await client.post("/v1/models/nope:predict", json={"instances": [[0] * 64]}),
            "405": await client.get("/predict"),
            "405 V2": await client.get("/v2/models/digits/infer"),
            "415": await client.post("/predict", content=b"x", headers={"content-type": "text/plain"}),
        }  # fmt: skip
        given = await client.get("/nope", headers={"X-Request-ID": "mine-1"})
    for what, answer in answers.items():
        assert answer.status_code == int(what[:3]), (what, answer.text)
        assert len(answer.headers["x-request-id"]) == 32, what
        assert set(answer.json()) <= {"error", "code", "detail"}, what
        assert answer.json()["code"], what
    assert answers["405"].headers["allow"] == "POST"
    assert given.headers["x-request-id"] == "mine-1"


async def test_an_unexpected_error_is_a_500_with_the_request_id_in_the_answer_and_the_log(
    records: Records,
) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug in a route")

    async with serving_app(EXAMPLE_MODEL) as (app, client):
        app.add_api_route("/broken", broken, methods=["GET"])  # a route with a bug
        answer = await client.get("/broken", headers={"X-Request-ID": "bug-7"})
        after = await client.post("/predict", json={"instances": [[0] * 64]})
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal server error; the server log has details",
        "code": "internal_error",
    }
    assert answer.headers["x-request-id"] == "bug-7"
    assert "a bug in a route" not in answer.text
    (logged,) = [(r, rid) for r, rid in records.seen if r.levelno == logging.ERROR]
    assert logged[1] == "bug-7"
    assert logged[0].exc_info is not None
    assert "a bug in a route" in str(logged[0].exc_info[1])
    assert after.status_code == 200  # the server goes on


async def test_a_failed_batch_is_logged_with_its_requests_ids(
    tmp_path: Path, records: Records
) -> None:
    """Two requests queued behind a held batch run together; the batch fails, is logged with
    both ids, and re-run one by one: the failing one is logged under its own id."""
    torch.save(nets.GatedFailingNet(), tmp_path / "gated.pt")
    nets.GATE.clear()
    nets.ENTERED.clear()
    async with serving_app(
        tmp_path / "gated.pt", trust_modules=["tests.nets"], input_shape=[2], execution="thread"
    ) as (app, client):
        batcher = app.state.runtime.models.get(None).service.batcher
        held = asyncio.ensure_future(client.post("/predict", json={"instances": [[nets.HOLD, 0]]}))
        await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, 10)
        queued = [
            asyncio.ensure_future(
                client.post("/predict", json={"instances": [values]}, headers={"X-Request-ID": rid})
            )
            for rid, values in (("good-1", [1, 2]), ("bad-2", [-999, 0]))
        ]
        deadline = time.monotonic() + hang_guard(REQUEST_S)
        while batcher.queued_samples < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # poll until both wait behind the held batch
        nets.GATE.set()
        good, bad = await asyncio.gather(*queued)
        await held
    assert (good.status_code, bad.status_code) == (200, 500)
    assert bad.json()["code"] == "model_error"
    assert bad.headers["x-request-id"] == "bad-2"
    (batch,) = [
        r.getMessage() for r, _ in records.seen if "re-running them one by one" in r.getMessage()
    ]
    assert "good-1" in batch
    assert "bad-2" in batch
    (failure,) = [(r, rid) for r, rid in records.seen if r.levelno == logging.ERROR]
    assert failure[1] == "bad-2"  # the model's failure, under the failing request's id
