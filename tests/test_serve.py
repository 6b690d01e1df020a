"""`serve` end to end: a real server subprocess on 127.0.0.1 per model (tiny NER export, tiny classification
ensemble of two exports), answers equal to `predict`'s, 4xx errors naming the problem, /health and /metrics,
and no compilation after warm-up."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import free_port

from tiny_exports import CLS_LABELS, NER_LABELS, TEXTS, make_export

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXFT_COMPILATION_CACHE": "0"}
SHAPES = ["--batch-sizes", "1,4", "--length-buckets", "16,32", "--max-length", "32"]
LIMITS = ["--max-texts", "8", "--max-body-bytes", "4096", "--max-text-chars", "400"]


def http(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(port: int, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, raw = http(port, "POST", "/predict", body)
    return status, json.loads(raw)


class Server:
    """`serve` as a subprocess on a free port; ready when constructed (wait=False: once wait_ready() returns,
    so that several servers can start at the same time)."""

    def __init__(self, models: list[Path], *extra: str, wait: bool = True):
        self.port = free_port()
        command = [sys.executable, "-m", "jaxft.main", "serve", "--port", str(self.port), *SHAPES, *LIMITS, *extra]
        for model in models:
            command += ["--model", str(model)]
        self.log = open(Path(models[0]).parent / f"serve-{self.port}.log", "w+")
        self.process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                status, raw = http(self.port, "GET", "/health")
                if status == 200:
                    self.health = json.loads(raw)
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail("server did not become ready: " + self.output())

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def metrics(self, headers=None) -> "Metrics":
        status, raw = http(self.port, "GET", "/metrics", headers=headers)
        assert status == 200, raw[:300]
        return Metrics(raw.decode())

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Metrics:
    """/metrics parsed by prometheus_client's parser: value(name, **labels) sums the samples of that name whose
    labels include the given ones (m["name"]: all of them)."""

    def __init__(self, text: str):
        from prometheus_client.parser import text_string_to_metric_families

        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def __getitem__(self, name: str) -> float:
        assert any(s.name == name for s in self.samples), f"no sample {name}"
        return self.value(name)


def predict_cli(models: list[Path], lines: list[str], tmp: Path, name: str = "input.txt") -> list[dict]:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "jaxft.main", "predict", "--input", str(path), "--max-length", "32"]
    for model in models:
        command += ["--model", str(model)]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def assert_same_predictions(served, expected):
    """Labels, spans and offsets exactly; probabilities to 1e-5 (other padded shapes than predict's)."""
    assert len(served) == len(expected)
    for a, b in zip(served, expected):
        assert a.keys() == b.keys()
        for key in a:
            if key == "entities":
                assert [(e["type"], e["start"], e["end"], e["text"]) for e in a[key]] == \
                       [(e["type"], e["start"], e["end"], e["text"]) for e in b[key]]
                assert [e["score"] for e in a[key]] == pytest.approx([e["score"] for e in b[key]], abs=1e-5)
            elif key == "probabilities":
                assert a[key].keys() == b[key].keys()
                assert list(a[key].values()) == pytest.approx(list(b[key].values()), abs=1e-5)
            elif key == "n_best":
                assert [(e["text"], e["start"]) for e in a[key]] == [(e["text"], e["start"]) for e in b[key]]
                assert [e["score"] for e in a[key]] == pytest.approx([e["score"] for e in b[key]], abs=1e-5)
            elif key == "score":
                assert a[key] == pytest.approx(b[key], abs=1e-5)
            else:
                assert a[key] == b[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert_no_dropout):
    root = tmp_path_factory.mktemp("serve-exports")
    return {
        "ner": make_export(root / "ner", tiny_bert_no_dropout, "token-classification", NER_LABELS, head_scale=1.0),
        "cls_a": make_export(root / "cls_a", tiny_bert_no_dropout, "sequence-classification", CLS_LABELS, seed=1),
        "cls_b": make_export(root / "cls_b", tiny_bert_no_dropout, "sequence-classification", CLS_LABELS, seed=2),
        "qa": make_export(root / "qa", tiny_bert_no_dropout, "question-answering", seed=3),
    }


@pytest.fixture(scope="module")
def ner_server(exports):
    server = Server([exports["ner"]])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cls_server(exports):
    server = Server([exports["cls_a"], exports["cls_b"]])
    yield server
    server.stop()


def test_health_reports_the_compiled_shapes(ner_server):
    health = ner_server.health
    assert health["status"] == "ready"
    assert health["task"] == "token-classification"
    assert health["batch_sizes"] == [1, 4] and health["length_buckets"] == [16, 32]
    assert health["compilations"] == 4  # 2 batch sizes x 2 length buckets, all compiled before ready


def test_ner_answers_equal_predict_and_nothing_compiles_after_warm_up(ner_server, exports, tmp_path):
    expected = predict_cli([exports["ner"]], TEXTS, tmp_path)
    assert sum(len(p["entities"]) for p in expected) >= 5  # the decisive random head finds entities
    status, answer = post(ner_server.port, {"texts": TEXTS})  # 7 texts, 10 windows: batches of 4, 4 and 2 -> 4
    assert status == 200
    assert_same_predictions(answer["predictions"], expected)
    # concurrent single-text requests are batched together; each answer is its own text's
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda text: post(ner_server.port, {"texts": [text]}), TEXTS * 3))
    for (status, answer), reference in zip(answers, expected * 3):
        assert status == 200
        assert_same_predictions(answer["predictions"], [reference])
    metrics = ner_server.metrics()
    assert metrics["jaxft_compilations"] == metrics["jaxft_warmup_compilations"] == 4
    assert metrics.value("jaxft_requests_total", route="/predict", status="200") >= 1 + len(TEXTS) * 3
    assert metrics.value("jaxft_request_latency_seconds_count", route="/predict") >= 1 + len(TEXTS) * 3
    assert metrics["jaxft_batch_items_sum"] >= len(TEXTS) * 4
    assert metrics.value("jaxft_request_latency_seconds_bucket", route="/predict", le="+Inf") == \
        metrics.value("jaxft_request_latency_seconds_count", route="/predict")


