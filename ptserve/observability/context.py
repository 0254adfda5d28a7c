"""Per-request context shared by the middleware, the batcher and log records."""

from contextvars import ContextVar
from dataclasses import dataclass

MAX_REQUEST_ID = 128  # longest request id taken from a client


def sane_request_id(given: str) -> bool:
    """Whether a client's request id may be used as is: short and printable."""
    return 0 < len(given) <= MAX_REQUEST_ID and given.isprintable()


@dataclass(slots=True)
class Timing:
    """Where a request's time went, for the Server-Timing header (seconds)."""

    queue: float | None = None
    inference: float | None = None
    batch_size: int = 0
    batch_started_ns: int = 0  # wall clock, for trace spans

    def header(self, total: float) -> bytes:
        if self.queue is None or self.inference is None:
            return b"total;dur=%.3f" % (total * 1000)
        return b"queue;dur=%.3f, inference;dur=%.3f, total;dur=%.3f" % (
            self.queue * 1000,
            self.inference * 1000,
            total * 1000,
        )

    def items(self) -> list[tuple[str, float]]:
        return [
            (n, v)
            for n, v in (("queue", self.queue), ("inference", self.inference))
            if v is not None
        ]


request_id: ContextVar[str | None] = ContextVar("ptserve_request_id", default=None)
timing: ContextVar[Timing | None] = ContextVar("ptserve_timing", default=None)
