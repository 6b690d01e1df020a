"""The HTTP app and the `serve` command.

    python -m jaxft.main serve --model runs/ner/export --port 8080 [--host 127.0.0.1] [--model OTHER ...]
        [--name NAME] [--api-keys FILE [--public-metrics]] [--redact TYPES]
        [--ssl-certfile CERT --ssl-keyfile KEY] [--graceful-timeout-s 30]

jaxft's routes
POST /predict  {"texts": [...]} -> {"predictions": [...]}, in input order, the objects `predict` prints:
               NER {"text", "entities": [{type, text, start, end, score}]}; classification {"text", "label",
               "score", "probabilities"} (multi-label "labels", regression "value"); QA {"id", "question",
               "answer", "start", "end", "score", "n_best"}; fill-mask {"text", "predictions": [[{score, token,
               token_str, sequence}]]}. The same route takes HF / TEI's {"inputs": ...} body (serve/hf.py).
POST /redact   NER with --redact TYPES: {"texts": [...]} -> the texts with those entities masked (serve/redact.py)
GET  /health   200 {"status": "ready", ...} once every shape is compiled; 503 {"status": "warming_up"} before,
               503 {"status": "draining"} after SIGTERM, 500 {"status": "failed"} when warm-up failed
GET  /metrics  Prometheus text (serve/metrics.py)
HF Inference Endpoints / text-embeddings-inference: POST /, POST /predict {"inputs"}, POST /tokenize, GET /info
(serve/hf.py). Open Inference Protocol v2 (KServe, Triton): /v2/... (serve/v2.py).

Every inference route feeds the one dynamic batcher (serve/batcher.py). At start-up the predictor compiles
one program per (batch size, length bucket) before /health and /v2/health/ready turn ready; inference routes
answer 503 until then. After warm-up no request compiles anything: `jaxft_compilations` stays equal to
`jaxft_warmup_compilations` (tests/test_serve.py checks it).

Bodies are read up to --max-body-bytes and within --body-timeout-s; a 413 (declared or streamed past the
limit), a 408, a 401 or a 503 closes the connection rather than reading the rest. A client that hangs up
mid-body is counted as status 499. Error bodies: {"error": {"code", "message"}} on jaxft's routes (/predict
with a {"texts"} body, /redact), {"error": message, "error_type": code} on the others.

--api-keys FILE: every route but /health and the /v2/health probes (and /metrics with --public-metrics) needs
`Authorization: Bearer KEY` (serve/auth.py). --ssl-certfile / --ssl-keyfile [/ --ssl-keyfile-password] are
uvicorn's TLS options, passed through: the server then speaks only HTTPS.

The server keeps no state between requests, so replicas behind a load balancer are interchangeable. On
SIGTERM (or SIGINT) it drains: /health and /v2/health/ready turn 503, the listening socket closes, requests
already received are answered (the batcher runs what it holds), then the process exits 0; requests still
running after --graceful-timeout-s are cancelled. tests/test_serve_drain.py sends SIGTERM with requests in
flight. deploy/kubernetes/ has a Deployment, Service and HorizontalPodAutoscaler for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import prometheus_client
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jaxft import __version__, runtime
from jaxft.config import TOKEN_CLASSIFICATION
from jaxft.errors import USER_ERRORS
from jaxft.predict import load_predictor
from jaxft.serve import hf, v2
from jaxft.serve.auth import ApiKeyError, ApiKeys
from jaxft.serve.batcher import DynamicBatcher
from jaxft.serve.inputs import Limits, RequestError, parse_json, validate
from jaxft.serve.metrics import RequestMetrics, ServeMetrics
from jaxft.serve.redact import parse_types, redact

log = logging.getLogger("jaxft.serve")
DEFAULT_BATCH_SIZES = (1, 8, 32)
OPEN_ROUTES = ("/health", "/v2/health/live", "/v2/health/ready")  # readiness / liveness probes: no key needed


class ServeState:
    """The predictor, its batcher and metrics, the server's settings, and whether warm-up has finished or a
    drain has started."""

    def __init__(self, predictor, *, limits: Limits, max_wait_ms: float = 5.0, max_items: int | None = None,
                 name: str = "model", dtype: str = "float32", api_keys: ApiKeys | None = None,
                 public_metrics: bool = False, redact_types: tuple[str, ...] = (), drain_timeout_s: float = 30.0):
        self.predictor = predictor
        self.limits = limits
        self.name, self.dtype = name, dtype
        self.api_keys, self.public_metrics = api_keys, public_metrics
        self.redact_types = tuple(redact_types)
        self.drain_timeout_s = drain_timeout_s
        self.ready = threading.Event()
        self.draining = threading.Event()
        self.warmup_error: str | None = None
        self.warmup_seconds = 0.0
        self.metrics = ServeMetrics(lambda: predictor.compilations, self.is_ready, name=name, task=predictor.task,
                                    members=predictor.members)
        self.batcher = DynamicBatcher(predictor.predict_items, max_items=max_items or max(predictor.batch_sizes),
                                      max_wait_ms=max_wait_ms, on_batch=self._on_batch)

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.draining.is_set()

    def _on_batch(self, items: int, requests: int) -> None:
        self.metrics.batch_items.observe(items)
        self.metrics.batch_requests.observe(requests)

    def warm_up(self) -> None:
        start = time.perf_counter()
        try:
            self.metrics.warmup_compilations.set(self.predictor.warm_up())
        except Exception as err:  # noqa: BLE001 - reported by /health and the log
            self.warmup_error = f"{type(err).__name__}: {err}"
            log.exception("warm-up failed")
            return
        self.warmup_seconds = time.perf_counter() - start
        self.ready.set()
        print(f"jaxft serve: ready; {self.predictor.compilations} shapes compiled in {self.warmup_seconds:.1f} s",
              file=sys.stderr, flush=True)


@dataclasses.dataclass
class Job:
    """A parsed inference request: the items for the batcher and how to answer their results."""
    items: list
    answer: Callable[[list], Response]


def _json(content, status: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)


def error_response(err: RequestError, *, flat: bool, close: bool = False, headers: dict | None = None) -> Response:
    # close: the body was not read to its end (413, 408, 401, 503), so the connection must not carry another
    # request; uvicorn closes it after this answer instead of reading and dropping the rest of the body
    headers = {**(headers or {}), **({"connection": "close"} if close else {})}
    return _json(err.flat_body() if flat else err.body(), err.status, headers or None)


def build_app(state: ServeState, *, warm_up: bool = True) -> Starlette:
    predictor, limits = state.predictor, state.limits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        warming = asyncio.get_running_loop().run_in_executor(None, state.warm_up) if warm_up else None
        try:
            yield
        finally:
            await state.batcher.stop(drain_timeout_s=state.drain_timeout_s)
            if warming is not None and not warming.done():
                warming.cancel()

    async def read_body(request) -> bytes:
        """The body, at most max_body_bytes of it, within body_timeout_s: a declared Content-Length over the
        limit is refused before a byte is read, a chunked body as soon as it passes the limit."""
        limit = limits.max_body_bytes
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

    async def received(request, flat: bool) -> bytes | Response:
        """The request's body, or the answer that refuses it (not ready, too large, too slow, hung up)."""
        if state.draining.is_set():
            return error_response(RequestError(503, "draining", "the server is shutting down; retry on another "
                                                                "replica"), flat=flat, close=True)
        if not state.ready.is_set():
            return error_response(RequestError(503, "warming_up", "the model is still compiling; retry when /health "
                                                                  "says ready"), flat=flat, close=True)
        timeout = limits.body_timeout_s
        try:
            return await asyncio.wait_for(read_body(request), timeout)
        except RequestError as err:
            return error_response(err, flat=flat, close=True)
        except asyncio.TimeoutError:  # a client that stalls mid-body does not hold a connection forever
            return error_response(RequestError(408, "body_timeout", f"the body did not arrive within {timeout:g} s"),
                                  flat=flat, close=True)
        except ClientDisconnect:  # the client closed the connection mid-body: nobody to answer (counted as 499)
            return Response(status_code=499)

    async def run_job(parse: Callable[[bytes, object], Job], request, flat: bool) -> Response:
        raw = await received(request, flat)
        if isinstance(raw, Response):
            return raw
        try:
            job = parse(raw, request.headers)
        except RequestError as err:
            return error_response(err, flat=flat if err.flat is None else err.flat)
        try:
            results = await state.batcher.submit(job.items)
        except Exception as err:  # noqa: BLE001
            log.exception("prediction failed")
            return error_response(RequestError(500, "prediction_failed", f"{type(err).__name__}: {err}"), flat=flat)
        state.metrics.items.inc(len(job.items))
        return job.answer(results)

    # ------------------------------------------------------------------------------------ jaxft's routes

    def parse_predict(raw: bytes, headers) -> Job:
        body = parse_json(raw, '{"texts": [...]} (or {"inputs": ...})')
        if "inputs" in body:  # HF / TEI's body: answered, errors too, the TEI way
            return parse_hf(body, "/predict")
        items = validate(body, predictor.item_kind, limits)
        return Job(items, lambda results: _json({"predictions": results}))

    async def predict(request):
        return await run_job(parse_predict, request, flat=False)

    def parse_redact(raw: bytes, headers) -> Job:
        items = validate(parse_json(raw), "text", limits)
        return Job(items, lambda results: _json({"predictions": [redact(r, state.redact_types) for r in results]}))

    async def redact_route(request):
        if not state.redact_types:
            return error_response(RequestError(404, "redact_off", "start the server with --redact TYPES (NER "
                                                                  "models) to mask entities"), flat=False)
        return await run_job(parse_redact, request, flat=False)

    async def health(request):
        p = predictor
        info = {"task": p.task, "name": state.name, "members": p.members, "batch_sizes": list(p.batch_sizes),
                "length_buckets": list(p.buckets), "compilations": p.compilations}
        if state.warmup_error:
            return _json({"status": "failed", "error": state.warmup_error, **info}, 500)
        if state.draining.is_set():
            return _json({"status": "draining", **info}, 503)
        if state.ready.is_set():
            return _json({"status": "ready", "warmup_seconds": round(state.warmup_seconds, 3), **info})
        return _json({"status": "warming_up", **info}, 503)

    async def metrics(request):
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    # ------------------------------------------------------------------------------------ HF / TEI

    def parse_hf(body: dict, route: str) -> Job:
        try:
            parsed = hf.parse_request(body, predictor, limits)
        except RequestError as err:
            err.flat = True
            raise
        return Job(parsed.items, lambda results: _json(hf.answer(parsed, results, predictor, route=route)))

    async def hf_root(request):
        return await run_job(lambda raw, headers: parse_hf(parse_json(raw, '{"inputs": ..., "parameters": {...}}'),
                                                           "/"), request, flat=True)

    async def tokenize(request):
        raw = await received(request, flat=True)
        if isinstance(raw, Response):
            return raw
        try:
            texts, add_special = hf.parse_tokenize(parse_json(raw, '{"inputs": ...}'), limits)
        except RequestError as err:
            return error_response(err, flat=True)
        return _json(await state.batcher.call(hf.tokenize, predictor.tokenizer, texts, add_special))

    async def info(request):
        return _json(hf.model_info(predictor, name=state.name, dtype=state.dtype, limits=limits, version=__version__,
                                   redact=state.redact_types))

    # ------------------------------------------------------------------------------------ Open Inference Protocol

    def unknown_model(request) -> Response | None:
        name, version = request.path_params["name"], request.path_params.get("version", v2.VERSION)
        if name != state.name or version != v2.VERSION:
            return error_response(RequestError(404, "unknown_model", f"no model {name!r} version {version!r}; this "
                                                                     f"server has {state.name!r} version "
                                                                     f"{v2.VERSION!r}"), flat=True)
        return None

    async def v2_server(request):
        return _json(v2.server_metadata(__version__))

    async def v2_live(request):
        if state.warmup_error:
            return _json({"live": False, "error": state.warmup_error}, 500)
        return _json({"live": True})

    async def v2_ready(request):
        return _json({"ready": state.is_ready()}, 200 if state.is_ready() else 503)

    async def v2_model(request):
        return unknown_model(request) or _json(v2.model_metadata(state.name, predictor, state.redact_types))

    async def v2_model_ready(request):
        return unknown_model(request) or await v2_ready(request)

    def parse_infer(raw: bytes, headers) -> Job:
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise RequestError(415, "unsupported_encoding", f"Content-Encoding {headers['content-encoding']!r} is "
                                                            "not accepted; send the body uncompressed")
        parsed = v2.parse_infer(raw, headers.get("inference-header-content-length"), predictor, limits,
                                state.redact_types)

        def answer(results):
            body, answer_headers = v2.infer_response(parsed, results, predictor, state.name, state.redact_types)
            return Response(body, media_type=answer_headers.pop("content-type"), headers=answer_headers)

        return Job(parsed.items, answer)

    async def v2_infer(request):
        return unknown_model(request) or await run_job(parse_infer, request, flat=True)

    # ------------------------------------------------------------------------------------ routes

    def guarded(handler, path: str, flat: bool):
        """handler behind the API keys, unless the route is open (probes; /metrics with --public-metrics)."""
        keys = state.api_keys
        if keys is None or path in OPEN_ROUTES or (path == "/metrics" and state.public_metrics):
            return handler

        async def check(request):
            header = request.headers.get("authorization")
            if not keys.allows(header):
                message = ("the API key is not accepted" if header else
                           "no API key; send the header `Authorization: Bearer KEY`")
                return error_response(RequestError(401, "unauthorized", message), flat=flat, close=True,
                                      headers={"www-authenticate": "Bearer"})
            return await handler(request)

        return check

    table = [  # path, handler, methods, jaxft's error body (not the flat one)
        ("/predict", predict, ["POST"], True), ("/redact", redact_route, ["POST"], True),
        ("/health", health, ["GET"], True), ("/metrics", metrics, ["GET"], False),
        ("/", hf_root, ["POST"], False), ("/tokenize", tokenize, ["POST"], False), ("/info", info, ["GET"], False),
        ("/v2", v2_server, ["GET"], False), ("/v2/health/live", v2_live, ["GET"], False),
        ("/v2/health/ready", v2_ready, ["GET"], False),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        table += [(prefix, v2_model, ["GET"], False), (prefix + "/ready", v2_model_ready, ["GET"], False),
                  (prefix + "/infer", v2_infer, ["POST"], False)]
    routes = [Route(path, guarded(handler, path, flat=not nested), methods=methods)
              for path, handler, methods, nested in table]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(RequestMetrics, metrics=state.metrics)])


