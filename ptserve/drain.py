"""Graceful drain: on SIGTERM/SIGINT stop taking work, finish what was accepted, then let
uvicorn shut down.

uvicorn's own handler closes the listening socket at once. Wrapping it, ptserve first turns
readiness to 503 and answers new requests 503 while queued and in-flight work completes (up to
``drain_timeout_s``), and only then hands the signal to uvicorn. A second signal stops at once.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_drain(runtime: "Runtime", timeout: float) -> Callable[[], None]:
    """Wrap the current SIGTERM/SIGINT handlers; returns a function that restores them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def hand_over(sig: int, frame: FrameType | None) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        else:
            signal.raise_signal(sig)

    async def drain(sig: int, frame: FrameType | None) -> None:
        deadline = loop.time() + timeout
        while runtime.busy() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if runtime.busy():
            log.warning("drain timeout (%.1fs) passed with work still running", timeout)
        else:
            log.info("drained; shutting down")
        hand_over(sig, frame)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if runtime.draining:  # a second signal: stop now
            hand_over(sig, frame)
            return
        runtime.draining = True
        log.info("received %s: draining (up to %.1fs)", signal.Signals(sig).name, timeout)
        loop.call_soon_threadsafe(lambda: loop.create_task(drain(sig, frame)))

    for sig in SIGNALS:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
