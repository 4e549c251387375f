"""Prefetcher: items in order, fetched ahead across epoch boundaries, depth-bounded, errors
raised in the consumer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from empssl_ray.data.prefetch import Prefetcher


def test_epochs_are_consecutive_takes_in_order() -> None:
    stream = Prefetcher(iter(range(12)), depth=2)
    assert [list(stream.take(5)) for _ in range(3)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert list(stream.take(5)) == []  # the source ended: nothing more, no error


def test_next_epoch_is_fetched_while_the_trainer_is_still_on_this_one() -> None:
    second_epoch_fetched = threading.Event()

    def source() -> Iterator[int]:
        yield from range(3)
        second_epoch_fetched.set()  # the first item of "epoch 2"
        yield from range(3, 6)

    stream = Prefetcher(source(), depth=8)
    epoch = stream.take(3)
    assert next(epoch) == 0
    # The trainer holds epoch 1's first batch; epoch 2's come without its asking.
    assert second_epoch_fetched.wait(timeout=5)
    assert list(epoch) == [1, 2] and list(stream.take(3)) == [3, 4, 5]


def test_depth_bounds_what_is_fetched_ahead() -> None:
    """Depth 3 with one item handed out: the producer fetches up to item 4 (3 queued, one
    being put) and no further. Waits for the producer to get that far first, so a slow
    producer cannot pass for a bounded one."""
    reached, overfetched = threading.Event(), threading.Event()

    def source() -> Iterator[int]:
        for i in range(100):
            if i == 4:
                reached.set()
            if i == 5:
                overfetched.set()
            yield i

    stream = Prefetcher(source(), depth=3)
    epoch = stream.take(100)
    next(epoch)
    assert reached.wait(timeout=10)  # as far as the depth allows
    assert not overfetched.wait(timeout=0.5)  # and no further while nobody takes
    assert sum(1 for _ in epoch) == 99 and overfetched.is_set()


def test_producer_error_is_raised_in_the_trainer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("bad image in part-3.parquet")

    stream = Prefetcher(source(), depth=2)
    epoch = stream.take(5)
    assert next(epoch) == 1
    with pytest.raises(ValueError, match="part-3"):
        next(epoch)


def test_close_stops_the_producer_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1000)
        finally:
            closed.set()

    stream = Prefetcher(source(), depth=1)
    assert list(stream.take(2)) == [0, 1]
    stream.close()
    assert closed.wait(timeout=5)  # e.g. a Ray Data iterator ends its execution


def test_ended_once_a_take_meets_the_end() -> None:
    stream = Prefetcher(iter(range(3)), depth=2)
    assert not stream.ended
    assert list(stream.take(3)) == [0, 1, 2]
    assert not stream.ended  # the take stopped at its count, before looking further
    assert list(stream.take(1)) == [] and stream.ended


def test_an_error_is_raised_again_and_a_closed_stream_is_empty() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("bad image")

    stream = Prefetcher(source(), depth=2)
    assert list(stream.take(1)) == [1]
    for _ in range(2):  # never a hang on a producer that is gone
        with pytest.raises(ValueError):
            list(stream.take(1))
    closed = Prefetcher(iter(range(100)), depth=1)
    closed.close()
    assert closed.ended and list(closed.take(3)) == []
