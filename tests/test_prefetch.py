"""The prefetch thread of the training loop: order, errors, early close (jaxft/train/prefetch.py)."""

import threading
import time

import pytest

from jaxft.train.prefetch import Prefetcher


def test_items_come_out_in_order_and_the_producer_runs_ahead():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    with Prefetcher(items(), depth=2) as batches:
        first = next(batches)
        time.sleep(0.2)  # the producer fills the queue while the consumer "computes"
        assert first == 0 and len(produced) >= 3  # item 0 taken, two more prepared (and one waiting to go in)
        assert [first, *batches] == list(range(10))


def test_a_producer_error_reaches_the_consumer_in_place():
    def items():
        yield 1
        yield 2
        raise ValueError("bad batch at 3")

    with Prefetcher(items()) as batches:
        assert next(batches) == 1 and next(batches) == 2
        with pytest.raises(ValueError, match="bad batch at 3"):
            next(batches)


def test_closing_stops_an_endless_producer():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    with Prefetcher(endless(), depth=2) as batches:
        assert next(batches) == 0
    time.sleep(0.3)
    assert threading.active_count() == before
    with pytest.raises(ValueError):
        Prefetcher(iter(()), depth=0)
