"""DeadlineProtocol's body deadline counts only the client's time: while the server holds the
reading (a slow app, flow control, ``Expect: 100-continue`` unanswered) it starts again."""

import asyncio
import socket

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from ptserve.connections import DeadlineProtocol
from ptserve.drain import DrainingServer
from ptserve.settings import Settings

pytestmark = pytest.mark.anyio
BODY_TIMEOUT_S = 1.0
APP_PAUSE_S = 3 * BODY_TIMEOUT_S  # the app reads nothing for this long
BIG = 1_000_000  # far over uvicorn's 64 KiB read buffer: reading pauses until the app reads


async def slow_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Waits before reading the body, then answers with its length."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(APP_PAUSE_S)
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serving() -> tuple[DrainingServer, "asyncio.Task[None]", tuple[str, int]]:
    config = uvicorn.Config(slow_reader, http=DeadlineProtocol, lifespan="off", ws="none")
    server = DrainingServer(config, Settings(body_timeout_s=BODY_TIMEOUT_S), lambda: None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()


def exchange(address: tuple[str, int], head: bytes, body: bytes, wait_for_100: bool) -> bytes:
    """Send a request (the body after ``100 Continue`` if asked) and read the whole answer."""
    with socket.create_connection(address, timeout=30) as client:
        client.sendall(head)
        if wait_for_100:
            assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")
        client.sendall(body)
        answer = b""
        while not answer.endswith(str(len(body)).encode()) and (chunk := client.recv(65536)):
            answer += chunk
        return answer


@pytest.mark.parametrize("expect", [False, True], ids=["flow control", "100-continue"])
async def test_time_the_server_holds_the_reading_is_not_the_clients(expect: bool) -> None:
    server, task, address = await serving()
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % BIG
    head += b"Expect: 100-continue\r\n\r\n" if expect else b"\r\n"
    answer = await asyncio.to_thread(exchange, address, head, b"x" * BIG, expect)
    server.should_exit = True
    await task
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    assert answer.endswith(b"\r\n\r\n%d" % BIG)
