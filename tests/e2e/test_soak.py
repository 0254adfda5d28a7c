"""A soak in CI: two minutes of moderate, mixed traffic (bench/soak.py's), every answer as
expected and the server's RSS settled (drift under 5%). Longer soaks: ``python -m bench.soak``."""

from pathlib import Path

from bench.soak import Soak, soak
from tests.e2e.conftest import running_ptserve
from tests.e2e.processes import rss_kib

SECONDS = 120
RATE = 100  # requests/s: moderate on a 2-core machine (the digits model serves thousands)


def test_two_minutes_of_traffic_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    with running_ptserve(["--no-access-log"], tmp_path / "log") as server:
        pid = server.process.pid
        result: Soak = soak(server.base_url, lambda: rss_kib(pid) / 1024, SECONDS, RATE, 3)
    assert result.failures() == 0, result.outcomes
    assert sum(result.outcomes.values()) >= SECONDS * RATE / 2  # the load really ran
    assert abs(result.drift()) < 0.05, result.rss_mib
