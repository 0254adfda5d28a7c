"""Metrics, request ids, Server-Timing, JSON access logs, API keys, body limit and CORS."""

import asyncio
import os
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ptserve.settings import EXAMPLE_MODEL
from tests.conftest import serving

pytestmark = pytest.mark.anyio
ZEROS = {"instances": [[0] * 64]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_as_requests_are_served() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        before = samples((await client.get("/metrics")).text)
        for _ in range(3):
            assert (await client.post("/predict", json=ZEROS)).status_code == 200
        assert (await client.post("/predict", json={"instances": [[1]]})).status_code == 422
        response = await client.get("/metrics")
    after = samples(response.text)
    assert response.headers["content-type"].startswith("text/plain")
    ok = {"route": "/predict", "method": "POST", "status": "200"}
    assert (
        value(after, "ptserve_requests_total", **ok) - value(before, "ptserve_requests_total", **ok)
        == 3
    )
    assert (
        value(after, "ptserve_requests_total", route="/predict", method="POST", status="422") == 1
    )
    assert (
        value(after, "ptserve_request_duration_seconds_count", route="/predict", method="POST") == 4
    )
    assert value(after, "ptserve_batch_size_count", model="digits", version="1") == 3
    assert value(after, "ptserve_queue_wait_seconds_count", model="digits", version="1") == 3
    assert (
        value(after, "ptserve_inference_duration_seconds_count", model="digits", version="1") == 3
    )
    assert value(after, "ptserve_queue_depth", model="digits", version="1") == 0
    assert value(after, "ptserve_model_load_seconds", model="digits", version="1") > 0
    info = [k for k in after if k[0] == "ptserve_model_info"]
    assert len(info) == 1
    assert dict(info[0][1])["format"] == "pickle"
    assert len(dict(info[0][1])["sha256"]) == 64


async def test_request_id_is_honoured_or_made_and_server_timing_is_sent() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        given = await client.post("/predict", json=ZEROS, headers={"X-Request-ID": "req-42"})
        made = await client.post("/predict", json=ZEROS)
        failed = await client.post("/predict", json={"instances": []})
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.headers["x-request-id"]) == 32
    assert failed.headers["x-request-id"]  # errors carry one too
    parts = dict(p.strip().split(";dur=") for p in given.headers["server-timing"].split(","))
    assert set(parts) == {"queue", "inference", "total"}
    assert all(float(v) >= 0 for v in parts.values())
    assert float(parts["total"]) >= float(parts["inference"])


async def test_access_log_is_one_json_line_with_the_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving(EXAMPLE_MODEL) as client:
        await client.post("/predict", json=ZEROS, headers={"X-Request-ID": "log-me"})
    (line,) = [
        orjson.loads(x) for x in capsys.readouterr().err.splitlines() if "ptserve.access" in x
    ]
    assert line["request_id"] == "log-me"
    assert (line["method"], line["route"], line["status"], line["model"]) == (
        "POST",
        "/predict",
        200,
        "digits",
    )
    assert line["duration_ms"] > 0
    assert line["level"] == "info"
    assert "code" not in line


async def test_access_lines_say_why_a_request_failed_and_none_is_lost_on_stop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every request of a burst has its line once the app has stopped (the writer flushes on
    shutdown), and an error's line carries its code, in JSON and in text."""
    async with serving(EXAMPLE_MODEL) as client:
        answers = await asyncio.gather(
            *(client.post("/predict", json=ZEROS) for _ in range(200)),
            client.post("/predict", json={"instances": [[1, 2]]}),
        )
    lines = [orjson.loads(x) for x in capsys.readouterr().err.splitlines() if "ptserve.access" in x]
    assert [a.status_code for a in answers] == [200] * 200 + [422]
    assert len(lines) == 201
    (bad,) = [line for line in lines if line["status"] == 422]
    assert bad["code"] == "invalid_input"
    async with serving(EXAMPLE_MODEL, log_format="text") as client:
        await client.get("/nope")
    (text,) = [x for x in capsys.readouterr().err.splitlines() if "GET /nope" in x]
    assert text.startswith("INFO:     GET /nope 404  duration_ms=")
    assert "model=None code=not_found request_id=" in text


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("# ops keys\nfirst-key\nsecond-key\n")
    return path


async def test_api_keys_guard_everything_but_health_and_metrics(key_file: Path) -> None:
    async with serving(EXAMPLE_MODEL, api_key_file=key_file) as client:
        missing = await client.post("/predict", json=ZEROS)
        wrong = await client.post("/predict", json=ZEROS, headers={"X-API-Key": "nope"})
        bearer = await client.post(
            "/predict", json=ZEROS, headers={"Authorization": "Bearer first-key"}
        )
        header = await client.post("/predict", json=ZEROS, headers={"X-API-Key": "second-key"})
        models = await client.get("/models")
        health = await client.get("/health/ready")
        metrics = await client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json() == {
        "error": "this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        "code": "unauthorized",
    }
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert "a valid API key" in wrong.json()["error"]
    assert bearer.status_code == header.status_code == 200
    assert models.status_code == 401
    assert health.status_code == metrics.status_code == 200


async def test_health_and_metrics_can_be_protected(key_file: Path) -> None:
    async with serving(
        EXAMPLE_MODEL, api_key_file=key_file, protect_health=True, protect_metrics=True
    ) as client:
        assert (await client.get("/health/ready")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"X-API-Key": "first-key"})).status_code == 200


async def test_keys_rotate_without_a_restart(key_file: Path) -> None:
    async with serving(EXAMPLE_MODEL, api_key_file=key_file) as client:
        assert (
            await client.post("/predict", json=ZEROS, headers={"X-API-Key": "first-key"})
        ).status_code == 200
        key_file.write_text("rotated-key\n")
        os.utime(key_file, ns=(1, 1))  # a change even within the file system's timestamp grain
        old = await client.post("/predict", json=ZEROS, headers={"X-API-Key": "first-key"})
        new = await client.post("/predict", json=ZEROS, headers={"X-API-Key": "rotated-key"})
        key_file.write_text("")  # a broken file keeps the last good keys
        still = await client.post("/predict", json=ZEROS, headers={"X-API-Key": "rotated-key"})
    assert old.status_code == 401
    assert new.status_code == 200
    assert still.status_code == 200


async def test_body_over_the_limit_is_413_before_it_is_read() -> None:
    body = orjson.dumps({"instances": [[0.5] * 64] * 20})
    async with serving(EXAMPLE_MODEL, max_body_bytes=1000) as client:
        declared = await client.post(
            "/predict", content=body, headers={"content-type": "application/json"}
        )

        async def chunks():  # no Content-Length: the limit applies as the body streams in
            for i in range(0, len(body), 200):
                yield body[i : i + 200]

        streamed = await client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        small = await client.post("/predict", json=ZEROS)
    assert declared.status_code == 413
    assert declared.json() == {
        "error": f"the request body is {len(body)} bytes; the limit is 1000 bytes (the max_body_bytes setting)",
        "code": "body_too_large",
    }
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "body_too_large"
    assert small.status_code == 200


async def test_cors_is_off_by_default_and_configurable() -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with serving(EXAMPLE_MODEL) as client:
        off = await client.post("/predict", json=ZEROS, headers={"Origin": "https://app.example"})
    async with serving(EXAMPLE_MODEL, cors_origins=["https://app.example"]) as client:
        on = await client.options("/predict", headers=preflight)
        other = await client.options(
            "/predict", headers={**preflight, "Origin": "https://evil.example"}
        )
    assert "access-control-allow-origin" not in off.headers
    assert on.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
