"""The standard routes beside jaxft's own, end to end: real server subprocesses on 127.0.0.1 (tiny NER,
classification and QA exports of tiny_exports.py), called with the clients people already have:
`huggingface_hub.InferenceClient(base_url=...)` (token and text classification, QA) and
`tritonclient.http.InferenceServerClient` (Open Inference Protocol v2), answers equal to `predict`'s; TEI's
/predict, /tokenize and /info; access control with API keys (401 without or with a wrong key, 200 with
either key, probes open, no key in the log); /redact; /metrics parsed by prometheus_client's parser; every
route's malformed requests answered 4xx with a reason.
"""

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from test_serve import REPO, FakePredictor, Metrics, Server, asgi, assert_same_predictions
from tiny_exports import CLS_LABELS, NER_LABELS, TEXTS, make_export

KEYS = ["k-0123456789abcdef0123456789", "k-second-key-fedcba9876543210"]
WRONG_KEY = "k-not-a-key-000000000000000000"
QUESTIONS = [
    {"question": "Where did John fly?", "context": "John Smith flew from Paris to Berlin on Monday."},
    {"question": "Who met?", "context": " ".join(["Maria and Pedro met at the Madrid museum."] * 5)},
]


def call(port: int, method: str, path: str, body=None, key: str | None = None, headers=None):
    """(status, headers, parsed JSON body or raw bytes)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, answer_headers, raw = err.code, err.headers, err.read()
    try:
        return status, answer_headers, json.loads(raw)
    except ValueError:
        return status, answer_headers, raw


def reference(export, items: list) -> list[dict]:
    """What the predict command prints for these inputs (its loop, jaxft.predict.run_predict, in process)."""
    from jaxft.predict import run_predict

    if isinstance(items[0], dict):  # QA: a .jsonl of {"id", "question", "context"}
        path = export.parent / f"{export.name}-inputs.jsonl"
        path.write_text("\n".join(json.dumps({"id": str(i), **q}) for i, q in enumerate(items)) + "\n")
    else:
        path = export.parent / f"{export.name}-inputs.txt"
        path.write_text("\n".join(items) + "\n")
    out = io.StringIO()
    run_predict([export], str(path), out, max_length=32, batch_size=32)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert_no_dropout):
    root = tmp_path_factory.mktemp("protocol-exports")
    keys = root / "api-keys.txt"
    keys.write_text("# two keys: rotation\n" + "\n".join(KEYS) + "\n\n")
    return {"ner": make_export(root / "ner", tiny_bert_no_dropout, "token-classification", NER_LABELS),
            "cls": make_export(root / "cls", tiny_bert_no_dropout, "sequence-classification", CLS_LABELS, seed=1),
            "qa": make_export(root / "qa", tiny_bert_no_dropout, "question-answering", seed=3), "keys": keys}


@pytest.fixture(scope="module")
def servers(exports):
    """The three servers, started together."""
    started = {"ner": Server([exports["ner"]], "--api-keys", str(exports["keys"]), "--redact", "PER", "--name",
                             "tweets-ner", wait=False),
               "cls": Server([exports["cls"]], wait=False), "qa": Server([exports["qa"]], wait=False)}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.process.terminate()
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def ner_server(servers):
    return servers["ner"]


@pytest.fixture(scope="module")
def cls_server(servers):
    return servers["cls"]


@pytest.fixture(scope="module")
def qa_server(servers):
    return servers["qa"]


@pytest.fixture(scope="module")
def ner_reference(exports):
    expected = reference(exports["ner"], TEXTS)
    assert sum(len(p["entities"]) for p in expected) >= 5  # the decisive random head finds entities
    assert any(e["type"] == "PER" for p in expected for e in p["entities"])
    return expected


@pytest.fixture(scope="module")
def cls_reference(exports):
    return reference(exports["cls"], TEXTS)


@pytest.fixture(scope="module")
def qa_reference(exports):
    return reference(exports["qa"], QUESTIONS)


def url(server) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def inference_client(monkeypatch):
    """InferenceClient(base_url=the server). It only talks to the loopback server, but huggingface_hub refuses
    every request in offline mode, which tests/conftest.py turns on for the (unreachable) hub."""
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda server, key=None: InferenceClient(base_url=url(server), api_key=key)


# ---------------------------------------------------------------------------------------------- InferenceClient

def test_inference_client_token_classification_equals_predict(ner_server, ner_reference, inference_client):
    client = inference_client(ner_server, KEYS[0])
    for text, expected in zip(TEXTS, ner_reference):
        entities = client.token_classification(text)
        assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == \
               [(e["type"], e["text"], e["start"], e["end"]) for e in expected["entities"]]
        assert [e.score for e in entities] == pytest.approx([e["score"] for e in expected["entities"]], abs=1e-5)
        assert all(text[e.start:e.end] == e.word for e in entities)
        kept = client.token_classification(text, ignore_labels=["PER"])
        assert [(e.entity_group, e.start) for e in kept] == \
               [(e["type"], e["start"]) for e in expected["entities"] if e["type"] != "PER"]


def test_inference_client_text_classification_equals_predict(cls_server, cls_reference, inference_client):
    client = inference_client(cls_server)
    for text, expected in zip(TEXTS, cls_reference):
        ranked = client.text_classification(text)
        assert [e.label for e in ranked] == sorted(CLS_LABELS, key=lambda label: -expected["probabilities"][label])
        assert ranked[0].label == expected["label"] and ranked[0].score == pytest.approx(expected["score"], abs=1e-5)
        assert [e.score for e in ranked] == pytest.approx([expected["probabilities"][e.label] for e in ranked],
                                                          abs=1e-5)
        assert [e.label for e in client.text_classification(text, top_k=1)] == [expected["label"]]


def test_inference_client_question_answering_equals_predict(qa_server, qa_reference, inference_client):
    client = inference_client(qa_server)
    for question, expected in zip(QUESTIONS, qa_reference):
        answer = client.question_answering(**question)
        assert (answer.answer, answer.start, answer.end) == (expected["answer"], expected["start"], expected["end"])
        assert answer.score == pytest.approx(expected["score"], abs=1e-5)
        assert question["context"][answer.start:answer.end] == answer.answer
        top = client.question_answering(**question, top_k=3)
        assert [(a.answer, a.start, a.end) for a in top] == [(e["text"], e["start"], e["end"])
                                                             for e in expected["n_best"][:3]]


# ---------------------------------------------------------------------------------------------- TEI's routes

def test_tei_predict_tokenize_and_info(cls_server, cls_reference, exports):
    from transformers import AutoTokenizer

    expected = cls_reference[:2]
    status, _, single = call(cls_server.port, "POST", "/predict", {"inputs": TEXTS[0]})
    assert status == 200 and single[0]["label"] == expected[0]["label"]  # TEI: one input, a flat list
    assert [p["score"] for p in single] == sorted((p["score"] for p in single), reverse=True)
    status, _, batch = call(cls_server.port, "POST", "/predict", {"inputs": TEXTS[:2], "truncate": True})
    assert status == 200 and [answer[0]["label"] for answer in batch] == [e["label"] for e in expected]
    assert [{p["label"]: p["score"] for p in answer} for answer in batch] == \
           [pytest.approx(e["probabilities"], abs=1e-5) for e in expected]
    status, _, root = call(cls_server.port, "POST", "/", {"inputs": TEXTS[0]})
    assert status == 200 and root == [single]  # HF Endpoints: one input, a list of one list
    status, _, jaxft = call(cls_server.port, "POST", "/predict", {"texts": TEXTS[:2]})
    assert status == 200
    assert_same_predictions(jaxft["predictions"], expected)

    tokenizer = AutoTokenizer.from_pretrained(exports["cls"])
    status, _, tokens = call(cls_server.port, "POST", "/tokenize", {"inputs": TEXTS[:2]})
    assert status == 200 and len(tokens) == 2
    for text, answer in zip(TEXTS[:2], tokens):
        encoded = tokenizer(text, return_offsets_mapping=True, padding=False, truncation=False)
        assert [t["id"] for t in answer] == encoded["input_ids"]
        assert [t["special"] for t in answer] == [True] + [False] * (len(answer) - 2) + [True]
        assert all(text[t["start"]:t["stop"]] == t["text"] for t in answer if not t["special"])
    status, _, plain = call(cls_server.port, "POST", "/tokenize", {"inputs": "Berlin", "add_special_tokens": False})
    assert status == 200
    assert [t["id"] for t in plain[0]] == tokenizer("Berlin", add_special_tokens=False)["input_ids"]
    assert not any(t["special"] for t in plain[0]) and "".join(t["text"] for t in plain[0]) == "Berlin"

    status, _, info = call(cls_server.port, "GET", "/info")
    assert status == 200
    assert info["model_id"] == info["served_model_name"] == "cls" and info["pipeline_tag"] == "text-classification"
    assert info["model_type"]["classifier"]["id2label"] == {str(i): label for i, label in enumerate(CLS_LABELS)}
    assert info["max_input_length"] == 32 and info["max_client_batch_size"] == 8
    assert info["batch_sizes"] == [1, 4] and info["length_buckets"] == [16, 32]


# ---------------------------------------------------------------------------------------------- Open Inference Protocol

def triton(server):
    import tritonclient.http as triton_http

    return triton_http, triton_http.InferenceServerClient(url=f"127.0.0.1:{server.port}")


def infer(server, name: str, inputs: dict[str, list[str]], *, binary: bool, key: str | None = None, outputs=None):
    triton_http, client = triton(server)
    tensors = []
    for input_name, values in inputs.items():
        tensor = triton_http.InferInput(input_name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
        tensors.append(tensor)
    requested = [triton_http.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    headers = {"Authorization": f"Bearer {key}"} if key else None  # a fresh dict: infer() adds headers to it
    return client.infer(name, tensors, outputs=requested, headers=headers, request_id="req-1")


def texts_of(array) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_infer_equals_predict(cls_server, qa_server, cls_reference, qa_reference, binary):
    result = infer(cls_server, "cls", {"text": TEXTS}, binary=binary)
    expected = cls_reference
    assert result.get_response()["id"] == "req-1" and result.get_response()["model_name"] == "cls"
    assert_same_predictions([json.loads(p) for p in texts_of(result.as_numpy("prediction"))], expected)
    assert texts_of(result.as_numpy("label")) == [e["label"] for e in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [e["score"] for e in expected], atol=1e-5)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(TEXTS), len(CLS_LABELS))
    np.testing.assert_allclose(probabilities, [[e["probabilities"][label] for label in CLS_LABELS] for e in expected],
                               atol=1e-5)

    questions = {"question": [q["question"] for q in QUESTIONS], "context": [q["context"] for q in QUESTIONS]}
    result = infer(qa_server, "qa", questions, binary=binary, outputs=["answer", "start", "end", "score"])
    expected = qa_reference
    assert [o["name"] for o in result.get_response()["outputs"]] == ["answer", "score", "start", "end"]
    assert texts_of(result.as_numpy("answer")) == [e["answer"] for e in expected]
    assert result.as_numpy("start").tolist() == [e["start"] for e in expected]
    assert result.as_numpy("end").tolist() == [e["end"] for e in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [e["score"] for e in expected], atol=1e-5)


def test_triton_client_ner_with_key_and_redaction(ner_server, ner_reference):
    result = infer(ner_server, "tweets-ner", {"text": TEXTS}, binary=True, key=KEYS[1])
    assert_same_predictions([json.loads(p) for p in texts_of(result.as_numpy("prediction"))], ner_reference)
    assert texts_of(result.as_numpy("redacted")) == [masked(p, "PER") for p in ner_reference]


def test_v2_health_and_metadata(cls_server, ner_server):
    from tritonclient.utils import InferenceServerException

    _, client = triton(cls_server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cls")
    assert client.get_server_metadata()["name"] == "jaxft"
    metadata = client.get_model_metadata("cls")
    assert metadata["name"] == "cls" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "prediction": [-1], "label": [-1], "score": [-1], "probabilities": [-1, len(CLS_LABELS)]}
    assert metadata["parameters"]["labels"] == CLS_LABELS
    assert client.get_model_metadata("cls", model_version="1")["name"] == "cls"
    for name, version in (("nope", ""), ("cls", "2")):
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata(name, model_version=version)
        assert err.value.status() == "404" and "this server has 'cls'" in err.value.message()
    _, ner_client = triton(ner_server)  # probes are open on a server with keys
    assert ner_client.is_server_live() and ner_client.is_server_ready()


# ---------------------------------------------------------------------------------------------- malformed requests

def v2_binary_body(size: int, binary: bytes) -> tuple[bytes, dict]:
    """A 'text' input in the binary tensor extension: binary_data_size `size`, then the bytes `binary`."""
    header = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}]}
    raw = json.dumps(header).encode()
    return raw + binary, {"Inference-Header-Content-Length": str(len(raw))}


def _tensor(name="text", datatype="BYTES", shape=(1,), data=("a",)):
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}


BAD_REQUESTS = [  # route, body (or (body, headers)), status, error_type, words in the message
    ("/", b"{nope", 400, "malformed_json", "not valid JSON"),
    ("/", b"[1]", 400, "not_an_object", '{"inputs": ..., "parameters": {...}}'),
    ("/", {"input": "a"}, 422, "unknown_field", "'input'"),
    ("/", {"parameters": {}}, 422, "missing_inputs", '"inputs"'),
    ("/", {"inputs": 3}, 422, "wrong_type", "a string or a list of strings"),
    ("/", {"inputs": []}, 422, "empty_texts", "empty"),
    ("/", {"inputs": ["a"] * 9}, 413, "too_many_texts", "at most 8"),
    ("/", {"inputs": ["a", " "]}, 422, "blank_text", "inputs[1] is blank"),
    ("/", {"inputs": [["a", "b"]]}, 422, "wrong_type", "not pairs"),
    ("/", {"inputs": "x" * 401}, 422, "text_too_long", "at most 400"),
    ("/", {"inputs": "a", "parameters": {"stride": 4}}, 422, "unsupported_parameter", "'stride'"),
    ("/", {"inputs": "a", "parameters": {"top_k": 0}}, 422, "invalid_parameter", "positive integer"),
    ("/", {"inputs": "a", "parameters": {"function_to_apply": "sigmoid"}}, 422, "invalid_parameter", "'softmax'"),
    ("/", {"inputs": "a", "parameters": []}, 422, "wrong_type", '"parameters" must be an object'),
    ("/predict", {"inputs": "a", "truncate": False}, 422, "invalid_parameter", "always truncated"),
    ("/predict", {"inputs": "a", "raw_scores": True}, 422, "invalid_parameter", "probabilities only"),
    ("/predict", {"inputs": "a", "texts": ["a"]}, 422, "unknown_field", "'texts'"),
    ("/tokenize", {"inputs": 5}, 422, "wrong_type", "a string or a list of strings"),
    ("/tokenize", {"inputs": "a", "add_special_tokens": "yes"}, 422, "wrong_type", "true or false"),
    ("/tokenize", {"text": "a"}, 422, "unknown_field", "'text'"),
    ("/v2/models/cls/infer", b"{", 400, "malformed_json", "not valid JSON"),
    ("/v2/models/cls/infer", {"inputs": []}, 422, "missing_inputs", "'text'"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(name="texts")]}, 422, "unknown_input", "named 'texts'"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(datatype="FP32", data=[1.0])]}, 422, "wrong_datatype", "'BYTES'"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(shape=(2,))]}, 422, "shape_mismatch", "shape [2] (2 elements)"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(shape=(-1,))]}, 422, "wrong_shape", "non-negative"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(), _tensor()]}, 422, "duplicate_input", "twice"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(data=[3])]}, 422, "wrong_type", "BYTES data are strings"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(shape=(0,), data=())]}, 422, "empty_texts", "empty"),
    ("/v2/models/cls/infer", {"inputs": [_tensor(shape=(9,), data=["a"] * 9)]}, 413, "too_many_texts", "at most 8"),
    ("/v2/models/cls/infer", {"inputs": [_tensor()], "outputs": [{"name": "logits"}]}, 422, "unknown_output",
     "'logits'"),
    ("/v2/models/cls/infer", {"inputs": [_tensor()], "extra": 1}, 422, "unknown_field", "'extra'"),
    ("/v2/models/cls/infer", v2_binary_body(9, b"\x05\x00\x00\x00ab"), 400, "bad_binary_size", "does not fit"),
    ("/v2/models/cls/infer", v2_binary_body(6, b"\x05\x00\x00\x00ab"), 400, "bad_binary_data", "declares 5 bytes"),
    ("/v2/models/cls/infer", v2_binary_body(6, b"\x02\x00\x00\x00\xff\xfe"), 422, "invalid_text", "not UTF-8"),
    ("/v2/models/cls/infer", (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}), 400,
     "bad_header_length", "'99'"),
    ("/v2/models/cls/infer", (b"{}", {"Content-Encoding": "gzip"}), 415, "unsupported_encoding", "'gzip'"),
    ("/v2/models/other/infer", {"inputs": [_tensor()]}, 404, "unknown_model", "no model 'other'"),
    ("/v2/models/cls/versions/7/infer", {"inputs": [_tensor()]}, 404, "unknown_model", "version '7'"),
]


@pytest.mark.parametrize("route, body, status, code, words", BAD_REQUESTS,
                         ids=[f"{r[0]}-{r[3]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_malformed_requests_get_a_reason(cls_server, route, body, status, code, words):
    headers = None
    if isinstance(body, tuple):
        body, headers = body
    got_status, _, answer = call(cls_server.port, "POST", route, body, headers=headers)
    assert (got_status, answer["error_type"]) == (status, code), answer
    assert words in answer["error"]


def test_qa_and_wrong_methods(qa_server, cls_server):
    status, _, answer = call(qa_server.port, "POST", "/", {"inputs": "just a string"})
    assert status == 422 and '{"question": ..., "context": ...}' in answer["error"]
    status, _, answer = call(qa_server.port, "POST", "/", {"inputs": {"question": "q?"}})
    assert status == 422 and '"inputs".context must be a string' in answer["error"]
    status, _, answer = call(qa_server.port, "POST", "/", {"inputs": QUESTIONS[0], "parameters": {"top_k": 6}})
    assert status == 422 and "at most 5" in answer["error"]
    status, _, answer = call(qa_server.port, "POST", "/v2/models/qa/infer", {"inputs": [_tensor(name="question")]})
    assert status == 422 and answer["error_type"] == "missing_input" and "'context'" in answer["error"]
    assert call(cls_server.port, "GET", "/v2/models/cls/infer")[0] == 405
    assert call(cls_server.port, "GET", "/")[0] == 405
    status, _, answer = call(cls_server.port, "POST", "/redact", {"texts": ["a"]})
    assert status == 404 and answer["error"]["code"] == "redact_off"


# ---------------------------------------------------------------------------------------------- keys, redaction

PROTECTED = [("POST", "/", {"inputs": "Berlin"}), ("POST", "/predict", {"texts": ["Berlin"]}),
             ("POST", "/predict", {"inputs": "Berlin"}), ("POST", "/redact", {"texts": ["Berlin"]}),
             ("POST", "/tokenize", {"inputs": "Berlin"}), ("GET", "/info", None), ("GET", "/metrics", None),
             ("GET", "/v2", None), ("GET", "/v2/models/tweets-ner", None), ("GET", "/v2/models/tweets-ner/ready", None),
             ("POST", "/v2/models/tweets-ner/infer", {"inputs": [_tensor(data=["Berlin"])]})]
OPEN = ["/health", "/v2/health/live", "/v2/health/ready"]


def test_api_keys_guard_every_route_but_the_probes(ner_server):
    for method, path, body in PROTECTED:
        for key, header in ((None, None), (WRONG_KEY, None), (None, f"Basic {KEYS[0]}"), (None, "Bearer ")):
            headers = {"Authorization": header} if header else None
            status, answer_headers, answer = call(ner_server.port, method, path, body, key=key, headers=headers)
            assert status == 401, (method, path, key, header, answer)
            assert answer_headers["WWW-Authenticate"] == "Bearer"
            error = answer["error"]["code"] if path in ("/predict", "/redact") else answer["error_type"]
            assert error == "unauthorized"
        for key in KEYS:
            assert call(ner_server.port, method, path, body, key=key)[0] == 200, (method, path)
    for path in OPEN:
        assert call(ner_server.port, "GET", path)[0] == 200
    log = ner_server.output()
    assert "ready" in log and not any(key in log for key in [*KEYS, WRONG_KEY])  # keys are never logged


def masked(prediction: dict, entity_type: str) -> str:
    """The text with each entity of the type replaced by [TYPE], built from predict's entity offsets."""
    text = prediction["text"]
    for entity in sorted(prediction["entities"], key=lambda e: -e["start"]):
        if entity["type"] == entity_type:
            text = text[:entity["start"]] + f"[{entity_type}]" + text[entity["end"]:]
    return text


