"""Batches fetched across epoch boundaries, so a pipeline's start-up never stalls the trainer.

A Ray Data epoch begins by launching its read, shuffle and augmentation work, which takes
seconds. Started when the trainer asks for the epoch's first batch, all of that is time the
trainer waits. `EpochPrefetcher` starts epoch e+1 as soon as epoch e has been fetched, while
the trainer still works through the last `depth` batches it holds (and its checkpoint).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END_OF_EPOCH = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class EpochPrefetcher(Generic[T]):
    """Iterates `make_epoch(e)` for e in [first, last) in a thread, `depth` batches ahead.

    Args:
        make_epoch: epoch index -> that epoch's batches (called once per epoch, in order).
        first: first epoch to fetch (a resumed run starts after its checkpoint's epoch).
        last: one past the last epoch; nothing beyond it is fetched.
        depth: batches held ready at most (memory: depth x one batch).
    """

    def __init__(
        self, make_epoch: Callable[[int], Iterable[T]], first: int, last: int, depth: int
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._remaining = last - first
        # A daemon: a trainer that stops early (NaN, a failure) must not wait on its producer.
        threading.Thread(
            target=self._produce,
            args=(make_epoch, first, last),
            daemon=True,
            name="epoch-prefetcher",
        ).start()

    def _produce(self, make_epoch: Callable[[int], Iterable[T]], first: int, last: int) -> None:
        try:
            for epoch in range(first, last):
                for batch in make_epoch(epoch):
                    self._queue.put(batch)
                self._queue.put(_END_OF_EPOCH)
        except BaseException as error:  # re-raised in the trainer's thread, where it is handled
            self._queue.put(_Failure(error))

    def next_epoch(self) -> Iterator[T]:
        """The next epoch's batches, in order; a producer error is raised here."""
        if self._remaining <= 0:
            raise RuntimeError("every epoch has already been fetched")
        self._remaining -= 1
        return self._epoch()

    def _epoch(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END_OF_EPOCH:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
