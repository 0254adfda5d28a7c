"""The request skeleton every protocol shares, and the protocol-neutral request it carries.

A codec (``protocols/simple.py``, ``protocols/oip_v2.py``, ...) only translates its wire format:
it decodes a request into a ``ModelInput`` and encodes the outputs. Everything between is here,
once: admission before the body is read (which also marks the request as arriving, so batches
wait for it), the model's
own preprocessing (images, hooks, fastai transforms), the disconnect watch, the batcher with its
deadline, and the per-model request metrics.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ptserve.errors import ServeError

if TYPE_CHECKING:
    from ptserve.service import InferenceService

Arrays = list[np.ndarray[Any, Any]]
Watch = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(slots=True)
class ModelInput:
    """A decoded request. Either ``arrays`` (validated tensors, one batched array per model
    input) or ``instances`` for the model's own preprocessing: encoded images (bytes) or
    samples (arrays) for an image model, or whatever a preprocess hook takes. ``where`` names
    the instances in error messages (``instances``, ``files``, ``input 'x'``), ``suffix`` what
    follows an encoded image's index (``.image`` for ``{"image": ...}``)."""

    arrays: Arrays | None = None
    instances: list[Any] | None = None
    where: str = "instances"
    top_k: int | None = None
    suffix: str = ""

    def location(self, index: int) -> str:
        """How error messages name instance ``index``."""
        return f"{self.where}[{index}]"

    @property
    def size(self) -> int:
        if self.arrays is not None:
            return len(self.arrays[0])
        assert self.instances is not None
        return len(self.instances)


async def run(
    service: "InferenceService",
    protocol: str,
    decode: Callable[[], Awaitable[ModelInput]],
    timeout: float,
    watch: Watch,
) -> tuple[ModelInput, Arrays]:
    """Admit, decode, prepare and infer one request; return it with the model's outputs.

    ``decode`` reads and validates the request (it is not called when the request is refused
    on admission); ``watch()`` cancels work that has to wait if the client goes away.
    """
    outcome = "ok"
    try:
        await service.admit(timeout)  # before the body is read: waits for room, or 503
        try:
            request = await decode()
            service.check(request)
            arrays = request.arrays
            if arrays is None:
                arrays = await service.prepare(request)
        except BaseException:
            service.arrived()  # never queued: give its place back
            raise
        if service.will_wait():  # only work that waits can see its client leave
            async with watch():
                outputs = await service.infer(arrays, timeout, admitted=True)
        else:
            outputs = await service.infer(arrays, timeout, admitted=True)
    except ServeError as error:
        outcome = error.code
        raise
    except asyncio.CancelledError:  # the transport gave up on the call (gRPC: client or deadline)
        outcome = "cancelled"
        raise
    except Exception:
        outcome = "internal_error"
        raise
    finally:
        service.count(protocol, outcome)
    return request, outputs


@asynccontextmanager
async def unwatched() -> AsyncIterator[None]:
    """The watch of a transport that cancels abandoned calls itself."""
    yield
