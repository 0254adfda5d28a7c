"""Client traffic for the reliability tests: raw HTTP/1.1 on sockets (for what httpx cannot do:
a connection opened now and used later, a request sent in parts or never finished), and a
tally of what each request got."""

import contextlib
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
ANSWER_TIMEOUT_S = 60.0  # hang guard for one answer
WAIT_GUARD_S = 60.0  # hang guard for a server to change state


@dataclass
class Answer:
    """One HTTP response read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def post_bytes(path: str, payload: object, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``POST path`` with a JSON body, as bytes."""
    body = json.dumps(payload).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """A TCP connection to the server, written and read by hand."""

    def __init__(self, port: int, timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Answer:
        """Read one response; ConnectionError if the server closes before it is complete."""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server has closed this connection (EOF or reset), waiting for it."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection without a (whole) answer")
        self.buffer += chunk


def refuses_connections(port: int) -> bool:
    """Whether nothing listens on ``port`` any more. A reset counts too: this probe (it polls
    with a new connection every 10 ms) was in the accept queue at the very moment it closed."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def wait_for(what: str, check: Callable[[], bool], guard_s: float = WAIT_GUARD_S) -> None:
    """Poll ``check`` until true; fail after ``guard_s`` (a hang guard, not a timing claim)."""
    deadline = time.monotonic() + guard_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {guard_s:.0f}s")
        time.sleep(0.01)  # poll interval


def wait_for_value(what: str, get: Callable[[], T | None], guard_s: float = WAIT_GUARD_S) -> T:
    """Poll ``get`` until it gives something; fail after ``guard_s`` (a hang guard)."""
    found: list[T] = []

    def got() -> bool:
        value = get()
        if value is not None:
            found.append(value)
        return value is not None

    wait_for(what, got, guard_s)
    return found[0]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def in_flight(base_url: str) -> float:
    """The server's in-flight gauge (summed over workers), less the /metrics request itself."""
    text = httpx.get(f"{base_url}/metrics", timeout=ANSWER_TIMEOUT_S).text
    return metric(text, "ptserve_requests_in_flight") - 1


def not_ready(client: httpx.Client) -> bool:
    """Readiness is 503, or nothing answers any more."""
    with contextlib.suppress(httpx.TransportError):
        return client.get("/health/ready").status_code == 503
    return True


def clients(base_url: str, count: int) -> list[httpx.Client]:
    """Plain-HTTP clients made in advance, sharing one TLS context: httpx builds one per client
    by default, ~65 ms of CPU each on a busy machine, which would delay the scenario."""
    context = ssl.create_default_context()
    return [
        httpx.Client(base_url=base_url, timeout=ANSWER_TIMEOUT_S, verify=context)
        for _ in range(count)
    ]


@dataclass
class Tally:
    """What each kind of request got: ``ok`` when the answer was right, else what went wrong."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, kind: str, outcome: str) -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def lost(self, kind: str | None = None) -> int:
        """Requests of ``kind`` (every kind by default) that did not get their right answer."""
        kinds = [kind] if kind is not None else list(self.outcomes)
        return sum(
            n for k in kinds for o, n in self.outcomes.get(k, Counter()).items() if o != "ok"
        )

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.outcomes.values())
