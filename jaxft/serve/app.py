"""The HTTP app and the `serve` command.

    python -m jaxft.main serve --model runs/ner/export --port 8080 [--host 127.0.0.1] [--model OTHER ...]

POST /predict  {"texts": [...]} -> {"predictions": [...]}, in input order, the objects `predict` prints
GET  /health   200 {"status": "ready", ...} once every shape is compiled; 503 {"status": "warming_up"} before
GET  /metrics  Prometheus text: requests by status, latency and batch-size histograms, compile counts

At start-up the predictor compiles one program per (batch size, length bucket) before /health turns
ready; /predict answers 503 until then. After warm-up no request compiles anything: `jaxft_compilations`
stays equal to `jaxft_warmup_compilations` (tests/test_serve.py checks it).

Bodies are read up to --max-body-bytes and within --body-timeout-s; a 413 (declared or streamed past the
limit), a 408 or a 503 closes the connection rather than reading the rest. A client that hangs up mid-body is
counted as status 499. tests/test_serve_abuse.py runs a mixed load of bad requests against all of this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from jaxft import runtime
from jaxft.errors import USER_ERRORS
from jaxft.predict import load_predictor
from jaxft.serve.batcher import DynamicBatcher
from jaxft.serve.inputs import Limits, RequestError, parse_json, validate
from jaxft.serve.metrics import ServeMetrics

log = logging.getLogger("jaxft.serve")
DEFAULT_BATCH_SIZES = (1, 8, 32)


class ServeState:
    """The predictor, its batcher and metrics, and whether warm-up has finished."""

    def __init__(self, predictor, *, limits: Limits, max_wait_ms: float = 5.0, max_items: int | None = None):
        self.predictor = predictor
        self.limits = limits
        self.ready = threading.Event()
        self.warmup_error: str | None = None
        self.warmup_seconds = 0.0
        self.metrics = ServeMetrics(lambda: predictor.compilations, self.ready.is_set)
        self.batcher = DynamicBatcher(predictor.predict_items, max_items=max_items or max(predictor.batch_sizes),
                                      max_wait_ms=max_wait_ms, on_batch=self._on_batch)

    def _on_batch(self, items: int, requests: int) -> None:
        self.metrics.batch_items.observe(items)
        self.metrics.batch_requests.observe(requests)

    def warm_up(self) -> None:
        start = time.perf_counter()
        try:
            self.metrics.warmup_compilations = self.predictor.warm_up()
        except Exception as err:  # noqa: BLE001 - reported by /health and the log
            self.warmup_error = f"{type(err).__name__}: {err}"
            log.exception("warm-up failed")
            return
        self.warmup_seconds = time.perf_counter() - start
        self.ready.set()
        print(f"jaxft serve: ready; {self.metrics.warmup_compilations} shapes compiled in "
              f"{self.warmup_seconds:.1f} s", file=sys.stderr, flush=True)


def build_app(state: ServeState, *, warm_up: bool = True):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        warming = asyncio.get_running_loop().run_in_executor(None, state.warm_up) if warm_up else None
        try:
            yield
        finally:
            await state.batcher.stop()
            if warming is not None and not warming.done():
                warming.cancel()

    def error(err: RequestError, *, close: bool = False) -> JSONResponse:
        state.metrics.requests.inc(status=str(err.status))
        # close: the body was not read to its end (413, 408), so the connection must not carry another request;
        # uvicorn closes it after this answer instead of reading and dropping the rest of the body
        headers = {"connection": "close"} if close else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    async def read_body(request) -> bytes:
        """The body, at most max_body_bytes of it: a declared Content-Length over the limit is refused before a
        byte is read, a chunked body as soon as it passes the limit."""
        limit = state.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, "body_too_large", f"body is {declared} bytes; at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request):
        start = time.perf_counter()
        if not state.ready.is_set():
            return error(RequestError(503, "warming_up", "the model is still compiling; retry when /health "
                                                         "says ready"), close=True)
        timeout = state.limits.body_timeout_s
        try:
            raw = await asyncio.wait_for(read_body(request), timeout)
        except RequestError as err:
            return error(err, close=True)
        except asyncio.TimeoutError:  # a client that stalls mid-body does not hold a connection forever
            return error(RequestError(408, "body_timeout", f"the body did not arrive within {timeout:g} s"),
                         close=True)
        except ClientDisconnect:  # the client closed the connection mid-body: nobody to answer
            state.metrics.requests.inc(status="499")
            return Response(status_code=499)
        try:
            body = parse_json(raw)
            items = validate(body, state.predictor.item_kind, state.limits)
        except RequestError as err:
            return error(err)
        try:
            predictions = await state.batcher.submit(items)
        except Exception as err:  # noqa: BLE001
            log.exception("prediction failed")
            return error(RequestError(500, "prediction_failed", f"{type(err).__name__}: {err}"))
        state.metrics.requests.inc(status="200")
        state.metrics.items.inc(len(items))
        state.metrics.latency.observe(time.perf_counter() - start)
        return JSONResponse({"predictions": predictions})

    async def health(request):
        p = state.predictor
        info = {"task": p.task, "members": p.members, "batch_sizes": list(p.batch_sizes),
                "length_buckets": list(p.buckets), "compilations": p.compilations}
        if state.ready.is_set():
            return JSONResponse({"status": "ready", "warmup_seconds": round(state.warmup_seconds, 3), **info})
        if state.warmup_error:
            return JSONResponse({"status": "failed", "error": state.warmup_error, **info}, status_code=500)
        return JSONResponse({"status": "warming_up", **info}, status_code=503)

    async def metrics(request):
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health),
                             Route("/metrics", metrics)], lifespan=lifespan)


def default_length_buckets(max_length: int) -> list[int]:
    """32, 64, 128, ... below max_length, and max_length."""
    buckets, length = [], 32
    while length < max_length:
        buckets.append(length)
        length *= 2
    return buckets + [max_length]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def serve_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main serve",
        description="Serve exported models over HTTP: POST /predict {\"texts\": [...]}, GET /health, GET /metrics. "
                    "Requests are batched dynamically into fixed shapes compiled at start-up.")
    parser.add_argument("--model", required=True, action="append",
                        help="exported folder; repeat for an ensemble (probabilities averaged)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-length", type=int, default=None,
                        help="default: the export's training max_length (jaxft_task.json), else the task's default")
    parser.add_argument("--batch-sizes", type=_int_list, default=list(DEFAULT_BATCH_SIZES),
                        help="padded batch sizes compiled at start-up (default 1,8,32)")
    parser.add_argument("--length-buckets", type=_int_list, default=None,
                        help="padded lengths compiled at start-up (default 32,64,... up to max length)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    parser.add_argument("--max-texts", type=int, default=Limits.max_texts, help="items per request at most")
    parser.add_argument("--max-text-chars", type=int, default=Limits.max_text_chars)
    parser.add_argument("--body-timeout-s", type=float, default=Limits.body_timeout_s,
                        help="a request body must arrive within this many seconds of its headers (else 408)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)

    for folder in args.model:
        if not os.path.isdir(folder):
            print(f"error: --model: folder not found: {folder}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    runtime.enable_compilation_cache()
    try:
        predictor = load_predictor(args.model, max_length=args.max_length, batch_sizes=args.batch_sizes,
                                   dtype=args.dtype, safetensors_only=True,
                                   length_buckets=args.length_buckets or default_length_buckets)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    limits = Limits(args.max_body_bytes, args.max_texts, args.max_text_chars, args.body_timeout_s)
    state = ServeState(predictor, limits=limits, max_wait_ms=args.max_wait_ms)
    print(f"jaxft serve: {predictor.task} ({len(args.model)} model{'s' if len(args.model) > 1 else ''}) on "
          f"http://{args.host}:{args.port}; compiling {len(predictor.shapes)} shapes "
          f"(batch {list(predictor.batch_sizes)} x length {predictor.buckets})", file=sys.stderr, flush=True)
    uvicorn.run(build_app(state), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