def test_redact_masks_the_chosen_entity_types(ner_server, ner_reference):
    status, _, answer = call(ner_server.port, "POST", "/redact", {"texts": TEXTS}, key=KEYS[0])
    assert status == 200
    assert [p["text"] for p in answer["predictions"]] == [masked(p, "PER") for p in ner_reference]
    assert [[(r["start"], r["end"]) for r in p["redacted"]] for p in answer["predictions"]] == \
           [[(e["start"], e["end"]) for e in p["entities"] if e["type"] == "PER"] for p in ner_reference]
    assert sum(len(p["redacted"]) for p in answer["predictions"]) >= 1
    assert all("[PER]" not in p["text"] for p in ner_reference)
    status, _, answer = call(ner_server.port, "POST", "/redact", {"texts": []}, key=KEYS[0])
    assert status == 422 and answer["error"]["code"] == "empty_texts"


# ---------------------------------------------------------------------------------------------- /metrics

def test_metrics_count_every_route_and_parse(ner_server):
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    before = ner_server.metrics(headers=auth)
    for _ in range(3):
        assert call(ner_server.port, "POST", "/", {"inputs": TEXTS[0]}, key=KEYS[0])[0] == 200
    for _ in range(2):
        infer(ner_server, "tweets-ner", {"text": TEXTS[:2]}, binary=True, key=KEYS[0])
    assert call(ner_server.port, "POST", "/", {"inputs": TEXTS[0]})[0] == 401
    assert call(ner_server.port, "GET", "/nope")[0] == 404
    after = ner_server.metrics(headers=auth)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("jaxft_requests_total", route="/", status="200") == 3
    assert delta("jaxft_requests_total", route="/", status="401") == 1
    assert delta("jaxft_requests_total", route="/v2/models/{name}/infer", status="200") == 2
    assert delta("jaxft_requests_total", route="unmatched", status="404") == 1
    assert delta("jaxft_requests_total", route="/metrics", status="200") == 1  # the first scrape
    assert delta("jaxft_request_latency_seconds_count", route="/") == 4
    assert delta("jaxft_predicted_items_total") == 3 + 2 * 2
    assert delta("jaxft_batch_items_sum") >= 3 + 2 * 2  # NER windows: at least one row per text
    assert after["jaxft_compilations"] == after["jaxft_warmup_compilations"] == 4
    assert after["jaxft_ready"] == 1 and after["jaxft_requests_in_flight"] == 1  # this scrape
    info = next(s for s in after.samples if s.name == "jaxft_model_info")
    assert info.labels == {"name": "tweets-ner", "task": "token-classification", "members": "1"}
    types = {name: family.type for name, family in after.families.items()}
    assert types["jaxft_requests"] == "counter" and types["jaxft_request_latency_seconds"] == "histogram"
    assert types["jaxft_batch_items"] == types["jaxft_batch_requests"] == "histogram"
    for family in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_info",
                   "python_gc_objects_collected"):
        assert family in types, family
    assert after["process_resident_memory_bytes"] > 100e6  # jax and the XLA runtime are loaded
    assert not any(s.name.endswith("_created") for s in after.samples)  # serve turns the _created series off


