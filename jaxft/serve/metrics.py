"""Counters, gauges and histograms rendered in Prometheus' text exposition format (version 0.0.4)."""

from __future__ import annotations

import bisect
import threading
from typing import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(pairs: tuple) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class Counter:
    def __init__(self, name: str, help: str, label_names: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(label_names)
        self._values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple((name, labels[name]) for name in self.label_names)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        return self._values.get(tuple((name, labels[name]) for name in self.label_names), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            lines += [f"{self.name}{_labels(key)} {_number(v)}" for key, v in sorted(self._values.items())]
        return lines


class Gauge:
    """A value read from a function when rendered."""

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self.read())}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help = name, help
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value
            self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            running = 0
            for bound, count in zip((*self.bounds, float("inf")), self.counts):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
            lines += [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]
        return lines


class ServeMetrics:
    """Everything /metrics shows."""

    def __init__(self, compilations: Callable[[], float], ready: Callable[[], bool]):
        self.warmup_compilations = 0
        self.requests = Counter("jaxft_requests_total", "HTTP requests to /predict by status code", ("status",))
        self.items = Counter("jaxft_predicted_items_total", "texts (or questions) predicted")
        self.latency = Histogram("jaxft_request_latency_seconds", "/predict latency, body read to answer",
                                 LATENCY_BUCKETS)
        self.batch_items = Histogram("jaxft_batch_items", "items per dynamically collected model batch",
                                     BATCH_BUCKETS)
        self.batch_requests = Histogram("jaxft_batch_requests", "requests per dynamically collected model batch",
                                        BATCH_BUCKETS)
        self.gauges = [
            Gauge("jaxft_compilations", "compiled programs (one per batch size x length bucket) so far",
                  compilations),
            Gauge("jaxft_warmup_compilations", "compiled programs when warm-up finished",
                  lambda: self.warmup_compilations),
            Gauge("jaxft_ready", "1 once every shape is compiled", lambda: float(ready())),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.items, self.latency, self.batch_items, self.batch_requests, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
