"""One hot-route HTTP request as a protocol codec sees it, and the reply it gives back.

The gateway (``ptserve.gateway``) builds an ``HttpCall`` for each request to a hot route; codecs
read headers and the body through it and return a ``Reply`` of pre-serialised bytes. No
Starlette ``Request`` is built unless a codec needs one (multipart forms).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from ptserve.errors import BodyTooLarge, ClientDisconnected, InvalidHeader

RawHeaders = list[tuple[bytes, bytes]]
TIMEOUT_HEADER = b"x-request-timeout-ms"


@dataclass(slots=True)
class Reply:
    """A codec's answer: status, body bytes and extra headers (content type first)."""

    body: bytes
    content_type: bytes = b"application/json"
    headers: RawHeaders = field(default_factory=list)
    status: int = 200


class HttpCall:
    """The request of a hot route: its scope, path parameters and body, read once."""

    __slots__ = ("limit", "model", "params", "receive", "scope", "version")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str], limit: int) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.limit = limit
        self.model: str | None = None  # the model that answered, for the access log
        self.version: str | None = None  # and its version

    def header(self, name: bytes) -> str | None:
        """One request header (``name`` in lower case), by a single scan of the raw headers."""
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    def timeout(self, default_s: float) -> float:
        """Seconds this request may wait in the queue: its X-Request-Timeout-Ms, else the
        default."""
        raw = self.header(TIMEOUT_HEADER)
        if raw is None:
            return default_s
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise InvalidHeader(
                f"X-Request-Timeout-Ms must be a positive number of ms, got {raw!r}"
            )
        return value / 1000

    async def body(self) -> bytes:
        """The whole body; 413 as soon as it passes the limit."""
        message = await self.receive()
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: one message
            self._check(len(chunk))
            return chunk
        return bytes(await self._gather(bytearray(chunk), message, 0))

    async def buffer(self, pad: int) -> memoryview:
        """The whole body in a writable buffer after ``pad`` spare bytes, so that a binary
        part can start aligned and arrays can be used in place; 413 past the limit."""
        message = await self.receive()
        buffer = bytearray(pad)
        buffer += message.get("body", b"")
        return memoryview(await self._gather(buffer, message, pad))[pad:]

    async def _gather(self, buffer: bytearray, message: Message, pad: int) -> bytearray:
        self._check(len(buffer) - pad)
        while message.get("more_body", False):
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("the client disconnected while sending the body")
            buffer += message.get("body", b"")
            self._check(len(buffer) - pad)
        return buffer

    def request(self) -> Request:
        """A Starlette request over this call (for parsing multipart forms)."""
        return Request(self.scope, self.receive)

    @asynccontextmanager
    async def cancelled_on_disconnect(self) -> AsyncIterator[None]:
        """Cancel the enclosed work when the client disconnects (raising ClientDisconnected),
        so queued work for a client that left is dropped instead of computed.

        Only after the body has been read: the next ASGI message is then the disconnect.
        """
        task = asyncio.current_task()
        assert task is not None
        gone = False

        def on_message(watcher: "asyncio.Future[Message]") -> None:
            nonlocal gone
            if not watcher.cancelled() and watcher.result() == {"type": "http.disconnect"}:
                gone = True
                task.cancel()

        watcher: asyncio.Future[Any] = asyncio.ensure_future(self.receive())
        watcher.add_done_callback(on_message)
        try:
            yield
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            raise ClientDisconnected(
                "the client disconnected before the answer was ready"
            ) from None
        finally:
            watcher.remove_done_callback(on_message)
            watcher.cancel()

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise BodyTooLarge(
                f"the request body is over {self.limit} bytes; the limit is {self.limit} "
                "bytes (the max_body_bytes setting)"
            )