def test_serve_refuses_options_that_do_not_fit():
    from jaxft.serve.app import _check_files, _parser

    def problem(*argv):
        return _check_files(_parser().parse_args(["--model", str(REPO), *argv]))

    assert problem() is None
    assert problem("--public-metrics") == "--public-metrics only applies with --api-keys (without keys every route " \
                                          "is open)"
    assert problem("--ssl-keyfile", "key.pem") == "--ssl-keyfile needs --ssl-certfile"
    assert problem("--ssl-certfile", "missing.pem") == "--ssl-certfile: file not found: missing.pem"
    assert problem("--model", "missing-folder") == "--model: folder not found: missing-folder"


# ---------------------------------------------------------------------------------------------- in process

def test_api_key_files_are_checked(tmp_path):
    from jaxft.serve.auth import ApiKeyError, ApiKeys

    def read(text):
        path = tmp_path / "keys.txt"
        path.write_text(text)
        return ApiKeys.read(path)

    keys = read("# comment\n\n  " + KEYS[0] + "  \n" + KEYS[1] + "\n")
    assert len(keys) == 2 and keys.allows(f"Bearer {KEYS[1]}") and keys.allows(f"bearer {KEYS[0]}")
    assert not keys.allows(f"Bearer {WRONG_KEY}") and not keys.allows(KEYS[0]) and not keys.allows(None)
    assert not keys.allows(f"Bearer {KEYS[0]}x") and not keys.allows(f"Bearer {KEYS[0][:-1]}")
    for text, words in (("# only a comment\n", "holds no key"), (f"{KEYS[0]}\nshort\n", "keys.txt:2: the key has 5"),
                        (f"{KEYS[0]} {KEYS[1]}\n", "keys.txt:1: a key must not contain whitespace")):
        with pytest.raises(ApiKeyError, match=words):
            read(text)
    with pytest.raises(ApiKeyError, match="file not found"):
        ApiKeys.read(tmp_path / "missing.txt")


