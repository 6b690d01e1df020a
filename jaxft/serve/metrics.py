"""What GET /metrics shows, with prometheus_client, in one CollectorRegistry per app (several apps can run in
one process, as the tests do):

    process_* and python_info, python_gc_*   prometheus_client's process, platform and GC collectors
    jaxft_requests_total{route, status}      HTTP requests by route template ("/predict",
                                             "/v2/models/{name}/infer", ...; "unmatched" for unknown paths)
                                             and status; 499: the client hung up before its answer
    jaxft_request_latency_seconds{route}     histogram, from the request's arrival to its answer's headers
    jaxft_requests_in_flight                 requests received whose answer has not started
    jaxft_predicted_items_total              texts (or questions) predicted
    jaxft_batch_items, jaxft_batch_requests  histograms: items and requests per dynamically collected model call
    jaxft_compilations                       compiled programs (batch size x length bucket) so far
    jaxft_warmup_compilations                compiled programs when warm-up finished; after it, no request
                                             compiles anything, so the two stay equal
    jaxft_ready                              1 once warm-up has finished (and until a drain starts), else 0
    jaxft_model_info{name, task, members}    1

RequestMetrics is the ASGI middleware that counts and times every HTTP request, counted when its answer's
headers go out (before the client can read them), so a client that has its answer sees it counted.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info,
                               PlatformCollector, ProcessCollector, generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNMATCHED = "unmatched"


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, compilations: Callable[[], float], ready: Callable[[], bool], *, name: str = "",
                 task: str = "", members: int = 1):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter("jaxft_requests", "HTTP requests by route template and status code",
                                ("route", "status"), registry=registry)
        self.latency = Histogram("jaxft_request_latency_seconds", "request arrival to answer headers, by route",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("jaxft_requests_in_flight", "requests received whose answer has not started",
                               registry=registry)
        self.items = Counter("jaxft_predicted_items", "texts (or questions) predicted", registry=registry)
        self.batch_items = Histogram("jaxft_batch_items", "items per dynamically collected model batch",
                                     buckets=BATCH_BUCKETS, registry=registry)
        self.batch_requests = Histogram("jaxft_batch_requests", "requests per dynamically collected model batch",
                                        buckets=BATCH_BUCKETS, registry=registry)
        Gauge("jaxft_compilations", "compiled programs (one per batch size x length bucket) so far",
              registry=registry).set_function(lambda: float(compilations()))
        self.warmup_compilations = Gauge("jaxft_warmup_compilations", "compiled programs when warm-up finished",
                                         registry=registry)
        Gauge("jaxft_ready", "1 once every shape is compiled and until a drain starts",
              registry=registry).set_function(lambda: float(ready()))
        Info("jaxft_model", "the model served", registry=registry).info(
            {"name": name, "task": task, "members": str(members)})

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: jaxft_requests_total, jaxft_request_latency_seconds and jaxft_requests_in_flight for
    every HTTP request, by the route template the router matched."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answered = False

        def count(status: int) -> None:
            nonlocal answered
            answered = True
            route = scope.get("route")
            label = getattr(route, "path", None) or UNMATCHED
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
            self.metrics.in_flight.dec()

        async def counting_send(message):
            if message["type"] == "http.response.start" and not answered:
                count(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not answered:  # Starlette's outer error middleware answers 500
                count(500)
            raise
        if not answered:  # the app returned without answering (a client gone before the response)
            count(499)
