"""Server-side dynamic batching: a bounded queue, deadlines, and one batch loop per model.

Requests are validated before they get here, so a batch only ever holds valid inputs. The loop
forms a batch from what is queued, hands it to the inference thread (one thread hop per batch,
not per request), and splits the outputs back to each request's future. While the model runs,
new requests queue up and become the next batch: under load batches grow by themselves, and
with nothing else waiting a request is dispatched at once.
"""

import asyncio
import contextlib
import functools
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ptserve.errors import DeadlineExceeded, ModelFailure, NotReady, Overloaded, ServeError
from ptserve.observability import context
from ptserve.observability.context import Timing

log = logging.getLogger("ptserve")
STOP_GRACE_S = 1.0  # how long a stopped batcher's loop gets to end at its next turn
Arrays = list[np.ndarray[Any, Any]]
Forward = Callable[[Arrays], Arrays]


class BatchObserver(Protocol):
    """Where the batcher reports (metrics)."""

    def observe_batch(self, size: int, waits: Sequence[float], seconds: float) -> None: ...

    def observe_queue(self, samples: int) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    """When to flush a batch. Pure: tested with a fake clock."""

    max_batch_size: int
    max_delay: float

    def wait_time(self, now: float, oldest: float, queued: int, arriving: int) -> float:
        """Seconds to wait for more work before flushing; 0 means flush now.

        Flush when the batch is full, when the oldest item has waited ``max_delay``, or when no
        request is on its way (``arriving``: received but not yet queued) - waiting then would
        only add latency.
        """
        if queued >= self.max_batch_size or arriving == 0:
            return 0.0
        return max(0.0, oldest + self.max_delay - now)


@dataclass(eq=False)
class Item:
    """One request's samples (or one chunk of a request larger than a batch)."""

    arrays: Arrays
    deadline: float
    future: asyncio.Future[Arrays]
    enqueued: float
    timing: Timing | None = None
    running: bool = False
    request_id: str | None = field(default_factory=context.request_id.get)

    @property
    def size(self) -> int:
        return len(self.arrays[0])

    @functools.cached_property
    def key(self) -> tuple[tuple[int, ...], ...]:
        """Items stack into one batch only when their per-sample shapes agree."""
        return tuple(a.shape[1:] for a in self.arrays)


@dataclass
class BatchStats:
    """Counters the tests and metrics read."""

    batches: int = 0
    samples: int = 0
    expired: int = 0
    largest: int = 0