# ---------------------------------------------------------------------------------------------- the command

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main serve",
        description="Serve exported models over HTTP: jaxft's POST /predict {\"texts\": [...]}, HF Inference "
                    "Endpoints / text-embeddings-inference (POST /, /predict, /tokenize, GET /info), the Open "
                    "Inference Protocol v2 (/v2/...), GET /health, GET /metrics. Requests are batched dynamically "
                    "into fixed shapes compiled at start-up.")
    parser.add_argument("--model", required=True, action="append",
                        help="exported folder; repeat for an ensemble (probabilities averaged)")
    parser.add_argument("--name", default=None,
                        help="the model's name in /v2/models/NAME and /info (default: the first folder's name)")
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
    parser.add_argument("--api-keys", default=None, metavar="FILE",
                        help="one key a line: every route but the health probes needs `Authorization: Bearer KEY`")
    parser.add_argument("--public-metrics", action="store_true",
                        help="with --api-keys: serve /metrics without a key (for an in-cluster Prometheus)")
    parser.add_argument("--redact", default=None, metavar="TYPES",
                        help="NER models: entity types (comma-separated, or 'all') that POST /redact masks")
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM): serve HTTPS (uvicorn's option)")
    parser.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    parser.add_argument("--ssl-keyfile-password", default=None, help="the private key's password, if it has one")
    parser.add_argument("--graceful-timeout-s", type=int, default=30,
                        help="on SIGTERM, how long requests in flight may take before they are cancelled")
    return parser


def _check_files(args) -> str | None:
    """The first problem with the command's files, as a one-line error, or None."""
    for folder in args.model:
        if not os.path.isdir(folder):
            return f"--model: folder not found: {folder}"
    if args.ssl_keyfile and not args.ssl_certfile:
        return "--ssl-keyfile needs --ssl-certfile"
    for option, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path and not os.path.isfile(path):
            return f"{option}: file not found: {path}"
    if args.public_metrics and not args.api_keys:
        return "--public-metrics only applies with --api-keys (without keys every route is open)"
    return None


class DrainingServer(uvicorn.Server):
    """uvicorn's server, marking the state as draining when SIGTERM / SIGINT arrives (so the readiness routes
    answer 503 while in-flight requests finish)."""

    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        if not self.state.draining.is_set():
            self.state.draining.set()
            print(f"jaxft serve: {signal.Signals(sig).name}: draining; finishing the requests in flight",
                  file=sys.stderr, flush=True)
        super().handle_exit(sig, frame)


def _run(server: DrainingServer) -> None:
    """server.run(), with SIGTERM / SIGINT handlers around it: uvicorn re-raises the signal it shut down for
    once it has drained, and the default action would then end the process by the signal (exit status -15)
    rather than with 0; a signal that arrives before uvicorn has installed its handlers starts the drain too."""
    def forward(sig, frame):
        if not server.should_exit:
            server.handle_exit(sig, frame)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    problem = _check_files(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        api_keys = ApiKeys.read(args.api_keys) if args.api_keys else None
    except ApiKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    prometheus_client.disable_created_metrics()  # the process is the server's: no *_created series in /metrics
    runtime.enable_compilation_cache()
    try:
        predictor = load_predictor(args.model, max_length=args.max_length, batch_sizes=args.batch_sizes,
                                   dtype=args.dtype, safetensors_only=True,
                                   length_buckets=args.length_buckets or default_length_buckets)
        redact_types = _redact_types(args.redact, predictor)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    limits = Limits(args.max_body_bytes, args.max_texts, args.max_text_chars, args.body_timeout_s)
    name = args.name or Path(args.model[0]).resolve().name
    state = ServeState(predictor, limits=limits, max_wait_ms=args.max_wait_ms, name=name, dtype=args.dtype,
                       api_keys=api_keys, public_metrics=args.public_metrics, redact_types=redact_types,
                       drain_timeout_s=args.graceful_timeout_s)
    scheme = "https" if args.ssl_certfile else "http"
    members = f"{len(args.model)} member{'s' if len(args.model) > 1 else ''}"
    keys = f"; {len(api_keys)} API key(s)" if api_keys else ""
    print(f"jaxft serve: {predictor.task} model {name!r} ({members}) on {scheme}://{args.host}:{args.port}; "
          f"compiling {len(predictor.shapes)} shapes (batch {list(predictor.batch_sizes)} x length "
          f"{predictor.buckets}){keys}", file=sys.stderr, flush=True)
    config = uvicorn.Config(build_app(state), host=args.host, port=args.port, log_level="warning", access_log=False,
                            ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                            ssl_keyfile_password=args.ssl_keyfile_password,
                            timeout_graceful_shutdown=args.graceful_timeout_s)
    _run(DrainingServer(config, state))
    print("jaxft serve: stopped", file=sys.stderr, flush=True)
    return 0


def _redact_types(spec: str | None, predictor) -> tuple[str, ...]:
    if spec is None:
        return ()
    if predictor.task != TOKEN_CLASSIFICATION:
        raise ValueError(f"--redact masks named entities: it needs an NER model, not a {predictor.task} one")
    return parse_types(spec, predictor.labels)