class FakePairPredictor(FakePredictor):
    task, item_kind, problem_type, labels = "sequence-classification", "pair", "single_label_classification", ["a"]
    max_length = 32


def test_pair_inputs_in_every_protocol():
    from jaxft.serve import hf, v2
    from jaxft.serve.inputs import Limits, RequestError

    predictor, limits = FakePairPredictor(), Limits()
    assert hf.parse_request({"inputs": {"text": "a", "text_pair": "b"}}, predictor, limits) == \
           hf.HFRequest([("a", "b")], True, {})
    assert hf.parse_request({"inputs": ["a", "b"]}, predictor, limits).items == [("a", "b")]  # TEI's pair
    assert hf.parse_request({"inputs": [["a", "b"], {"text": "c", "text_pair": "d"}]}, predictor, limits) == \
           hf.HFRequest([("a", "b"), ("c", "d")], False, {})
    with pytest.raises(RequestError, match=r"inputs\[0\] must be a \[text, pair\]"):
        hf.parse_request({"inputs": ["a"]}, predictor, limits)
    body = json.dumps({"inputs": [_tensor("text", shape=(2, 1), data=[["a"], ["c"]]),
                                  _tensor("text_pair", shape=(2,), data=["b", "d"])]}).encode()
    assert v2.parse_infer(body, None, predictor, limits).items == [("a", "b"), ("c", "d")]
    body = json.dumps({"inputs": [_tensor("text"), _tensor("text_pair", shape=(2,), data=["b", "d"])]}).encode()
    with pytest.raises(RequestError, match="different element counts"):
        v2.parse_infer(body, None, predictor, limits)


