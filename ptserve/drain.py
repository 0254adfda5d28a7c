"""The server one process runs: uvicorn's, with the drain orchestrators expect.

On SIGTERM (or the supervisor's order) readiness turns 503 at once and every answer from then
on closes its connection, but the server keeps accepting and serving normally for
``drain_delay_s`` while load balancers stop routing here. Then it stops accepting (taking first
the connections the kernel has already completed), lets every request that has begun finish,
including one still arriving within its read deadlines, and closes each connection after its
answer. It waits up to ``drain_timeout_s`` for that, then runs the app's lifespan shutdown (the
batch loop stops, logs are flushed). SIGINT skips the delay and closes idle connections at
once. A second signal stops at once. A signal during start-up exits at once: nothing has been
accepted yet.
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from ptserve.connections import ConnectionRules, DeadlineProtocol, ServingState

if TYPE_CHECKING:
    from ptserve.settings import Settings

log = logging.getLogger("ptserve")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CUT_OFF = 1  # the drain ended with requests cut off (its timeout, or a second signal)
CUT_OFF_SHUTDOWN_S = 1.0  # a lifespan shutdown after a cut-off drain gets this long
POLL_S = 0.02


class DrainingServer(uvicorn.Server):
    """uvicorn's server with ptserve's drain and read deadlines (see the module docstring).

    ``on_drain`` is called when the drain begins (the app turns readiness to 503). A
    ``supervised`` server (a ``--workers`` worker) takes no signals itself: its supervisor calls
    ``request_stop``.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        settings: "Settings",
        on_drain: Callable[[], None],
        supervised: bool = False,
    ) -> None:
        super().__init__(config)
        self.state = ServingState(
            ConnectionRules(
                settings.header_timeout_s, settings.body_timeout_s, settings.keep_alive_s
            )
        )
        self.server_state = self.state
        self.delay_s = settings.drain_delay_s
        self.timeout_s = settings.drain_timeout_s
        self.on_drain = on_drain
        self.supervised = supervised
        self.stop_signal: int | None = None
        self.cut_off = False
        self.loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_settings(cls, settings: "Settings", supervised: bool = False) -> "DrainingServer":
        """The server for ``settings``'s app (importing the app, and so torch, here)."""
        from ptserve.app import create_app
        from ptserve.observability.logs import log_config

        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http=DeadlineProtocol,
            ws="none",
            lifespan="on",
            timeout_keep_alive=settings.keep_alive_s,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level, settings.log_format),
            access_log=False,  # ptserve logs each request itself, with its id and timing
        )

        def readiness_off() -> None:
            app.state.runtime.draining = True

        return cls(config, settings, readiness_off, supervised)

    def run_to_exit(self, sockets: list[socket.socket]) -> NoReturn:
        """Serve until stopped, then exit: 0 after a clean drain, 1 when requests were cut off
        (at once: an inference thread still in the model would hold the interpreter's exit)."""
        self.run(sockets=sockets)
        if self.cut_off:
            logging.shutdown()
            os._exit(EXIT_CUT_OFF)
        sys.exit(0)

    # Signals

    def request_stop(self, sig: int) -> None:
        """A stop signal (or the supervisor's order): safe from a signal handler or a thread."""
        if not self.started or self.loop is None:
            exit_interrupted(sig)
        if self.stop_signal is None:
            self.stop_signal = sig
            self.loop.call_soon_threadsafe(self._begin_drain, sig)
        else:  # a second signal: stop now
            self.force_exit = True
            self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.request_stop(sig)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Take SIGINT and SIGTERM while serving; unlike uvicorn, never re-raise them after a
        drain, so that a clean stop exits 0 rather than by the signal."""
        if self.supervised or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # Serving

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        if not all(map(listening, sockets or [])):
            # The port was bound early; another server listened on it meanwhile (uvloop drops
            # the error of listen() and closes the socket).
            self.started = False
            log.error(
                "ptserve: cannot listen on %s:%d: another server listens there now",
                self.config.host, self.config.port,
            )  # fmt: skip
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        if not self.supervised:
            host, port = sockets[0].getsockname()[:2] if sockets else (self.config.host, 0)
            log.info("serving on http://%s:%d (Ctrl-C to stop)", host, port)

    def _begin_drain(self, sig: int) -> None:
        self.on_drain()
        self.state.begin_closing()
        delay = 0.0 if sig == signal.SIGINT else self.delay_s
        log.info(
            "received %s: readiness is 503; serving for %.1fs more, then draining (up to %.1fs)",
            signal.Signals(sig).name, delay, self.timeout_s,
        )  # fmt: skip
        assert self.loop is not None
        self.loop.call_later(delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        self.should_exit = True  # uvicorn's main loop ends within its 0.1 s tick

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, let every begun request finish (up to the drain timeout), then run
        the app's lifespan shutdown. Replaces uvicorn's, which closes every connection that
        has not yet sent a whole request."""
        await self._close_listeners(sockets or [])
        connections, tasks = self.state.connections, self.state.tasks
        close_idle = self.stop_signal != signal.SIGTERM
        for connection in list(connections):
            if isinstance(connection, DeadlineProtocol):
                connection.close_when_idle(now=close_idle)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        if connections or tasks:
            log.info(
                "stopped accepting; finishing %d request(s), %d connection(s) open",
                self._in_progress(), len(connections),
            )  # fmt: skip
        while (connections or tasks) and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        if self._in_progress():
            self._cut_off()
            await asyncio.sleep(0)  # let the cancelled requests unwind
        else:
            for connection in list(connections):  # idle ones, at the drain timeout
                connection.transport.close()
            log.info("drained: every accepted request was answered")
        shutdown = self.lifespan.shutdown()
        if self.cut_off:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown, CUT_OFF_SHUTDOWN_S)
        else:
            await shutdown

    async def _close_listeners(self, sockets: list[socket.socket]) -> None:
        """Close the listening sockets, first taking the connections the kernel has completed
        but the loop has not accepted yet: closing would reset them."""
        pending: list[socket.socket] = []
        for sock in sockets:
            with contextlib.suppress(OSError):  # BlockingIOError: none left
                sock.setblocking(False)
                while True:
                    pending.append(sock.accept()[0])
        for server in self.servers:
            server.close()
        for sock in sockets:
            sock.close()
        config, loop = self.config, asyncio.get_running_loop()
        for accepted in pending:
            await loop.connect_accepted_socket(
                lambda: config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.state, app_state=self.lifespan.state
                ),
                accepted,
            )

    def _in_progress(self) -> int:
        """Requests begun (arriving, in the app, or being answered) and not yet answered."""
        begun = sum(
            1 for c in self.state.connections if isinstance(c, DeadlineProtocol) and c.busy()
        )
        return max(begun, len(self.state.tasks))

    def _cut_off(self) -> None:
        why = "a second signal" if self.force_exit else f"the drain timeout ({self.timeout_s:g}s)"
        log.warning(
            "%s: cutting off %d request(s) and %d connection(s)",
            why, self._in_progress(), len(self.state.connections),
        )  # fmt: skip
        self.cut_off = True
        for connection in list(self.state.connections):
            connection.transport.close()
        for task in list(self.state.tasks):
            task.cancel()


def listening(sock: socket.socket) -> bool:
    """Whether ``sock`` is open and listening."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def exit_interrupted(sig: int) -> NoReturn:
    """Leave at once during start-up (loading, compiling): nothing has been accepted, and the
    load must not go on, or end in a misleading error, after the operator asked to stop."""
    log.warning("ptserve: interrupted by %s during start-up; exiting", signal.Signals(sig).name)
    for handler in logging.getLogger("ptserve").handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(128 + sig)


def exit_on_stop_signals() -> None:
    """Until the server takes signals itself, a stop signal ends start-up at once."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda sig, _: exit_interrupted(sig))
