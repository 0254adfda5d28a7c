"""Operations end to end: metrics across workers (the drain: test_drain.py)."""

from pathlib import Path

import httpx

from tests.e2e.conftest import running_ptserve
from tests.e2e.traffic import metric

DIGIT = {"instances": [[0.0] * 64]}


def test_metrics_add_up_across_two_workers(tmp_path: Path) -> None:
    with (
        running_ptserve(["--workers", "2"], tmp_path / "log") as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        for _ in range(30):
            with httpx.Client(
                base_url=server.base_url
            ) as fresh:  # new connections spread over workers
                response = fresh.post("/predict", json=DIGIT)
                assert response.status_code == 200
        text = client.get("/metrics").text
    assert server.log().count("Started server process") == 2
    assert metric(text, "ptserve_requests_total", route="/predict", status="200") == 30
    assert metric(text, "ptserve_batch_size_count", model="digits") == 30
    assert metric(text, "ptserve_model_info", model="digits") == 1  # max over workers