@pytest.mark.parametrize("payload, status, code, words", [
    (b'{"texts": ["unclosed', 400, "malformed_json", "not valid JSON"),
    (b"[1, 2]", 400, "not_an_object", "JSON object"),
    ({"text": ["a"]}, 422, "unknown_field", "'text'"),
    ({}, 422, "missing_texts", '"texts"'),
    ({"texts": "one string"}, 422, "texts_not_a_list", "must be a list"),
    ({"texts": []}, 422, "empty_texts", "empty"),
    ({"texts": ["ok", 3]}, 422, "wrong_type", "texts[1] must be a string"),
    ({"texts": [["a", "b"]]}, 422, "wrong_type", "texts[0]"),
    ({"texts": ["ok", "   "]}, 422, "blank_text", "texts[1] is blank"),
    ({"texts": ["x" * 401]}, 422, "text_too_long", "401 characters; at most 400"),
    ({"texts": ["a"] * 9}, 413, "too_many_texts", "9 items; at most 8"),
    ({"texts": ["word " * 900]}, 413, "body_too_large", "at most 4096"),
])
def test_bad_requests_get_clear_errors(ner_server, payload, status, code, words):
    got_status, answer = post(ner_server.port, payload)
    assert got_status == status
    assert answer["error"]["code"] == code
    assert words in answer["error"]["message"]


def test_error_counts_and_methods(ner_server):
    before = ner_server.metrics()
    post(ner_server.port, b"{")
    post(ner_server.port, {"texts": []})
    assert http(ner_server.port, "GET", "/predict")[0] == 405
    after = ner_server.metrics()
    for status in ("400", "422", "405"):
        assert after.value("jaxft_requests_total", route="/predict", status=status) == \
            before.value("jaxft_requests_total", route="/predict", status=status) + 1


def test_classification_ensemble_answers_equal_predict(cls_server, exports, tmp_path):
    assert cls_server.health["members"] == 2
    expected = predict_cli([exports["cls_a"], exports["cls_b"]], TEXTS, tmp_path)
    status, answer = post(cls_server.port, {"texts": TEXTS})
    assert status == 200
    assert_same_predictions(answer["predictions"], expected)
    assert {p["label"] for p in answer["predictions"]} <= set(CLS_LABELS)
    status, answer = post(cls_server.port, {"texts": [["a", "b"]]})
    assert status == 422 and "not pairs" in answer["error"]["message"]
    metrics = cls_server.metrics()
    assert metrics["jaxft_compilations"] == metrics["jaxft_warmup_compilations"] == 4


