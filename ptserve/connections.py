"""HTTP/1.1 connections with read deadlines, and what a drain does to each connection.

uvicorn waits for a request's headers and body for as long as the client takes, so a slow or
stalled client holds its connection (and a drain) indefinitely. ``DeadlineProtocol`` is
uvicorn's httptools protocol plus two deadlines: the request line and headers must arrive
within ``header_timeout_s`` of the connection opening (or of the request's first byte, on a
kept-alive connection), and the whole body within ``body_timeout_s`` of the headers. A request
that misses one gets ``408`` and its connection is closed; a connection that never sent a byte
is just closed. Time the server itself holds the reading (flow control, a pipelined request
waiting its turn, ``Expect: 100-continue`` not yet answered) is not the client's: once the
server lets go, the client gets the whole deadline again.

For a drain it adds what uvicorn's shutdown lacks: connections are never cut while a request
is arriving; once draining, every answer carries ``Connection: close``; after the listener
closes, an idle kept-alive connection is closed by its own keep-alive timer (a request that
arrives first is served), or at once when ``close_idle`` is asked.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ptserve.observability.context import sane_request_id

log = logging.getLogger("ptserve")
HELD_POLL_S = 0.25  # while the server holds the reading, how often a deadline looks again


@dataclass
class ConnectionRules:
    """What every connection of one server follows."""

    header_timeout_s: float
    body_timeout_s: float
    keep_alive_s: float
    closing: bool = False  # draining: every answer closes its connection


class ServingState(ServerState):
    """uvicorn's state shared by a server's connections, plus their rules."""

    def __init__(self, rules: ConnectionRules) -> None:
        super().__init__()
        self.rules = rules

    def begin_closing(self) -> None:
        """From now on every answer, including those being computed, closes its connection."""
        self.rules.closing = True
        for connection in list(self.connections):
            if isinstance(connection, DeadlineProtocol):
                connection.close_after_answer()


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a drain that loses
    nothing a client has begun to send."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(server_state, ServingState)
        self.rules = server_state.rules
        self.deadline: asyncio.TimerHandle | None = None
        self.receiving_head = False  # part of a request line or headers has arrived
        self.server_held = False  # the server held the reading at the last deadline check

    # Connection and parser events (uvicorn's, with the deadlines set and cleared)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.rules.header_timeout_s, self._head_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.receiving_head = True
        if self.deadline is None:  # a fresh connection's deadline runs from its opening
            self._arm(self.rules.header_timeout_s, self._head_overdue)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.receiving_head = False
        self._disarm()
        if self.rules.closing and self.cycle is not None:
            self.cycle.keep_alive = False
        self._arm(self.rules.body_timeout_s, self._body_overdue)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    # Drain

    def close_after_answer(self) -> None:
        """Answer the request in progress, if any, with ``Connection: close``."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    def busy(self) -> bool:
        """A request has begun here (arriving, computing or being answered)."""
        return self.receiving_head or (self.cycle is not None and not self.cycle.response_complete)

    def close_when_idle(self, now: bool) -> None:
        """The listener has closed: finish what has begun here, then close. An idle connection
        closes ``now``, or within the keep-alive time unless a request comes first."""
        self.close_after_answer()
        if self.busy() or self.transport.is_closing():
            return
        if now:
            self.transport.close()
        elif self.deadline is not None:  # opened, never used: keep-alive time, not header time
            self._arm(min(self.rules.keep_alive_s, self.rules.header_timeout_s), self._head_overdue)

    # Deadlines

    def _arm(self, seconds: float, overdue: Callable[[], None]) -> None:
        self._disarm()
        self.server_held = False
        self.deadline = self.loop.call_later(seconds, overdue)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _server_holds_reading(self) -> bool:
        cycle = self.cycle
        waiting_for_us = cycle is not None and cycle.waiting_for_100_continue
        return self.flow is not None and (self.flow.read_paused or waiting_for_us)

    def _not_the_clients_fault(self, seconds: float, overdue: Callable[[], None]) -> bool:
        """Whether the deadline must start again instead of passing: the server holds the
        reading now (checked again soon), or held it until the last check (then the client
        gets its whole time from there)."""
        if self._server_holds_reading():
            self._arm(min(seconds, HELD_POLL_S), overdue)
            self.server_held = True
            return True
        if self.server_held:
            self.server_held = False
            self._arm(seconds, overdue)
            return True
        return False

    def _head_overdue(self) -> None:
        self.deadline = None
        if self._not_the_clients_fault(self.rules.header_timeout_s, self._head_overdue):
            return
        if self.receiving_head:
            self._time_out(f"the request's headers took over {self.rules.header_timeout_s:g} s")
        elif not self.transport.is_closing():  # opened, never used: nobody to answer
            self.transport.close()

    def _body_overdue(self) -> None:
        self.deadline = None
        if self._not_the_clients_fault(self.rules.body_timeout_s, self._body_overdue):
            return
        if self.cycle is not None and self.cycle.response_started:  # answered without the body
            self.transport.close()
            return
        self._time_out(f"the request's body took over {self.rules.body_timeout_s:g} s")

    def _time_out(self, why: str) -> None:
        """Answer 408 (when nothing has been answered yet) and close; the app, if it is
        waiting for the body, sees a disconnect and its own answer is dropped."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closed the connection from %s: %s (408)", client, why)
        if not self.transport.is_closing():
            self.transport.write(self._408(why))
            self.transport.close()

    def _408(self, why: str) -> bytes:
        body = orjson.dumps({"error": f"request timeout: {why}", "code": "request_timeout"})
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", self._request_id()),
        ]
        lines = [b"HTTP/1.1 408 Request Timeout", *(name + b": " + v for name, v in headers)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _request_id(self) -> bytes:
        """The client's X-Request-ID when the headers carried a sane one, else a new one."""
        for name, value in self.headers or []:
            if name == b"x-request-id" and sane_request_id(value.decode("latin-1")):
                return value
        return os.urandom(16).hex().encode()