def test_readiness_routes_follow_warm_up_and_drain():
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits

    state = ServeState(FakePredictor(), limits=Limits())
    app = build_app(state, warm_up=False)
    assert asgi(app, "GET", "/v2/health/ready")[0] == 503 and asgi(app, "GET", "/v2/health/live")[0] == 200
    status, body = asgi(app, "POST", "/", b'{"inputs": "a"}')
    assert status == 503 and body["error_type"] == "warming_up"
    state.warm_up()
    assert asgi(app, "GET", "/v2/health/ready") == (200, {"ready": True})
    state.draining.set()  # what SIGTERM does
    assert asgi(app, "GET", "/health")[1]["status"] == "draining"
    assert asgi(app, "GET", "/v2/health/ready") == (503, {"ready": False})
    status, body = asgi(app, "POST", "/predict", b'{"texts": ["a"]}')
    assert status == 503 and body["error"]["code"] == "draining"
    assert Metrics(asgi(app, "GET", "/metrics")[1]["text"])["jaxft_ready"] == 0


class FakeFillMask(FakePredictor):
    task, item_kind = "masked-lm", "text"


def test_fill_mask_answers_parse_the_way_inference_client_does():
    """The fill-mask predictor's result shape (tests/test_mlm.py) -> what InferenceClient.fill_mask parses."""
    from huggingface_hub import FillMaskOutputElement

    from jaxft.serve import hf
    from jaxft.serve.inputs import Limits

    def candidates(word):
        return [{"score": 0.5 / (k + 1), "token": 1000 + k, "token_str": f"{word}{k}", "sequence": f"a {word}{k}"}
                for k in range(5)]

    predictor, limits = FakeFillMask(), Limits()
    one = {"text": "a [MASK]", "predictions": [candidates("x")]}
    two = {"text": "[MASK] a [MASK]", "predictions": [candidates("x"), candidates("y")]}
    request = hf.parse_request({"inputs": "a [MASK]"}, predictor, limits)
    parsed = FillMaskOutputElement.parse_obj_as_list(hf.answer(request, [one], predictor, route="/"))
    assert [(e.token, e.token_str, e.sequence) for e in parsed] == [(1000 + k, f"x{k}", f"a x{k}") for k in range(5)]
    request = hf.parse_request({"inputs": "a [MASK]", "parameters": {"top_k": 2}}, predictor, limits)
    assert [e["token"] for e in hf.answer(request, [one], predictor, route="/")] == [1000, 1001]
    request = hf.parse_request({"inputs": ["a [MASK]", "[MASK] a [MASK]"]}, predictor, limits)
    batch = hf.answer(request, [one, two], predictor, route="/")
    assert len(batch) == 2 and len(batch[0]) == 5 and [len(mask) for mask in batch[1]] == [5, 5]  # one list per mask