def test_serve_loads_only_safetensors(exports, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in exports["ner"].iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    done = subprocess.run([sys.executable, "-m", "jaxft.main", "serve", "--model", str(folder), "--port",
                           str(free_port())], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "only safetensors" in done.stderr and str(folder) in done.stderr


QUESTIONS = [
    {"id": "q0", "question": "Where did John fly?", "context": "John Smith flew from Paris to Berlin on Monday."},
    {"id": "q1", "question": "Who met?", "context": " ".join(["Maria and Pedro met at the Madrid museum."] * 5)},
]


def test_question_answering_server_answers_equal_predict(exports, tmp_path):
    expected = predict_cli([exports["qa"]], [json.dumps(q) for q in QUESTIONS], tmp_path, "questions.jsonl")
    server = Server([exports["qa"]])
    try:
        status, answer = post(server.port, {"texts": QUESTIONS})
        assert status == 200
        assert_same_predictions(answer["predictions"], expected)
        assert answer["predictions"][1]["answer"] in QUESTIONS[1]["context"]
        status, answer = post(server.port, {"texts": ["a plain string"]})
        assert status == 422 and '{"question": ..., "context": ...}' in answer["error"]["message"]
        status, answer = post(server.port, {"texts": [{"question": "q?"}]})
        assert status == 422 and "texts[0].context must be a string" in answer["error"]["message"]
        metrics = server.metrics()
        assert metrics["jaxft_compilations"] == metrics["jaxft_warmup_compilations"] == 4
    finally:
        server.stop()


def test_pair_models_take_text_pairs():
    from jaxft.serve.inputs import Limits, RequestError, validate

    assert validate({"texts": [["a", "b"]]}, "pair", Limits()) == [("a", "b")]
    with pytest.raises(RequestError, match=r"texts\[0\] must be a \[text, pair\] list"):
        validate({"texts": ["a"]}, "pair", Limits())


# ---------------------------------------------------------------------------------------------- in process

class FakePredictor:
    """Stands in for a model: records the item lists of its calls."""

    task, item_kind, members, batch_sizes, buckets = "token-classification", "text", 1, (1, 8), [16]

    def __init__(self):
        self.calls, self.compilations = [], 0

    def warm_up(self):
        self.compilations = 2
        return 2

    def predict_items(self, items):
        self.calls.append(list(items))
        return [{"text": item, "n": len(item)} for item in items]


def asgi(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One request straight through the ASGI app (no server, no lifespan)."""
    import asyncio

    async def call():
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return status, payload

    status, payload = asyncio.run(call())
    return status, (json.loads(payload) if payload.startswith(b"{") else {"text": payload.decode()})


def test_health_and_predict_wait_for_warm_up():
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits

    state = ServeState(FakePredictor(), limits=Limits())
    app = build_app(state, warm_up=False)
    status, body = asgi(app, "GET", "/health")
    assert status == 503 and body["status"] == "warming_up"
    status, body = asgi(app, "POST", "/predict", b'{"texts": ["a"]}')
    assert status == 503 and body["error"]["code"] == "warming_up"
    state.warm_up()
    status, body = asgi(app, "GET", "/health")
    assert status == 200 and body["status"] == "ready" and body["compilations"] == 2
    status, body = asgi(app, "GET", "/metrics")
    metrics = Metrics(body["text"])
    assert metrics.value("jaxft_requests_total", route="/predict", status="503") == 1
    assert metrics.value("jaxft_requests_total", route="/health", status="503") == 1
    assert metrics["jaxft_warmup_compilations"] == 2 and metrics["jaxft_ready"] == 1


def test_batcher_joins_waiting_requests_up_to_max_items():
    import asyncio

    from jaxft.serve.batcher import DynamicBatcher

    async def scenario(max_items, requests):
        predictor = FakePredictor()
        seen = []
        batcher = DynamicBatcher(predictor.predict_items, max_items=max_items, max_wait_ms=200,
                                 on_batch=lambda items, reqs: seen.append((items, reqs)))
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return answers, predictor.calls, seen

    # all queued in one event-loop turn: one call, answers split back in order
    answers, calls, seen = asyncio.run(scenario(8, [["a"], ["bb", "ccc"], ["dddd"]]))
    assert calls == [["a", "bb", "ccc", "dddd"]] and seen == [(4, 3)]
    assert answers == [[{"text": "a", "n": 1}], [{"text": "bb", "n": 2}, {"text": "ccc", "n": 3}],
                       [{"text": "dddd", "n": 4}]]
    # a request that would overflow max_items waits for the next call; none is split
    answers, calls, _ = asyncio.run(scenario(3, [["a", "b"], ["c", "d"], ["e"], ["f", "g", "h", "i"]]))
    assert calls == [["a", "b"], ["c", "d", "e"], ["f", "g", "h", "i"]]
    assert [len(a) for a in answers] == [2, 2, 1, 4]
