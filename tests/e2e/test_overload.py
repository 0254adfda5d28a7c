"""Overload end to end: far more clients than a small queue holds, each sending again as soon
as it is answered. Beyond the queue, requests wait (unread) for room and then get 503 with
Retry-After; every admitted request is answered correctly; memory comes back afterwards.

The goodput (admitted requests per second against capacity) is a benchmark figure
(``python -m bench.overload``), not asserted here.
"""

import threading
from collections import Counter
from pathlib import Path

import httpx
import torch

from tests import nets
from tests.e2e.conftest import running_ptserve
from tests.guards import REQUEST_S, hang_guard

CLIENTS = 48
REQUESTS_EACH = 12
QUEUE = 4


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_overload_gives_only_answers_or_503s_and_memory_comes_back(tmp_path: Path) -> None:
    torch.save(nets.SleepyNet(), tmp_path / "slow.pt")
    args = [
        str(tmp_path / "slow.pt"), "--trust-module", "tests.nets", "--input-shape", "2",
        "--max-batch-size", "2", "--max-queue", str(QUEUE), "--admission-wait-ms", "50",
        "--log-level", "warning",
    ]  # fmt: skip
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=hang_guard(REQUEST_S)) as http:
            for n in range(REQUESTS_EACH):
                value = float(index * 1000 + n)
                response = http.post(url, json={"instances": [[value, -value]]})
                with lock:
                    if response.status_code == 200:
                        outcomes["answered"] += 1
                        if response.json()["predictions"] != [[value, -value]]:
                            problems.append(f"wrong answer for {value}: {response.text}")
                    elif response.status_code == 503:
                        outcomes["refused"] += 1
                        body = response.json()
                        if (
                            body["code"] != "overloaded"
                            or response.headers.get("retry-after") != "1"
                        ):
                            problems.append(f"a 503 without Retry-After: {response.text}")
                    else:
                        problems.append(f"{response.status_code}: {response.text}")

    with running_ptserve(args, tmp_path / "log") as server:
        url = f"{server.base_url}/predict"
        with httpx.Client(base_url=server.base_url) as http:
            for _ in range(20):  # settle allocations before the baseline
                http.post("/predict", json={"instances": [[1.0, 2.0]]})
        before = rss_bytes(server.process.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = rss_bytes(server.process.pid)
    assert problems == []
    assert outcomes["answered"] + outcomes["refused"] == CLIENTS * REQUESTS_EACH
    assert outcomes["refused"] > 0  # the test did overload the server
    assert outcomes["answered"] > 0
    assert after <= before * 1.10, (before, after)
