import asyncio

import pytest
from starlette.types import Message

from ptserve.errors import ClientDisconnected
from ptserve.protocols.http import HttpCall

pytestmark = pytest.mark.anyio


def call_with(receive_message: "asyncio.Future[Message]") -> HttpCall:
    async def receive() -> Message:
        return await receive_message

    return HttpCall({"type": "http", "method": "POST", "headers": []}, receive, {}, 1024)


async def test_work_is_cancelled_when_the_client_disconnects() -> None:
    message: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    work: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler() -> None:
        async with call_with(message).cancelled_on_disconnect():
            await work

    task = asyncio.ensure_future(handler())
    await asyncio.sleep(0)
    message.set_result({"type": "http.disconnect"})
    with pytest.raises(ClientDisconnected):
        await task
    assert work.cancelled()


async def test_work_that_finishes_returns_and_stops_watching() -> None:
    message: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def handler() -> int:
        async with call_with(message).cancelled_on_disconnect():
            await asyncio.sleep(0)
            return 42

    assert await handler() == 42
    await asyncio.sleep(0)
    assert message.cancelled()  # the pending receive was abandoned with the watch
