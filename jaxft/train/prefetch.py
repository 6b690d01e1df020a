"""Batches prepared ahead: a background thread collates the next batches and hands them to the devices
while the current step runs, so the accelerator is never left waiting on the host.

    with Prefetcher(make_batches(), depth=2) as batches:
        for batch in batches: ...

Items come out in order; an exception raised by the producer comes out of the consumer's next(). Closing
(or leaving the `with` block) stops the producer; items it prepared beyond that point are dropped.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

_DONE = object()


class Prefetcher:
    def __init__(self, items: Iterator, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="jaxft-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            self._put(err)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
