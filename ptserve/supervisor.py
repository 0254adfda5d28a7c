"""``--workers N``: a parent that never imports torch runs N worker processes on one socket.

The parent binds the socket, starts each worker (a fresh spawned process that loads the model
and serves as one process does), replaces a worker that dies after start-up (however it died:
its live metrics go with it), and relays stop signals: the first to every worker, which then
drains; a second stops them at once. The parent exits 0 once every worker has drained.

Workers take no stop signals themselves: a terminal's Ctrl-C, or a ``kill`` of the process
group, reaches every process, and would count twice. They follow the parent's orders through a
pipe instead, and drain without delay if the parent dies (the pipe's end). A worker is only
declared hung once it has started: importing torch and loading a large model take as long as
they take (uvicorn's supervisor killed workers still importing torch after 5 s).
"""

import contextlib
import logging
import logging.config
import multiprocessing
import os
import select
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from types import FrameType

from uvicorn.config import STARTUP_FAILURE

from ptserve.drain import EXIT_CUT_OFF, DrainingServer, exit_interrupted
from ptserve.observability.logs import log_config
from ptserve.observability.metrics import MULTIPROC_ENV, mark_worker_dead
from ptserve.settings import Settings

log = logging.getLogger("ptserve")
PING = "ping"
TICK_S = 0.5
HUNG_AFTER_S = 30.0  # a started worker whose order thread is silent this long is stuck
STOP_GRACE_S = 10.0  # after the drain's delay and timeout, before workers are killed
WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Worker:
    """One worker process, seen from the parent: its process and the parent's end of its pipe."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        context = multiprocessing.get_context("spawn")
        self.orders, theirs = context.Pipe()
        self.process = context.Process(
            target=run_worker, args=(settings.model_dump_json(), sock, theirs), daemon=False
        )
        self.process.start()
        theirs.close()  # only the worker holds its end now: it sees EOF if the parent dies
        self.started = False
        self.pinged_at: float | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def check(self) -> None:
        """Take the worker's answers (whether it has started), and ping it again."""
        with contextlib.suppress(OSError, EOFError):
            while self.orders.poll():
                self.started = bool(self.orders.recv())
                self.pinged_at = None
            if self.pinged_at is None:
                self.orders.send(PING)
                self.pinged_at = time.monotonic()

    def hung(self) -> bool:
        """Started, but silent for HUNG_AFTER_S (its order thread gets no time at all)."""
        waited = time.monotonic() - self.pinged_at if self.pinged_at is not None else 0.0
        return self.started and waited > HUNG_AFTER_S

    def order(self, sig: int) -> None:
        """Tell the worker a stop signal came (or that a SIGHUP did)."""
        with contextlib.suppress(OSError):
            self.orders.send(sig)


