"""A budget for decoded image pixels in flight, and giving their memory back afterwards.

An image that decodes to 25 megapixels is a 100 MB buffer, however small the upload (a 71 KB
PNG does it); twenty of them at once took a server from 380 MB to 4.8 GB. Each image is
admitted against the budget from its header, before it is decoded, and held until it has been
scaled down to the model's input: a request that would exceed the budget waits for others to
finish, and after ``wait_s`` gets 503 with ``Retry-After``. One budget belongs to one model
service; decoding runs on worker threads, so it is thread-safe.

Freed image memory is handed back to the operating system (glibc's ``malloc_trim``) whenever
the budget goes idle or a few large images have been freed since the last time. Without it the
budget bounds nothing: glibc raises its mmap threshold after the first large free, so Pillow's
16 MB blocks then come from per-thread arenas, which keep them; twenty large images decoded
one at a time on twenty worker threads left 1.5 GB resident (measured), as if all had been
decoded at once. Trimming costs ~0.05 ms with little to return, ~15 ms after a 100 MB image.
"""

import contextlib
import ctypes
import functools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ptserve.errors import Overloaded

BYTES_PER_PIXEL = 12  # decoded (4: Pillow stores RGB as RGBX), converted (4), turned upright (4)
MEMORY_SHARE = 4  # the default budget is a quarter of the memory a worker may use
TRIM_AFTER_PIXELS = 4_000_000  # Pillow's 16 MB block: freed pixels that make a trim worth it
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


class ImageBudget:
    """Pixels of decoded images in flight, shared by the threads that decode them."""

    def __init__(self, pixels: int, wait_s: float) -> None:
        self.pixels = pixels
        self.wait_s = wait_s
        self.in_flight = 0
        self._freed = 0  # pixels freed since memory was last handed back
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def admit(self, pixels: int, where: str) -> Iterator[None]:
        """Hold ``pixels`` of the budget while the block runs; waits up to ``wait_s`` for room,
        then raises Overloaded (503, Retry-After). An image larger than the whole budget is
        admitted alone, once nothing else is in flight."""
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self.in_flight and self.in_flight + pixels > self.pixels:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"{where}: the server is decoding as many image pixels as it may at "
                        f"once ({self.pixels}, the image_budget_pixels setting); retry shortly"
                    )
                self._changed.wait(remaining)
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= pixels
                self._freed += pixels
                trim = self.in_flight == 0 or self._freed >= TRIM_AFTER_PIXELS
                if trim:
                    self._freed = 0
                self._changed.notify_all()
            if trim:
                release_memory()


def default_pixels(workers: int, max_image_pixels: int) -> int:
    """The default budget: a quarter of the machine's memory (or of the container's limit,
    when lower), shared by the workers, at ``BYTES_PER_PIXEL``; never below one image of
    ``max_image_pixels``."""
    share = memory_bytes() // MEMORY_SHARE // workers
    return max(share // BYTES_PER_PIXEL, max_image_pixels)


def memory_bytes() -> int:
    """Physical memory, or the cgroup's memory limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(limit.read_text().strip()))  # "max": no limit
    return total


def release_memory() -> None:
    """Return freed heap memory to the operating system (glibc only; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> "ctypes._NamedFuncPointer | None":
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc
        return None
