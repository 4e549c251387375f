"""EpochPrefetcher: epochs in order, the next one started early, nothing fetched past the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from empssl_ray.prefetch import EpochPrefetcher


def test_epochs_arrive_whole_and_in_order() -> None:
    stream = EpochPrefetcher(lambda e: [(e, i) for i in range(5)], first=1, last=4, depth=2)
    assert [list(stream.next_epoch()) for _ in range(3)] == [
        [(e, i) for i in range(5)] for e in (1, 2, 3)
    ]
    with pytest.raises(RuntimeError, match="every epoch"):
        stream.next_epoch()


def test_next_epoch_starts_while_the_trainer_is_still_on_this_one() -> None:
    started: list[int] = []
    second_started = threading.Event()

    def make_epoch(e: int) -> Iterator[int]:
        started.append(e)
        if e == 1:
            second_started.set()
        yield from range(3)

    stream = EpochPrefetcher(make_epoch, first=0, last=2, depth=8)
    epoch = stream.next_epoch()
    assert next(epoch) == 0
    # The trainer holds epoch 0's first batch; epoch 1 starts without its asking.
    assert second_started.wait(timeout=5)
    assert list(epoch) == [1, 2] and list(stream.next_epoch()) == [0, 1, 2]
    assert started == [0, 1]  # never an epoch past `last`


def test_depth_bounds_what_is_fetched_ahead() -> None:
    fetched: list[int] = []

    def make_epoch(_: int) -> Iterator[int]:
        for i in range(100):
            fetched.append(i)
            yield i

    stream = EpochPrefetcher(make_epoch, first=0, last=1, depth=3)
    epoch = stream.next_epoch()
    next(epoch)
    threading.Event().wait(0.2)
    assert len(fetched) <= 5  # 3 queued, one being put, one handed out
    assert sum(1 for _ in epoch) == 99


def test_producer_error_is_raised_in_the_trainer() -> None:
    def make_epoch(e: int) -> Iterator[int]:
        yield 1
        raise ValueError("bad image in part-3.parquet")

    stream = EpochPrefetcher(make_epoch, first=0, last=2, depth=2)
    epoch = stream.next_epoch()
    assert next(epoch) == 1
    with pytest.raises(ValueError, match="part-3"):
        next(epoch)
