"""Giving a retired model version's memory back to the system."""

import ctypes
import functools
import gc
import logging
import time
import weakref
from collections.abc import Callable

import torch

log = logging.getLogger("ptserve")


def release_memory(models: list["weakref.ref[object]"]) -> None:
    """Free what retired versions leave, ``models`` being weak references to their models.

    A stopped runner lets go of its model, so weights held without reference cycles are freed
    at once, and the reference cycles of versions loaded after start-up go with one collection
    (cheap: what start-up left is frozen out of the collector's sight, see app.py). A model
    still alive then was frozen at start-up inside a reference cycle (a torch.export graph, a
    fastai learner): only a collection of everything frees it, which pauses the process
    (~150-250 ms measured on the 2-core dev machine), so it runs only then, and freezes what
    still lives again. Last, the C allocator hands back what it keeps (``_malloc_trim``), and
    so does torch's CUDA caching allocator.
    """
    gc.collect()
    if any(model() is not None for model in models):
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info("collected a retired model frozen at start-up in %.0f ms",
                 (time.perf_counter() - started) * 1000)  # fmt: skip
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    # torch's CUDA caching allocator keeps freed GPU memory for the process unless asked
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere. glibc keeps freed memory in per-thread
    arenas, and each model version runs on threads of its own: without a trim, a server that
    swapped a conv net's version six times under load held ~240 MiB more than before
    (measured with bench/swap.py); with it, what the old versions used goes back."""
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim
