"""Slow and stalled clients end to end: cut off by the header and body deadlines (408) while a
normal client keeps its pace, and never holding a drain past its timeout.

The deadlines are 1 s (headers) and 2 s (body) here, to keep CI time sane; the defaults are
10 s and 30 s.
"""

import select
import signal
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, running_ptserve
from tests.e2e.traffic import RawConnection, clients, in_flight, wait_for

DIGIT = {"instances": [[0.0] * 64]}
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
PER_KIND = 30
TRICKLE_S = 0.2  # a slow client sends its next few bytes this often
BASELINE = 50
EXIT_GUARD_S = 60.0  # far below the 600 s deadlines the drain tests rely on not reaching


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def slow_header(port: int) -> tuple[RawConnection, list[bytes]]:
    """A request line, then its headers a few bytes at a time (never finished in time)."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return RawConnection(port), [head[i : i + 4] for i in range(0, len(head), 4)] * 10


def slow_body(port: int) -> tuple[RawConnection, list[bytes]]:
    """Whole headers, then a 2000-byte body 10 bytes at a time."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 2000\r\n\r\n"
    return RawConnection(port), [head, *([b" " * 10] * 200)]


def stalled(port: int, declared: int = 10_000_000) -> tuple[RawConnection, list[bytes]]:
    """Declares a 10 MB body, sends 100 bytes of it, then nothing."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % declared
    return RawConnection(port), [head + b" " * 100]


class Trickle(threading.Thread):
    """Feeds every slow connection its next chunk each TRICKLE_S, until the server answers or
    closes each one; ``outcomes`` holds what each got (an HTTP status or 'closed')."""

    def __init__(self, connections: list[tuple[RawConnection, list[bytes]]]) -> None:
        super().__init__(daemon=True)
        self.pending = {c: list(chunks) for c, chunks in connections}
        self.outcomes: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + EXIT_GUARD_S
        while self.pending and time.monotonic() < deadline:
            for connection, chunks in list(self.pending.items()):
                if select.select([connection.sock], [], [], 0)[0]:
                    self._finish(connection)
                elif chunks:
                    try:
                        connection.send(chunks.pop(0))
                    except OSError:
                        self._finish(connection)
            time.sleep(TRICKLE_S)

    def _finish(self, connection: RawConnection) -> None:
        del self.pending[connection]
        try:
            self.outcomes.append(str(connection.answer().status))
        except OSError:
            self.outcomes.append("closed")
        connection.close()


def latencies(client: httpx.Client, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post("/predict", json=DIGIT)
        taken.append(time.perf_counter() - started)
        assert response.status_code == 200
    return taken


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def test_slow_clients_are_cut_off_while_a_normal_client_keeps_its_pace(tmp_path: Path) -> None:
    args = ["--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S)]
    with running_ptserve(args, tmp_path / "log") as server:
        port = port_of(server)
        (client,) = clients(server.base_url, 1)
        baseline = latencies(client, BASELINE)
        slow = [make(port) for make in (slow_header, slow_body, stalled) for _ in range(PER_KIND)]
        trickle = Trickle(slow)
        trickle.start()
        during: list[float] = []
        while trickle.is_alive():
            during += latencies(client, 5)
        client.close()
    cut_off = server.log().count("(408)")
    assert cut_off == 3 * PER_KIND, server.log()
    assert set(trickle.outcomes) <= {"408", "closed"}, trickle.outcomes
    assert len(trickle.outcomes) == 3 * PER_KIND
    assert len(during) >= BASELINE  # the deadlines took over a second: plenty of requests
    assert p90(during) <= 10 * p90(baseline), (p90(during), p90(baseline))


@pytest.mark.parametrize(
    ("deadline", "drain_timeout", "exit_code"),
    [
        pytest.param(BODY_TIMEOUT_S, 600, 0, id="the body deadline cuts it off: a clean drain"),
        pytest.param(600, 1.0, 1, id="the drain timeout cuts it off"),
    ],
)
def test_a_stalled_client_does_not_hold_a_drain(
    tmp_path: Path, deadline: float, drain_timeout: float, exit_code: int
) -> None:
    args = ["--body-timeout-s", str(deadline), "--drain-timeout-s", str(drain_timeout),
            "--drain-delay-s", "0.5"]  # fmt: skip
    with running_ptserve(args, tmp_path / "log") as server:
        connection, (head,) = stalled(port_of(server))
        connection.send(head)
        wait_for("the request to arrive", lambda: in_flight(server.base_url) == 1)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=EXIT_GUARD_S)
        try:
            outcome = str(connection.answer().status)
        except OSError:
            outcome = "closed"
    assert code == exit_code, server.log()
    if exit_code:
        assert outcome == "closed"
        assert "the drain timeout (1s): cutting off 1 request(s)" in server.log()
    else:
        assert outcome == "408"
        assert "the request's body took over 2 s (408)" in server.log()
