"""The batcher's behaviour, made deterministic with a gate on the model instead of timing."""

import asyncio
import gc
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
import pytest

from ptserve.batching import Batcher, BatchPolicy, Forward
from ptserve.errors import DeadlineExceeded, ModelFailure, Overloaded
from tests.guards import REQUEST_S, hang_guard

pytestmark = pytest.mark.anyio
LONG_DELAY_S = 60.0
# "At once" means long before a LONG_DELAY_S delay would flush; half of it tells the two apart
# and is a generous hang guard on a busy machine.
AT_ONCE_S = LONG_DELAY_S / 2
Arrays = list[np.ndarray]


class GatedModel:
    """Doubles its input; each call blocks until the test opens the gate. Records batches."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, arrays: Arrays) -> Arrays:
        self.batches.append(arrays[0][:, 0].tolist())
        self.entered.set()
        self.gate.wait(10)
        if (arrays[0] == -999).any():
            raise RuntimeError("poisoned sample")
        return [arrays[0] * 2]

    async def running(self) -> None:
        """Wait until a batch is inside the model."""
        entered = await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)
        assert entered, "no batch entered the model"
        self.entered.clear()


def sample(value: float, n: int = 1, width: int = 2) -> Arrays:
    return [np.full((n, width), value, dtype=np.float32)]


@asynccontextmanager
async def batcher(
    model: Forward,
    max_batch_size: int = 8,
    max_delay: float = 60.0,
    max_queue: int = 100,
    concurrency: int = 1,
) -> AsyncIterator[Batcher]:
    executor = ThreadPoolExecutor(concurrency)

    def run_blocking(fn: Callable[[Arrays], Arrays], arrays: Arrays) -> "asyncio.Future[Arrays]":
        return asyncio.get_running_loop().run_in_executor(executor, fn, arrays)

    policy = BatchPolicy(max_batch_size, max_delay)
    b = Batcher(model, run_blocking, policy, max_queue, concurrency=concurrency)
    b.start()
    try:
        yield b
    finally:
        if isinstance(model, GatedModel):
            model.gate.set()
        await b.stop()
        executor.shutdown()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def busy(b: Batcher, model: GatedModel) -> "asyncio.Future[Arrays]":
    """Sample 0 submitted and held in the model (until the gate opens): the future of its answer."""
    running = asyncio.ensure_future(b.submit(sample(0), timeout=30))
    await model.running()
    return running


@pytest.mark.parametrize(
    ("now", "queued", "arriving", "expected"),
    [
        (10.0, 8, 3, 0.0),  # full
        (10.0, 2, 0, 0.0),  # nothing else on its way: no added delay
        (10.0, 2, 1, 0.004),  # someone is arriving: wait out the rest of the delay
        (10.006, 2, 1, 0.0),  # the oldest item's delay has passed
    ],
)
def test_policy_with_a_fake_clock(now: float, queued: int, arriving: int, expected: float) -> None:
    policy = BatchPolicy(max_batch_size=8, max_delay=0.005)
    assert policy.wait_time(now, oldest=9.999, queued=queued, arriving=arriving) == pytest.approx(
        expected
    )


async def test_a_lone_request_runs_at_once_despite_a_long_delay() -> None:
    model = GatedModel()
    model.gate.set()
    async with batcher(model, max_delay=LONG_DELAY_S) as b:
        (out,) = await asyncio.wait_for(b.submit(sample(1.5), timeout=30), AT_ONCE_S)
    np.testing.assert_array_equal(out, [[3.0, 3.0]])


async def test_batches_form_under_concurrency_and_outputs_go_back_in_order() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        first = asyncio.ensure_future(b.submit(sample(0), timeout=30))
        await model.running()
        rest = [asyncio.ensure_future(b.submit(sample(v, n=2), timeout=30)) for v in (1, 2, 3)]
        await settle()
        model.gate.set()
        results = await asyncio.gather(first, *rest)
    assert model.batches == [[0.0], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]
    for value, (out,) in zip((0, 1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(out, np.full_like(out, value * 2))
    assert b.stats.batches == 2
    assert b.stats.largest == 6


async def test_a_full_batch_flushes_and_the_rest_waits_its_turn() -> None:
    model = GatedModel()
    async with batcher(model, max_batch_size=2) as b:
        first = asyncio.ensure_future(b.submit(sample(0), timeout=30))
        await model.running()
        rest = [asyncio.ensure_future(b.submit(sample(v), timeout=30)) for v in (1, 2, 3)]
        await settle()
        model.gate.set()
        await asyncio.gather(first, *rest)
    assert model.batches == [[0.0], [1.0, 2.0], [3.0]]


async def test_waits_for_arriving_requests_then_flushes_together() -> None:
    model = GatedModel()
    model.gate.set()
    body_read = asyncio.Event()
    async with batcher(model, max_delay=LONG_DELAY_S) as b:

        async def second_request() -> Arrays:
            await b.admit(wait=30)  # received; its body is still being read
            await body_read.wait()
            return await b.submit(sample(2), timeout=30, admitted=True)

        second = asyncio.ensure_future(second_request())
        await settle()
        first = asyncio.ensure_future(b.submit(sample(1), timeout=30))
        await settle()
        assert not first.done()  # held back: another request is on its way
        body_read.set()
        await asyncio.wait_for(asyncio.gather(first, second), AT_ONCE_S)
    assert model.batches == [[1.0, 2.0]]


async def test_flushes_when_the_delay_passes_even_while_requests_arrive() -> None:
    model = GatedModel()
    model.gate.set()
    async with batcher(model, max_delay=0.01) as b:
        await b.admit(wait=30)  # another request is arriving, and stays so
        (out,) = await asyncio.wait_for(b.submit(sample(4), timeout=30), hang_guard(REQUEST_S))
        b.arrived()
    np.testing.assert_array_equal(out, [[8.0, 8.0]])


async def test_full_queue_answers_overloaded_with_retry_after() -> None:
    model = GatedModel()
    async with batcher(model, max_queue=2) as b:
        running = await busy(b, model)
        queued = asyncio.ensure_future(b.submit(sample(1, n=2), timeout=30))
        await settle()
        with pytest.raises(Overloaded) as err:
            await b.submit(sample(2), timeout=30)
        assert err.value.status_code == 503
        assert err.value.headers == {"Retry-After": "1"}
        model.gate.set()
        await asyncio.gather(running, queued)


async def test_expired_work_gets_504_and_is_never_computed() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        running = await busy(b, model)
        with pytest.raises(DeadlineExceeded) as err:
            await b.submit(sample(7), timeout=0.01)
        assert err.value.status_code == 504
        model.gate.set()
        await running
        (after,) = await b.submit(sample(8), timeout=30)
    assert 7.0 not in [v for batch in model.batches for v in batch]
    assert model.batches == [[0.0], [8.0]]
    assert b.stats.expired == 1
    np.testing.assert_array_equal(after, [[16.0, 16.0]])


async def test_a_cancelled_request_is_dropped_from_the_queue() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        running = await busy(b, model)
        gone = asyncio.ensure_future(b.submit(sample(5), timeout=30))
        await settle()
        gone.cancel()  # what a client disconnect does
        await settle()
        assert b.queued_samples == 0
        model.gate.set()
        await running
    assert model.batches == [[0.0]]


async def test_a_failing_sample_fails_alone() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        running = await busy(b, model)
        good1, bad, good2 = (
            asyncio.ensure_future(b.submit(sample(v), timeout=30)) for v in (1, -999, 3)
        )
        await settle()
        model.gate.set()
        await running
        (out1,), (out3,) = await good1, await good2
        with pytest.raises(ModelFailure):
            await bad
        (after,) = await b.submit(sample(6), timeout=30)  # the loop survived
    np.testing.assert_array_equal(out1, [[2.0, 2.0]])
    np.testing.assert_array_equal(out3, [[6.0, 6.0]])
    np.testing.assert_array_equal(after, [[12.0, 12.0]])
    assert model.batches[1] == [1.0, -999.0, 3.0]  # batched, failed, then one by one:
    assert model.batches[2:5] == [[1.0], [-999.0], [3.0]]


async def test_a_request_larger_than_a_batch_is_split_and_reassembled() -> None:
    model = GatedModel()
    model.gate.set()
    inputs = [np.arange(20, dtype=np.float32).reshape(10, 2)]
    async with batcher(model, max_batch_size=4) as b:
        (out,) = await b.submit(inputs, timeout=30)
    np.testing.assert_array_equal(out, inputs[0] * 2)
    assert [len(batch) for batch in model.batches] == [4, 4, 2]


async def test_samples_of_different_shapes_are_not_stacked() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        running = await busy(b, model)
        wide = asyncio.ensure_future(b.submit(sample(1, width=3), timeout=30))
        narrow = asyncio.ensure_future(b.submit(sample(2), timeout=30))
        wide2 = asyncio.ensure_future(b.submit(sample(3, width=3), timeout=30))
        await settle()
        model.gate.set()
        await asyncio.gather(running, wide, narrow, wide2)
    assert model.batches == [[0.0], [1.0, 3.0], [2.0]]


async def test_stop_finishes_queued_work() -> None:
    model = GatedModel()
    async with batcher(model) as b:
        running = await busy(b, model)
        queued = asyncio.ensure_future(b.submit(sample(1), timeout=30))
        await settle()
        model.gate.set()
        await b.stop()
        assert queued.done()
        (out,) = queued.result()
        await running
    np.testing.assert_array_equal(out, [[2.0, 2.0]])


async def test_a_model_returning_the_wrong_number_of_rows_fails_that_request() -> None:
    def first_row_only(arrays: Arrays) -> Arrays:
        return [arrays[0][:1] * 2]

    async with batcher(first_row_only) as b:
        with pytest.raises(ModelFailure):
            await b.submit(sample(1, n=2), timeout=30)
        (out,) = await b.submit(sample(3), timeout=30)  # one row for one sample is right
    np.testing.assert_array_equal(out, [[6.0, 6.0]])


async def test_with_two_inference_threads_two_batches_are_in_the_model_at_once() -> None:
    model = GatedModel()
    async with batcher(model, max_batch_size=1, concurrency=2) as b:
        first = asyncio.ensure_future(b.submit(sample(1), timeout=30))
        await model.running()
        second = asyncio.ensure_future(b.submit(sample(2), timeout=30))
        await model.running()  # entered while the first is still held: they run together
        assert b.will_wait()  # both slots busy: a third request would wait
        model.gate.set()
        results = await asyncio.gather(first, second)
    assert sorted(batch[0] for batch in model.batches) == [1.0, 2.0]
    assert [r[0][0, 0] for r in results] == [2.0, 4.0]


async def test_a_request_cancelled_while_the_loop_waits_for_arrivals_leaves_it_working() -> None:
    """The batch loop waits for an arriving request; meanwhile the only queued request goes
    away (its client disconnected). The loop must go on serving, not die on an empty queue."""
    model = GatedModel()
    model.gate.set()
    async with batcher(model, max_delay=0.05) as b:
        await b.admit(wait=30)  # another request is on its way: the loop waits for it
        gone = asyncio.ensure_future(b.submit(sample(5), timeout=30))
        await settle()
        gone.cancel()
        await asyncio.sleep(0.1)  # past the delay: the loop re-evaluates an empty queue
        b.arrived()
        (out,) = await asyncio.wait_for(b.submit(sample(1), timeout=30), hang_guard(REQUEST_S))
    np.testing.assert_array_equal(out, [[2.0, 2.0]])
    assert model.batches == [[1.0]]


async def test_a_full_queue_makes_new_requests_wait_for_room_first_come_first_served() -> None:
    """Over capacity, requests wait (unread) for room instead of being refused at once; the
    queue never holds more than its limit; the longest-waiting request goes in first."""
    model = GatedModel()
    async with batcher(model, max_batch_size=1, max_queue=1) as b:
        running = await busy(b, model)
        await b.admit(wait=30)  # the queue's one place: admitted, still arriving
        order: list[int] = []

        async def request(value: int) -> Arrays:
            await b.admit(wait=30)
            order.append(value)
            return await b.submit(sample(value), timeout=30, admitted=True)

        waiting = [asyncio.ensure_future(request(v)) for v in (1, 2)]
        await settle()
        assert order == []  # no room: both wait, nothing refused
        queued = asyncio.ensure_future(b.submit(sample(3), timeout=30, admitted=True))
        await settle()
        assert order == []
        assert b.queued_samples == 1
        model.gate.set()
        await asyncio.gather(running, queued, *waiting)
    assert order == [1, 2]
    assert [batch[0] for batch in model.batches] == [0.0, 3.0, 1.0, 2.0]


async def test_a_request_that_waits_too_long_for_room_gets_503_with_retry_after() -> None:
    model = GatedModel()
    async with batcher(model, max_batch_size=1, max_queue=1) as b:
        running = await busy(b, model)
        queued = asyncio.ensure_future(b.submit(sample(1), timeout=30))
        await settle()
        with pytest.raises(Overloaded) as err:
            await b.admit(wait=0.01)
        assert err.value.headers == {"Retry-After": "1"}
        model.gate.set()
        await asyncio.gather(running, queued)
        await b.admit(wait=0)  # the refused request left no place in line ahead of this one
        b.arrived()


async def test_a_waiting_client_that_leaves_gives_its_turn_to_the_next() -> None:
    model = GatedModel()
    async with batcher(model, max_batch_size=1, max_queue=1) as b:
        running = await busy(b, model)
        queued = asyncio.ensure_future(b.submit(sample(1), timeout=30))
        await settle()
        gone = asyncio.ensure_future(b.admit(wait=30))
        next_one = asyncio.ensure_future(b.admit(wait=30))
        await settle()
        gone.cancel()
        model.gate.set()
        await asyncio.gather(running, queued)
        await asyncio.wait_for(next_one, hang_guard(REQUEST_S))  # admitted once it had room
        assert b.arriving == 1
        b.arrived()


async def test_expiry_follows_the_injected_clock() -> None:
    """Deadlines are read from the batcher's clock: a test moves a fake clock past one and asks
    the batcher to expire what is due, with no real time passing."""
    now = [100.0]
    model = GatedModel()
    executor = ThreadPoolExecutor(1)

    def run_blocking(fn: Callable[[Arrays], Arrays], arrays: Arrays) -> "asyncio.Future[Arrays]":
        return asyncio.get_running_loop().run_in_executor(executor, fn, arrays)

    b = Batcher(model, run_blocking, BatchPolicy(8, 60.0), 100, clock=lambda: now[0])
    b.start()
    try:
        running = asyncio.ensure_future(b.submit(sample(0), timeout=3600))
        await model.running()
        soon = asyncio.ensure_future(b.submit(sample(1), timeout=10))
        later = asyncio.ensure_future(b.submit(sample(2), timeout=20))
        await settle()
        now[0] += 15  # past the first deadline, not the second
        b.expire_due()
        await settle()
        with pytest.raises(DeadlineExceeded, match="waited 15000 ms"):
            await soon
        assert not later.done()
        model.gate.set()
        await asyncio.gather(running, later)
    finally:
        model.gate.set()
        await b.stop()
        executor.shutdown()
    assert 1.0 not in [v for batch in model.batches for v in batch]


async def test_a_stopped_batcher_is_freed_with_what_it_holds() -> None:
    """A swapped-out model version must release its memory: nothing may keep the stopped
    batcher (and so its model) alive."""
    executor = ThreadPoolExecutor(1)

    def run_blocking(fn: Callable[[Arrays], Arrays], arrays: Arrays) -> "asyncio.Future[Arrays]":
        return asyncio.get_running_loop().run_in_executor(executor, fn, arrays)

    b = Batcher(lambda arrays: arrays, run_blocking, BatchPolicy(8, 60.0), 100)
    b.start()
    await b.submit(sample(1), timeout=30)
    await b.stop()
    executor.shutdown()
    freed = weakref.ref(b)
    del b
    gc.collect()
    assert freed() is None
