"""Operations end to end: metrics across workers, and a graceful drain under load."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests import nets
from tests.e2e.conftest import running_ptserve
from tests.guards import REQUEST_S, hang_guard

DIGIT = {"instances": [[0.0] * 64]}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


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


def test_sigterm_under_load_finishes_accepted_work_and_exits_0(tmp_path: Path) -> None:
    torch.save(nets.FileGatedNet(), tmp_path / "held.pt")
    gate = tmp_path / "gate"
    args = [str(tmp_path / "held.pt"), "--trust-module", "tests.nets", "--input-shape", "2",
            "--execution", "thread", "--max-batch-size", "4", "--drain-timeout-s", "30"]  # fmt: skip
    env = {"TEST_GATE_FILE": str(gate)}
    with running_ptserve(args, tmp_path / "log", env) as server, ThreadPoolExecutor(12) as pool:
        held = {"instances": [[nets.HOLD, 1.0]]}
        accepted = [
            pool.submit(
                httpx.post, f"{server.base_url}/predict", json=held, timeout=hang_guard(REQUEST_S)
            )
            for _ in range(10)
        ]
        with httpx.Client(base_url=server.base_url) as client:
            while (
                metric(client.get("/metrics").text, "ptserve_requests_in_flight") < 11
            ):  # 10 + this one
                time.sleep(0.02)
            os.kill(server.process.pid, signal.SIGTERM)
            while client.get("/health/ready").status_code != 503:
                time.sleep(0.02)
            # readiness is 503 (load balancers stop sending), but what still arrives is served
            late = pool.submit(
                httpx.post, f"{server.base_url}/predict", json={"instances": [[1.0, 2.0]]},
                timeout=60,
            )  # fmt: skip
            time.sleep(0.2)  # let it reach the queue behind the held batch (no wait for a result)
        gate.touch()
        results = [f.result() for f in accepted]
        exit_code = server.process.wait(timeout=hang_guard(REQUEST_S))
    assert [r.status_code for r in results] == [200] * 10
    assert all(r.json()["predictions"] == [[nets.HOLD, 1.0]] for r in results)
    assert late.result().status_code == 200
    assert exit_code == 0
    assert "drained; shutting down" in server.log()
