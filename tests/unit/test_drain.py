"""DrainingServer pieces that an end-to-end test cannot reach on purpose."""

import asyncio
import socket

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from ptserve.connections import DeadlineProtocol
from ptserve.drain import DrainingServer
from ptserve.settings import Settings

pytestmark = pytest.mark.anyio
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def started(server: DrainingServer) -> "asyncio.Task[None]":
    serving = asyncio.create_task(server.serve(sockets=[listening_socket()]))
    while not server.started:
        await asyncio.sleep(0.01)
    return serving


def queued_requests(count: int) -> tuple[socket.socket, list[socket.socket]]:
    """A listener with ``count`` connections in its accept queue, each with its request sent."""
    queued = listening_socket()
    clients = [socket.create_connection(queued.getsockname()) for _ in range(count)]
    for client in clients:
        client.sendall(REQUEST)
        client.settimeout(30)
    return queued, clients


async def answer(client: socket.socket) -> bytes:
    try:
        return await asyncio.to_thread(client.recv, 4096)
    except ConnectionResetError:
        return b"reset"
    finally:
        client.close()


async def test_connections_the_kernel_completed_before_the_stop_are_served() -> None:
    """Closing a listener resets the connections in its accept queue; the drain takes them
    first. Here a second listener holds three such connections that nothing has accepted."""
    config = uvicorn.Config(hello, http=DeadlineProtocol, lifespan="off", ws="none")
    server = DrainingServer(config, Settings(), on_drain=lambda: None)
    serving = await started(server)
    queued, clients = queued_requests(3)

    await server._close_listeners([queued])

    for client in clients:
        assert (await answer(client)).endswith(b"\r\n\r\nhello")
    server.should_exit = True
    await serving


async def test_control_closing_the_listener_alone_loses_them() -> None:
    queued, clients = queued_requests(3)
    queued.close()
    assert [await answer(client) for client in clients] == [b"reset"] * 3
