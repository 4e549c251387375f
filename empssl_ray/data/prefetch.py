"""Batches fetched ahead in a thread, handed out an epoch's worth at a time.

The training stream is one Ray Data execution over every epoch still to run (`ray_read`), so
nothing restarts at an epoch boundary: while the trainer writes its checkpoint and scores the
kNN monitor, this thread keeps fetching the next epoch's first batches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()
_NOTHING = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterates `source` in a thread, `depth` items ahead of the consumer.

    Args:
        source: the items (batches); iterated once, in order.
        depth: items held ready at most (memory: depth x one batch).
    """

    def __init__(self, source: Iterable[T], depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._next: object = _NOTHING  # an item taken off the queue to look at, not yet handed out
        self._closing = threading.Event()
        # A daemon: a trainer that stops early (NaN, a failure) must not wait on its producer.
        threading.Thread(target=self._produce, args=(source,), daemon=True, name="prefetch").start()

    def _produce(self, source: Iterable[T]) -> None:
        iterator = iter(source)
        try:
            for item in iterator:
                self._queue.put(item)
                if self._closing.is_set():
                    return  # nobody reads any more
            self._queue.put(_END)
        except BaseException as error:  # re-raised in the consumer's thread, where it is handled
            self._queue.put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: its own clean-up (e.g. a Ray Data iterator's)
                close()

    def _peek(self) -> object:
        if self._next is _NOTHING:
            self._next = _END if self._closing.is_set() else self._queue.get()
        return self._next

    @property
    def ended(self) -> bool:
        """Whether a take has met the source's end (never waits: a consumer's wait for data
        belongs to its take, where it is measured)."""
        return self._next is _END

    def take(self, n: int) -> Iterator[T]:
        """The next `n` items (fewer where the source ends); a producer error is raised here,
        and again at every later take."""
        for _ in range(n):
            item = self._peek()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error  # kept as the next item: the source is broken for good
            self._next = _NOTHING
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stops fetching: the rest of the source is not needed (the run's last epoch is done)."""
        self._closing.set()
        self._next = _END
        with contextlib.suppress(queue.Empty):
            while True:  # unblocks a producer waiting for room
                self._queue.get_nowait()