class FakeClassifier(FakePredictor):
    task, item_kind, labels, max_length = "sequence-classification", "text", ["neg", "pos", "mixed"], 32

    def __init__(self, problem_type):
        super().__init__()
        self.problem_type = problem_type


def test_multi_label_and_regression_answers():
    """SequenceClassifier's multi-label and regression results (tests/test_classification.py) in the HF and v2
    shapes."""
    from jaxft.serve import hf, v2
    from jaxft.serve.inputs import Limits, RequestError

    multi = FakeClassifier("multi_label_classification")
    result = {"text": "a", "labels": ["pos", "mixed"], "threshold": 0.5,
              "probabilities": {"neg": 0.1, "pos": 0.9, "mixed": 0.6}}
    request = hf.parse_request({"inputs": "a", "parameters": {"function_to_apply": "sigmoid", "top_k": 2}}, multi,
                               Limits())
    assert hf.answer(request, [result], multi, route="/") == [[{"label": "pos", "score": 0.9},
                                                               {"label": "mixed", "score": 0.6}]]
    assert hf.answer(request, [result], multi, route="/predict") == [{"label": "pos", "score": 0.9},
                                                                     {"label": "mixed", "score": 0.6}]
    with pytest.raises(RequestError, match="answers 'sigmoid' only"):
        hf.parse_request({"inputs": "a", "parameters": {"function_to_apply": "softmax"}}, multi, Limits())
    body, headers = v2.infer_response(v2.InferRequest(None, ["a"], {"prediction": False, "probabilities": False}),
                                      [result], multi, "m")
    assert json.loads(body)["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [1, 3],
                                              "data": [0.1, 0.9, 0.6]}
    assert [o["name"] for o in v2.model_metadata("m", multi)["outputs"]] == ["prediction", "probabilities"]

    regression = FakeClassifier("regression")
    request = hf.parse_request({"inputs": ["a", "b"], "parameters": {"function_to_apply": "none"}}, regression,
                               Limits())
    answers = hf.answer(request, [{"text": "a", "value": 2.5}, {"text": "b", "value": -1.0}], regression, route="/")
    assert answers == [[{"label": "neg", "score": 2.5}], [{"label": "neg", "score": -1.0}]]
    assert [o["name"] for o in v2.model_metadata("m", regression)["outputs"]] == ["prediction", "value"]
