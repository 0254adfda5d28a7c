import pytest

from ptserve.service import batch_buckets, choose_execution


@pytest.mark.parametrize(
    ("largest", "buckets"), [(1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12])]
)
def test_warm_up_buckets_cover_every_power_of_two_and_the_maximum(
    largest: int, buckets: list[int]
) -> None:
    assert batch_buckets(largest) == buckets


@pytest.mark.parametrize(
    ("setting", "seconds", "chosen"),
    [
        ("auto", 0.0002, "inline"),
        ("auto", 0.004, "thread"),
        ("thread", 0.0002, "thread"),
        ("inline", 0.5, "inline"),
    ],
)
def test_execution_choice(setting: str, seconds: float, chosen: str) -> None:
    assert choose_execution(setting, seconds) == chosen
