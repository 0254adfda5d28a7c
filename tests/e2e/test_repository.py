"""A model repository behind the real CLI: a new version dropped into the folder under continuous
load takes over with zero failed requests (and a broken one after it changes nothing), readiness
stays 200 throughout; Triton's client drives the repository API with API keys, and memory
returns after an unload."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from torch import nn
from tritonclient.utils import InferenceServerException

from ptserve.client import Client
from tests.e2e.conftest import Server, free_port, run_cli, running_ptserve
from tests.repos import add_broken_version, add_version, marked_net, write_config

HANG_GUARD_S = 180.0  # only ends a test that would otherwise hang; never a timed assertion
SETTLE_ANSWERS = 5  # answers each client must get in each phase
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]}


@dataclass
class Stream:
    """One client sending requests back to back: each answer's HTTP status and marker."""

    name: str
    send: Callable[[], tuple[int, float | None]]
    answers: list[tuple[int, float | None]] = field(default_factory=list)

    def markers(self) -> list[float | None]:
        return [marker for _, marker in self.answers]


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"hang guard: still waiting for {what} after {HANG_GUARD_S:.0f} s")
        time.sleep(0.05)


@contextmanager
def streaming(streams: list[Stream]) -> Iterator[None]:
    """Run every stream in its own thread until the block ends."""
    stop = threading.Event()

    def run(stream: Stream) -> None:
        while not stop.is_set():
            stream.answers.append(stream.send())

    with ThreadPoolExecutor(len(streams)) as pool:
        running = [pool.submit(run, stream) for stream in streams]
        try:
            yield
        finally:
            stop.set()
            for future in running:
                future.result()


def streams_for(server: Server, clients: list[httpx.Client], v2: Client) -> list[Stream]:
    """Clients of every protocol for model ``m``, one for ``other``, and a readiness poller."""
    json_client, v1_client, predict_client, other_client, ready_client = clients

    def v2_json() -> tuple[int, float | None]:
        response = json_client.post("/v2/models/m/infer", json=V2_BODY)
        body = response.json()
        ok = response.status_code == 200
        return response.status_code, body["outputs"][0]["data"][0] if ok else None

    def v2_binary() -> tuple[int, float | None]:
        return 200, float(v2.infer(np.zeros((1, 4), np.float32))["output"][0, 0])

    def simple(client: httpx.Client, path: str) -> Callable[[], tuple[int, float | None]]:
        def send() -> tuple[int, float | None]:
            response = client.post(path, json={"instances": [[0, 0, 0, 0]]})
            ok = response.status_code == 200
            return response.status_code, response.json()["predictions"][0][0] if ok else None

        return send

    def ready() -> tuple[int, float | None]:
        return ready_client.get("/health/ready").status_code, None

    return [
        Stream("v2 json", v2_json),
        Stream("v2 binary", v2_binary),
        Stream("v1", simple(v1_client, "/v1/models/m:predict")),
        Stream("predict", simple(predict_client, "/predict")),
        Stream("other model", simple(other_client, "/v1/models/other:predict")),
        Stream("readiness", ready),
    ]


def index(server: Server) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = httpx.post(f"{server.base_url}/v2/repository/index").json()
    return rows


def metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_a_new_version_dropped_in_under_load_takes_over_with_zero_failures(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "m", 1, marked_net(1))
    add_version(repo, "other", 1, marked_net(50))
    args = [str(repo), "--watch", "--watch-interval-s", "0.2", "--default-model", "m"]
    with running_ptserve([*args, "--no-access-log"], tmp_path / "server.log") as server:
        clients = [httpx.Client(base_url=server.base_url, timeout=60) for _ in range(5)]
        v2 = Client(server.base_url, model="m", timeout=60)
        streams = streams_for(server, clients, v2)
        senders = [s for s in streams if s.name != "readiness"]
        try:
            with streaming(streams):
                counts = lambda: [len(s.answers) for s in senders]  # noqa: E731
                wait_until(lambda: min(counts()) >= SETTLE_ANSWERS, "answers from version 1")
                add_version(repo, "m", 2, marked_net(2))
                wait_until(
                    lambda: all(2.0 in s.markers() for s in senders if s.name != "other model"),
                    "every client's first answer from version 2",
                )
                after_swap = counts()
                add_broken_version(repo, "m", 3)
                wait_until(
                    lambda: any(r["reason"].startswith("m/3/model.pt") for r in index(server)),
                    "the broken version 3 to be reported",
                )
                reported = counts()
                wait_until(
                    lambda: all(
                        n >= r + SETTLE_ANSWERS for n, r in zip(counts(), reported, strict=True)
                    ),
                    "answers after the broken version",
                )
        finally:
            v2.close()
            for client in clients:
                client.close()
        rows = index(server)
        loads = {
            (v, outcome): metric(
                server, "ptserve_model_loads_total", model="m", version=v, outcome=outcome
            )
            for v, outcome in (("1", "ok"), ("2", "ok"), ("3", "failed"))
        }
        log = server.log()
    failed = {s.name: [a for a in s.answers if a[0] != 200] for s in streams}
    assert failed == {s.name: [] for s in streams}  # zero failed requests, readiness always 200
    for stream in senders:
        markers = stream.markers()
        if stream.name == "other model":
            assert set(markers) == {50.0}
            continue
        switch = markers.index(2.0)
        assert set(markers[:switch]) == {1.0}, stream.name  # version 1 until the swap...
        assert set(markers[switch:]) == {2.0}, stream.name  # ...then version 2 only, 3 never
    assert all(n > SETTLE_ANSWERS for n in after_swap)
    assert {"name": "m", "version": "2", "state": "READY", "reason": ""} in rows
    broken = next(r for r in rows if r["version"] == "3")
    assert broken["reason"].startswith("m/3/model.pt: unknown model format")
    assert loads == {("1", "ok"): 1, ("2", "ok"): 1, ("3", "failed"): 1}
    assert "model 'm' version 1 released" in log
    assert "model 'm' version 3 failed to load" in log


def rss_bytes(server: Server) -> int:
    """The server process's resident memory (VmRSS)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


BIG = 4096  # a 4096 x 4096 float32 layer: 64 MiB of weights
RETURNED_AT_LEAST = 0.75  # of the weights' bytes, back to the OS once the model is unloaded
LEAK_AT_MOST = 0.10  # of the weights' bytes, kept by one more load and unload


def test_triton_client_unloads_and_loads_with_api_keys_and_memory_returns(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(4, BIG), nn.Linear(BIG, BIG), nn.Linear(BIG, 2)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    add_version(repo, "big", 1, big)
    write_config(repo, "big", "max_batch_size = 1\n")  # a short warm-up
    add_version(repo, "small", 1, marked_net(8))
    (tmp_path / "keys").write_text("s3cret\n")
    args = [str(repo), "--api-key-file", str(tmp_path / "keys"), "--no-access-log"]
    with running_ptserve(args, tmp_path / "server.log") as server:
        url = server.base_url.removeprefix("http://")
        keyed = {"Authorization": "Bearer s3cret"}
        client = triton.InferenceServerClient(url=url)
        try:
            with pytest.raises(InferenceServerException, match="needs an API key"):
                client.unload_model("big")
            states = {
                r["name"]: r["state"] for r in client.get_model_repository_index(headers=keyed)
            }
            loaded = rss_bytes(server)
            client.unload_model("big", headers=keyed)
            unloaded = rss_bytes(server)
            assert not client.is_model_ready("big", headers=keyed)
            small_ready = client.is_model_ready("small", headers=keyed)
            client.load_model("big", headers=keyed)
            big_ready = client.is_model_ready("big", headers=keyed)
            reloaded = rss_bytes(server)
            client.unload_model("big", headers=keyed)
            unloaded_again = rss_bytes(server)
        finally:
            client.close()
    assert states == {"big": "READY", "small": "READY"}
    assert small_ready
    assert big_ready
    assert loaded - unloaded >= RETURNED_AT_LEAST * weight_bytes, (loaded, unloaded)
    assert reloaded - unloaded_again >= RETURNED_AT_LEAST * weight_bytes, (reloaded, unloaded_again)
    assert unloaded_again - unloaded <= LEAK_AT_MOST * weight_bytes, (unloaded, unloaded_again)


def test_a_broken_model_stops_start_up_with_one_line(tmp_path: Path) -> None:
    add_version(tmp_path, "fine", 1, marked_net(1))
    add_broken_version(tmp_path, "broken", 2)
    result = run_cli(["serve", str(tmp_path), "--port", str(free_port())])
    lines = [line for line in result.output.splitlines() if "unknown model format" in line]
    assert result.returncode == 3, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    assert f"{tmp_path}/broken/2/model.pt: unknown model format" in lines[0]  # the real path