class Batcher:
    """Queues validated requests and runs them through ``forward`` in batches.

    Deadlines have one mechanism: ``expire_due()`` drops queued work whose deadline has passed
    by ``clock``; one timer per batcher calls it at the earliest deadline, and the loop applies
    the same rule when it takes a batch (tests drive it with a fake clock).
    """

    def __init__(
        self,
        forward: Forward,
        run_blocking: Callable[[Forward, Arrays], "asyncio.Future[Arrays]"],
        policy: BatchPolicy,
        max_queue: int,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        concurrency: int = 1,
    ) -> None:
        self.forward = forward
        self.run_blocking = run_blocking
        self.policy = policy
        self.max_queue = max_queue
        self.observer = observer
        self.clock = clock
        self.queue: deque[Item] = deque()
        self.queued_samples = 0
        self.arriving = 0
        self.running = 0
        self.concurrency = concurrency
        self.stats = BatchStats()
        self._slots = asyncio.Semaphore(concurrency)  # batches in the model at once
        self._batches: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting: deque[asyncio.Future[None]] = deque()  # requests waiting for room
        self._deadlines: list[tuple[float, int, Item]] = []  # a heap: earliest first
        self._sequence = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def concurrency_to(self, batches: int) -> None:
        """Let ``batches`` batches be in the model at once (before ``start``)."""
        self.concurrency = batches
        self._slots = asyncio.Semaphore(batches)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ptserve-batcher")
        self._task.add_done_callback(self._stopped)

    @property
    def crashed(self) -> bool:
        """Whether the batch loop ended with an error (a restart is the cure)."""
        task = self._task
        return task is not None and task.done() and not task.cancelled() and bool(task.exception())

    def _stopped(self, task: "asyncio.Task[None]") -> None:
        """A crashed loop would leave every request waiting: say so, and fail queued work."""
        if task.cancelled() or task.exception() is None:
            return
        log.critical("the batch loop stopped", exc_info=task.exception())
        self._drop(list(self.queue), ModelFailure("the server's batch loop stopped"))

    async def stop(self, timeout: float = float("inf")) -> None:
        """Finish what is queued and running (up to ``timeout`` seconds), then stop the loop;
        what is left then fails with 503."""
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), None if timeout == float("inf") else timeout)
        if not self._idle.is_set():
            log.warning("stopping with %d samples still queued", self.queued_samples)
            self._drop(list(self.queue), NotReady("the server stopped before this request ran"))
        if self._timer is not None:
            self._timer.cancel()
        # The loop ends by itself at its next turn. Cancelling it would leave a CancelledError
        # whose traceback holds the loop's frame, and so this batcher and its model, where
        # CPython 3.11's collector cannot see it: a stopped model version would never be freed.
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=STOP_GRACE_S)
            if not self._task.done():  # stuck behind a batch that does not end
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def busy(self) -> bool:
        """Whether any accepted work is waiting for room, arriving, queued or running."""
        return bool(self._waiting or self.arriving or self.queue or self.running)

    def full(self) -> bool:
        """Whether the queue has no room for another request (each admitted request still
        being read counts as one sample)."""
        return self.queued_samples + self.arriving >= self.max_queue

    def will_wait(self) -> bool:
        """Whether new work would wait behind batches already in the model (so a client could
        leave before its turn); on an idle model it starts within this loop iteration."""
        return self.running >= self.concurrency

    async def admit(self, wait: float) -> None:
        """Admit a request before its body is read: at once when the queue has room, else
        after waiting (first come, first served) up to ``wait`` seconds for room; Overloaded
        (503) then. An admitted request counts as arriving (see BatchPolicy) until
        ``arrived()``.

        A refusal costs almost nothing, but a client refused at once sends again at once: so
        a full queue makes new requests wait (their bodies unread, costing no CPU) rather
        than turning the server's time into refusals.
        """
        if not self._waiting and not self.full():
            self.arriving += 1
            return
        loop = asyncio.get_running_loop()
        admitted = loop.create_future()
        self._waiting.append(admitted)
        timer = loop.call_later(wait, self._refuse, admitted)
        try:
            await admitted
        except asyncio.CancelledError:  # the client left while it waited
            if admitted.done() and not admitted.cancelled():
                self.arrived()  # admitted just now: give the place back
            elif admitted in self._waiting:
                self._waiting.remove(admitted)
            raise
        finally:
            timer.cancel()

    def _refuse(self, admitted: "asyncio.Future[None]") -> None:
        """A request waited its time for room: 503."""
        if not admitted.done():
            self._waiting.remove(admitted)
            admitted.set_exception(
                Overloaded(
                    f"the server is at capacity ({self.queued_samples} samples queued); "
                    "retry shortly"
                )
            )

    def arrived(self) -> None:
        """An admitted request failed before it was queued: look again at the queue."""
        self.arriving -= 1
        self._wake.set()
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Let waiting requests in, first come first served, while there is room."""
        waiting = self._waiting
        while waiting and not self.full():
            admitted = waiting.popleft()
            if not admitted.done():  # (a client that left has its future cancelled)
                admitted.set_result(None)
                self.arriving += 1

    async def submit(self, arrays: Arrays, timeout: float, admitted: bool = False) -> Arrays:
        """Queue ``arrays`` (batched, one per input) and wait for the model's outputs;
        ``admitted``: the request was admitted (``admit``), and stops counting as arriving.

        Raises Overloaded when the queue is full and DeadlineExceeded when ``timeout`` seconds
        pass before the work starts; work that expired is never computed.
        """
        size = len(arrays[0])
        if admitted:
            self.arriving -= 1
        error: ServeError | None = None
        if self._closed or (self._task is not None and self._task.done()):
            error = ModelFailure("the server's batch loop stopped")
        elif self.queued_samples + size > self.max_queue:
            error = Overloaded(
                f"the server is at capacity ({self.queued_samples} samples queued); retry shortly"
            )
        if error is not None:
            self._admit_waiting()  # this request's place is free again
            raise error
        now = self.clock()
        loop = asyncio.get_running_loop()
        step = self.policy.max_batch_size
        timing = context.timing.get()
        deadline = now + timeout
        if size <= step:  # the usual case: one item, no slicing
            items = [Item(arrays, deadline, loop.create_future(), now, timing)]
        else:
            items = [
                Item([a[i : i + step] for a in arrays], deadline, loop.create_future(), now, timing)
                for i in range(0, size, step)
            ]
        self.queue.extend(items)
        self.queued_samples += size
        self._idle.clear()
        self._prune()
        for item in items:
            self._sequence += 1
            heapq.heappush(self._deadlines, (deadline, self._sequence, item))
        self._arm_timer()
        self._report_queue()
        self._wake.set()
        try:
            if len(items) == 1:
                return await items[0].future
            parts = [await item.future for item in items]
        except asyncio.CancelledError:  # the client went away: its queued work is dropped
            self._drop(items)
            raise
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def expire_due(self) -> None:
        """Fail queued work whose deadline has passed (504); work already running finishes."""
        now = self.clock()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, item = heapq.heappop(heap)
            if not (item.running or item.future.done()):
                waited = now - item.enqueued
                self._drop([item], DeadlineExceeded(f"the request waited {waited * 1000:.0f} ms"))
        self._prune()
        self._arm_timer()

    def _prune(self) -> None:
        """Forget the earliest deadlines of work that started or ended (cheap: the oldest
        work usually runs first, so finished entries gather at the top of the heap)."""
        heap = self._deadlines
        while heap and (heap[0][2].running or heap[0][2].future.done()):
            heapq.heappop(heap)

    def _arm_timer(self) -> None:
        """One timer, at the earliest pending deadline (or earlier: it then re-arms)."""
        if not self._deadlines:
            return
        at = self._deadlines[0][0]
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0.0, at - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.expire_due()

    def _drop(self, items: Sequence[Item], error: Exception | None = None) -> None:
        for item in items:
            if not item.running and item in self.queue:
                self.queue.remove(item)
                self.queued_samples -= item.size
                self.stats.expired += 1
            if item.future.done():
                continue
            if error is None:
                item.future.cancel()
            else:
                item.future.set_exception(error)
        self._report_queue()
        self._check_idle()
        self._admit_waiting()

    def _check_idle(self) -> None:
        if not (self.queue or self.running or self._batches):
            self._idle.set()

    def _report_queue(self) -> None:
        if self.observer is not None:
            self.observer.observe_queue(self.queued_samples)

    async def _loop(self) -> None:
        while not self._closed:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self.policy.wait_time(
                self.clock(), self.queue[0].enqueued, self.queued_samples, self.arriving
            )
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue  # look again: meanwhile requests may have come, or gone (disconnects)
            await self._slots.acquire()  # meanwhile the queue fills: bigger batches
            batch = self._take()
            if not batch:
                self._slots.release()
                self._check_idle()
                continue
            self.running += 1
            task = asyncio.get_running_loop().create_task(self._run_in_slot(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: "asyncio.Task[None]") -> None:
        self._batches.discard(task)
        self._check_idle()

    async def _run_in_slot(self, batch: list[Item]) -> None:
        """One slot, counted once, however many forward passes the batch takes."""
        try:
            await self._run(batch)
        finally:
            self.running -= 1
            self._slots.release()

    def _take(self) -> list[Item]:
        """Pop the next batch: items of the oldest item's shape, up to max_batch_size samples;
        expired items on the way are failed (504), as ``expire_due`` does."""
        now = self.clock()
        batch: list[Item] = []
        total = 0
        kept: deque[Item] = deque()
        while self.queue:
            item = self.queue.popleft()
            if item.future.done() or item.deadline <= now:
                self.queued_samples -= item.size
                self.stats.expired += 1
                if not item.future.done():
                    waited = now - item.enqueued
                    item.future.set_exception(
                        DeadlineExceeded(f"the request waited {waited * 1000:.0f} ms")
                    )
                continue
            fits = not batch or (
                item.key == batch[0].key and total + item.size <= self.policy.max_batch_size
            )
            if fits:
                batch.append(item)
                total += item.size
                item.running = True
                self.queued_samples -= item.size
            else:
                kept.append(item)
            if total >= self.policy.max_batch_size:
                break
        kept.extend(self.queue)
        self.queue = kept
        self._report_queue()
        self._admit_waiting()
        return batch

    async def _run(self, batch: list[Item]) -> None:
        """Run a batch; if it fails, run its items one by one so that only the bad ones fail."""
        size = sum(item.size for item in batch)
        self.stats.batches += 1
        self.stats.samples += size
        self.stats.largest = max(self.stats.largest, size)
        started = self.clock()
        wall_started = time.time_ns()
        try:
            stacked = [
                np.concatenate(column) if len(batch) > 1 else column[0]
                for column in zip(*(item.arrays for item in batch), strict=True)
            ]
            outputs = await self.run_blocking(self.forward, stacked)
            rows = [len(out) for out in outputs]
            if any(n != size for n in rows):
                raise ValueError(f"the model returned {rows} rows for a batch of {size}")
        except Exception:
            if len(batch) == 1:
                token = context.request_id.set(batch[0].request_id)  # the log line's id
                log.exception("the model failed on a batch of %d", size)
                context.request_id.reset(token)
                _fail(batch[0])
                return
            log.warning(
                "a batch of %d items failed (requests %s); re-running them one by one",
                len(batch), _request_ids(batch),
            )  # fmt: skip
            for item in batch:
                await self._run([item])
            return
        seconds = self.clock() - started
        if self.observer is not None:
            waits = [started - item.enqueued for item in batch for _ in range(item.size)]
            self.observer.observe_batch(size, waits, seconds)
        start = 0
        for item in batch:
            end = start + item.size
            if item.timing is not None:
                item.timing.queue = started - item.enqueued
                item.timing.inference = seconds
                item.timing.batch_size = size
                item.timing.batch_started_ns = wall_started
            if not item.future.done():
                item.future.set_result(
                    outputs if len(batch) == 1 else [out[start:end] for out in outputs]
                )
            start = end


def _fail(item: Item) -> None:
    if not item.future.done():
        item.future.set_exception(
            ModelFailure("the model failed on this input; the server log has details")
        )


def _request_ids(batch: Sequence[Item]) -> str:
    return ", ".join(item.request_id or "-" for item in batch)