class Supervisor:
    """Starts, watches, replaces and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.workers: list[Worker] = []
        self.signals: list[int] = []
        self.stop_signal: int | None = None
        self.stop_deadline = float("inf")
        self.serving = False  # every worker has started, at least once
        self.served = False  # some worker has started
        self.failed = False  # a worker could not start: a replacement would fail the same way
        self.exit_codes: list[int] = []  # of the started workers that ended after the stop

    def run(self) -> int:
        """Supervise until every worker has stopped; returns the exit code."""
        multiprocessing.allow_connection_pickling()  # the socket travels to each worker
        wake_read, wake_write = socket.socketpair()
        wake_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno())
        handled = WORKER_SIGNALS if self.settings.api_key_file else WORKER_SIGNALS[:2]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            with tempfile.TemporaryDirectory(prefix="ptserve-metrics-") as folder:
                os.environ[MULTIPROC_ENV] = folder  # the workers' metrics, added up by /metrics
                count = self.settings.workers
                log.info("supervisor [%d]: starting %d workers", os.getpid(), count)
                self.workers = [Worker(self.settings, self.sock) for _ in range(count)]
                while (code := self._tick()) is None:
                    if select.select([wake_read], [], [], TICK_S)[0]:
                        wake_read.recv(4096)
                return code
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def _tick(self) -> int | None:
        while self.signals:
            self._take_signal(self.signals.pop(0))
        for worker in list(self.workers):
            if not worker.process.is_alive():
                self._reap(worker)
                continue
            was_started = worker.started
            worker.check()
            self.served |= worker.started
            if self.serving and worker.started and not was_started:
                log.info("worker [%d] serving; %d workers up", worker.pid, len(self.workers))
            if worker.hung():
                log.error("worker [%d] silent for %.0fs; killing it", worker.pid, HUNG_AFTER_S)
                worker.process.kill()
        if self.stop_signal is None:
            if not self.serving and all(w.started for w in self.workers):
                self.serving = True
                host, port = self.sock.getsockname()[:2]
                log.info("serving on http://%s:%d with %d workers", host, port, len(self.workers))
            return None
        if not self.workers:
            return self._exit_code()
        if time.monotonic() > self.stop_deadline:
            self._kill_all()
            return EXIT_CUT_OFF
        return None

    def _kill_all(self) -> None:
        pids = [w.pid for w in self.workers]
        log.error("workers %s still running past the drain timeout; killing them", pids)
        for worker in self.workers:
            worker.process.kill()
            worker.process.join()
            mark_worker_dead(worker.pid)

    def _take_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:  # the API key file: every worker re-reads it
            for worker in self.workers:
                if worker.started:
                    worker.order(sig)
            return
        if self.stop_signal is not None:
            log.warning("received %s again: stopping the workers at once", signal.Signals(sig).name)
            for worker in self.workers:
                worker.order(sig)
            return
        self._stop(sig)

    def _stop(self, sig: int) -> None:
        self.stop_signal = sig
        # The workers' copies keep the socket listening through the drain delay; once the last
        # one stops accepting, the port closes (new connections are refused, not left queued).
        self.sock.close()
        delay = 0.0 if sig == signal.SIGINT else self.settings.drain_delay_s
        self.stop_deadline = time.monotonic() + delay + self.settings.drain_timeout_s + STOP_GRACE_S
        log.info("received %s: stopping %d worker(s)", signal.Signals(sig).name, len(self.workers))
        for worker in self.workers:
            worker.order(sig)

    def _reap(self, worker: Worker) -> None:
        worker.check()  # an answer it sent before it died says whether it had started
        worker.process.join()
        self.workers.remove(worker)
        mark_worker_dead(worker.pid)  # its in-flight and queue gauges must not outlive it
        code = worker.process.exitcode
        assert code is not None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if self.stop_signal is not None:
            if worker.started:  # one still starting just leaves: it had accepted nothing
                self.exit_codes.append(code)
            log.info("worker [%d] %s", worker.pid, how)
        elif not worker.started:
            log.error("worker [%d] %s during start-up; stopping", worker.pid, how)
            self.failed = True
            self._stop(signal.SIGINT)
        else:
            log.warning("worker [%d] %s; starting a replacement", worker.pid, how)
            self.workers.append(Worker(self.settings, self.sock))

    def _exit_code(self) -> int:
        if self.failed:
            return STARTUP_FAILURE
        if not self.served:
            assert self.stop_signal is not None
            log.warning("ptserve: interrupted during start-up")
            return 128 + self.stop_signal
        return 0 if all(code == 0 for code in self.exit_codes) else EXIT_CUT_OFF


class Orders(threading.Thread):
    """The worker's end of the pipe: answers pings (with whether the server has started) and
    passes the parent's signals on to the server."""

    def __init__(self, pipe: Connection) -> None:
        super().__init__(name="ptserve-orders", daemon=True)
        self.pipe = pipe
        self.server: DrainingServer | None = None

    def run(self) -> None:
        while True:
            try:
                order = self.pipe.recv()
            except (EOFError, OSError):
                log.warning("the supervising process is gone; draining")
                self._stop(signal.SIGINT)
                return
            if order == PING:
                with contextlib.suppress(OSError):
                    self.pipe.send(self.server is not None and self.server.started)
            elif order == signal.SIGHUP:
                os.kill(os.getpid(), signal.SIGHUP)  # the app's handler re-reads the keys
            else:
                self._stop(order)

    def _stop(self, sig: int) -> None:
        if self.server is None:
            exit_interrupted(sig)
        else:
            self.server.request_stop(sig)


def run_worker(settings_json: str, sock: socket.socket, pipe: Connection) -> None:
    """A worker process: load the model and serve on the parent's socket, following its orders."""
    for sig in WORKER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    settings = Settings.model_validate_json(settings_json)
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    orders = Orders(pipe)
    orders.start()
    orders.server = DrainingServer.for_settings(settings, supervised=True)
    orders.server.run_to_exit(sockets=[sock])
