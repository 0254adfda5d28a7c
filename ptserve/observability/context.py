"""Per-request context shared by the middleware, the batcher and log records."""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Timing:
    """Where a request's time went, for the Server-Timing header (seconds)."""

    queue: float | None = None
    inference: float | None = None
    batch_size: int = 0
    batch_started_ns: int = 0  # wall clock, for trace spans

    def header(self, total: float) -> str:
        parts = [f"{name};dur={value * 1000:.3f}" for name, value in self.items()]
        return ", ".join([*parts, f"total;dur={total * 1000:.3f}"])

    def items(self) -> list[tuple[str, float]]:
        return [
            (n, v)
            for n, v in (("queue", self.queue), ("inference", self.inference))
            if v is not None
        ]


request_id: ContextVar[str | None] = ContextVar("ptserve_request_id", default=None)
timing: ContextVar[Timing | None] = ContextVar("ptserve_timing", default=None)
