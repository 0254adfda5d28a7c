"""Replicas on Ray Serve: 1 -> 2 by configuration and by the autoscaler under load, a replica
killed with SIGKILL while a client keeps sending, and a replica stopped while it holds a
request."""

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from ptserve.settings import Settings
from tests import nets
from tests.artefacts import Artefact
from tests.e2e.ray_serve.conftest import RayCluster

HANG_GUARD_S = 180.0  # bounds every wait; none of them is a timing assertion


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (monotonic), and how it ended."""

    sent: float
    answered: float
    status: int  # -1: no HTTP answer (the connection failed)
    detail: str


class Load:
    """``clients`` threads, each sending the same /predict request in a loop until stopped."""

    def __init__(self, url: str, body: dict[str, Any], clients: int) -> None:
        self.url, self.body = url, body
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send) for _ in range(clients)]

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60.0) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/predict", json=self.body)
                    status, detail = response.status_code, response.text[:200]
                except httpx.HTTPError as exc:
                    status, detail = -1, repr(exc)
                self.answers.append(Answer(sent, time.monotonic(), status, detail))

    def ok_since(self, moment: float) -> int:
        return sum(1 for a in list(self.answers) if a.sent >= moment and a.status == 200)

    def wait_ok(self, count: int, since: float) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while self.ok_since(since) < count:
            assert time.monotonic() < deadline, f"fewer than {count} answers in {HANG_GUARD_S}s"
            time.sleep(0.05)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.fixture
def tiny(artefacts: dict[str, Artefact]) -> tuple[Artefact, dict[str, Any]]:
    artefact = artefacts["safetensors"]
    settings = {"model_path": artefact.path, "name": "tiny", **artefact.settings}
    return artefact, settings


def replicas_answering_metrics(cluster: RayCluster, scrapes: int) -> set[str]:
    """The replica ids seen in ``scrapes`` scrapes of /metrics through the proxy."""
    seen = set()
    with cluster.client() as http:
        for _ in range(scrapes):
            for line in http.get("/metrics").text.splitlines():
                if line.startswith("ptserve_ray_replica{"):
                    seen.add(line.split('replica="')[1].split('"')[0])
    return seen


def test_one_then_two_fixed_replicas(
    ray_cluster: RayCluster, tiny: tuple[Artefact, dict[str, Any]]
) -> None:
    artefact, settings = tiny
    ray_cluster.deploy(Settings(**settings, ray={"num_replicas": 1}))
    ray_cluster.wait_running(1)
    assert len(replicas_answering_metrics(ray_cluster, 20)) == 1
    # serve.run rolls every replica over to the new version (Ray 2.60 gives each serve.run a
    # new code version); a config redeploy keeps them (test_config.py).
    ray_cluster.deploy(Settings(**settings, ray={"num_replicas": 2}))
    ray_cluster.wait_running(2)
    # Ray's router spreads requests over idle replicas at random: within 200 scrapes each is
    # picked (the chance that one is never picked is 2 ** -199).
    assert len(replicas_answering_metrics(ray_cluster, 200)) == 2
    with ray_cluster.client() as http:
        response = http.post("/predict", json={"instances": artefact.inputs.tolist()})
    np.testing.assert_allclose(response.json()["predictions"], artefact.expected, rtol=1e-5)


def test_the_autoscaler_adds_a_replica_under_load(
    ray_cluster: RayCluster, tiny: tuple[Artefact, dict[str, Any]]
) -> None:
    artefact, settings = tiny
    ray_cluster.delete()  # start from one replica, not from what an earlier test left
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 600,  # no scale-down while the test looks
    }
    ray_cluster.deploy(Settings(**settings, ray=autoscaling))
    ray_cluster.wait_running(1)
    body = {"instances": artefact.inputs.tolist()}
    # Four clients keep about four requests in flight: above one per replica, so the
    # autoscaler must add the second replica (it may not add a third: max_replicas is 2).
    with Load(ray_cluster.url, body, clients=4) as load:
        ray_cluster.wait_running(2, timeout=HANG_GUARD_S)
    assert [a for a in load.answers if a.status != 200] == []
    assert load.ok_since(0) > 0


def test_a_killed_replica_is_replaced_and_only_its_requests_fail(
    ray_cluster: RayCluster,
    tiny: tuple[Artefact, dict[str, Any]],
    request: pytest.FixtureRequest,
) -> None:
    artefact, settings = tiny
    ray_cluster.deploy(Settings(**settings, ray={"num_replicas": 2}))
    ray_cluster.wait_running(2)
    victim = min(ray_cluster.replica_pids())
    body = {"instances": artefact.inputs.tolist()}
    with Load(ray_cluster.url, body, clients=4) as load:
        load.wait_ok(50, since=0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        ray_cluster.wait_running(2)  # Ray noticed and started a replacement
        replaced_at = time.monotonic()
        assert victim not in ray_cluster.replica_pids()
        load.wait_ok(50, since=replaced_at)
    failed = [a for a in load.answers if a.status != 200]
    in_flight = [a for a in load.answers if a.sent <= killed_at <= a.answered]
    for name, value in [
        ("answers", len(load.answers)),
        ("in_flight_at_kill", len(in_flight)),
        ("failed", len(failed)),
    ]:
        request.node.user_properties.append((name, value))  # in --junitxml reports
    # Only requests in flight on the killed replica can fail: each failure was sent before the
    # kill and answered after it, so no request sent after the kill failed.
    assert all(a in in_flight for a in failed), (in_flight, failed)
    assert all(a.status == 500 for a in failed), failed  # Ray's proxy: the replica died
    # The survivor kept answering while the replacement started.
    assert load.ok_since(killed_at) - load.ok_since(replaced_at) > 0


def in_flight(http: httpx.Client) -> tuple[float, str]:
    """ptserve_requests_in_flight (this scrape included) of the replica that answers, and its
    replica id."""
    text = http.get("/metrics").text
    (count,) = [
        line for line in text.splitlines() if line.startswith("ptserve_requests_in_flight ")
    ]
    (replica,) = [line for line in text.splitlines() if line.startswith("ptserve_ray_replica{")]
    return float(count.split()[1]), replica.split('replica="')[1].split('"')[0]


def test_a_stopping_replica_finishes_its_requests_first(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    torch.save(nets.FileGatedNet(), tmp_path / "held.pt")
    ray_cluster.gate.unlink(missing_ok=True)
    settings = Settings(
        model_path=tmp_path / "held.pt",
        input_shape=[2],
        trust_modules=["tests.nets"],
        execution="thread",  # the held batch must leave the event loop free to answer
    )
    ray_cluster.deploy(settings)
    ray_cluster.wait_running(1)
    (replica,) = ray_cluster.replica_pids()
    answers: list[httpx.Response] = []

    def send() -> None:
        with ray_cluster.client() as http:
            answers.append(http.post("/predict", json={"instances": [[nets.HOLD, 1.0]]}))

    sender = threading.Thread(target=send)
    deleter = threading.Thread(target=ray_cluster.delete)
    sender.start()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        with ray_cluster.client() as http:
            while (seen := in_flight(http))[0] < 2:  # the held request, and this scrape
                assert time.monotonic() < deadline, "the request never reached the model"
                time.sleep(0.05)
        deleter.start()  # Ray stops the replica while it holds the request
        # Ray's drain in that replica has seen the request (a line of Ray 2.60's replica log).
        replica_log = f"replica_ptserve_ptserve_{seen[1]}.log"
        while "1 ongoing requests" not in ray_cluster.logs(replica_log):
            assert time.monotonic() < deadline, "Ray did not start stopping the replica"
            time.sleep(0.1)
    finally:
        ray_cluster.gate.touch()
        sender.join()
        if deleter.ident is not None:  # started
            deleter.join()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [[nets.HOLD, 1.0]]
    deadline = time.monotonic() + HANG_GUARD_S
    while replica in ray_cluster.replica_pids():
        assert time.monotonic() < deadline, "the stopped replica's process is still there"
        time.sleep(0.1)
    logs = ray_cluster.logs()
    assert "Ray Serve replica: 1 CPU(s), 1 torch thread(s)" in logs
    assert "Ray Serve is stopping this replica: draining (up to 30.0s)" in logs
    assert "drain timeout" not in logs
