import pytest

from ptserve.service import batch_buckets
from ptserve.settings import EXAMPLE_MODEL, Settings
from ptserve.threads import plan_threads


@pytest.mark.parametrize(
    ("largest", "buckets"), [(1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12])]
)
def test_warm_up_buckets_cover_every_power_of_two_and_the_maximum(
    largest: int, buckets: list[int]
) -> None:
    assert batch_buckets(largest) == buckets


class Timings:
    """A full batch's seconds per (torch threads, batches at once), and what was asked."""

    def __init__(self, table: dict[tuple[int, int], float]) -> None:
        self.table = table
        self.asked: list[tuple[int, int]] = []

    def __call__(self, threads: int, inference: int) -> float:
        self.asked.append((threads, inference))
        return self.table[threads, inference]


def plan(timings: Timings, cores: int = 2, **settings: object) -> tuple[str, int, int]:
    chosen = plan_threads(Settings(model_path=EXAMPLE_MODEL, **settings), cores, timings)
    return chosen.execution, chosen.torch_threads, chosen.inference


def test_a_model_faster_than_a_thread_hop_runs_inline_with_a_core_left_for_the_loop() -> None:
    timings = Timings({(1, 1): 0.0002})
    assert plan(timings) == ("inline", 1, 1)
    assert timings.asked == [(1, 1)]  # nothing else was worth timing


def test_a_compute_heavy_model_gets_every_core_when_that_is_faster() -> None:
    # a conv net: 1 thread 0.5 s a batch, 2 threads 0.3 s, two single-threaded batches 0.8 s
    timings = Timings({(1, 1): 0.5, (2, 1): 0.3, (1, 2): 0.8})
    assert plan(timings) == ("thread", 2, 1)


def test_two_batches_at_once_win_when_threads_scale_badly() -> None:
    timings = Timings({(1, 1): 0.5, (2, 1): 0.45, (1, 2): 0.55})
    assert plan(timings) == ("thread", 1, 2)


def test_a_second_thread_that_barely_helps_leaves_the_loop_its_core() -> None:
    # 2 threads are 0.2% faster, but the event loop's own work then slows the model down more
    timings = Timings({(1, 1): 0.002, (2, 1): 0.001996, (1, 2): 0.0045})
    assert plan(timings) == ("thread", 1, 1)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"execution": "thread"}, ("thread", 1, 1)),
        ({"execution": "inline"}, ("inline", 1, 1)),
        ({"torch_threads": 2}, ("inline", 2, 1)),
        ({"inference_threads": 2}, ("thread", 1, 2)),
    ],
)
def test_settings_override_the_choice(
    settings: dict[str, object], expected: tuple[str, int, int]
) -> None:
    # fast enough to run inline: the settings still decide
    timings = Timings({(1, 1): 0.0002, (2, 1): 0.0001, (1, 2): 0.0002})
    assert plan(timings, **settings) == expected
