"""`serve` under a bounded, seeded loopback load with malformed and oversized requests mixed in.

One real server subprocess on 127.0.0.1 (the tiny NER export of tiny_exports.py, the shapes and limits of
test_serve.py: at most 4096 body bytes, 8 texts, 400 characters; and a 2 s body timeout). Two identical rounds
of 600 requests from 8 client threads over raw sockets, so a client can stream a body, stop mid-body, close
early or never read its answer. Checked: every answer has the status its request calls for (exactly); every
valid request's predictions equal the single-request answers; the /metrics request counts add up and show no
500; /health still answers 200; nothing compiled after warm-up; and the server's resident memory after round
2 is within RSS_GROWTH_BOUND of what it was after round 1.
"""

import json
import random
import socket
import struct
import threading
import time

import pytest

from test_serve import Server, assert_same_predictions, http, post
from tiny_exports import NER_LABELS, TEXTS, make_export

MAX_BODY = 4096  # test_serve.LIMITS
MAX_TEXTS = 8
MAX_CHARS = 400
BODY_TIMEOUT_S = 2.0
REQUESTS_PER_ROUND = 600
THREADS = 8
SEED = 20261130

# The bound on VmRSS growth from round 1 to round 2, from measurement (2-core machine, load average ~10 from
# other jobs): round 1 leaves the server at ~700 MiB (jax, the XLA CPU runtime, the tiny model and its 4
# compiled shapes); round 2, the same 600 requests again, moved it by +0.1, +0.2 and +0.1 MiB in three runs.
# The allocator can still grow in one step once settled: in benchmarks/serve_load.py on the real MiniLM export
# (1 MiB bodies, 16 clients), the 2nd of six identical levels grew 9.4 MiB, the others 0.0-1.8 MiB. 16 MiB is
# above that step and 80x this test's noise, and catches a leak of >= 28 KiB per request: a connection kept
# with its read buffer (uvicorn reads up to 64 KiB ahead), or a handler kept with the body it read.
RSS_GROWTH_BOUND_MIB = 16


# ---------------------------------------------------------------------------------------------- raw client

def _head(method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_head(length: int | None, content_type: str | None = "application/json", **extra) -> bytes:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    return _head("POST", "/predict", {**headers, **extra})


def _chunked(parts: list[bytes], end: bool = True) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts] + ([b"0\r\n\r\n"] if end else [])


def _read_response(sock: socket.socket) -> tuple[int | None, dict, bytes, bool]:
    """(status, headers, body, closed): closed when the server closed the connection after the answer."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, {}, data, True
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        closed = False
        if headers.get("connection", "").lower() == "close":
            try:
                closed = sock.recv(1) == b""
            except ConnectionResetError:  # closed with bytes we sent still unread on its side
                closed = True
        return status, headers, body, closed
    except ConnectionResetError:
        return None, {}, data, True


def exchange(port: int, spec: dict) -> dict:
    """Send one request as `spec` says and read its answer (unless the client is one that gives up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sent_all = True
        try:
            for i, part in enumerate(spec["parts"]):
                if i and spec.get("pause"):
                    time.sleep(spec["pause"])
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before we finished
            sent_all = False
        if spec.get("hang_up"):  # a client that goes away: mid-body, or before reading its answer
            if spec.get("reset"):  # SO_LINGER 0: close() sends RST rather than FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return {"status": None}
        status, headers, body, closed = _read_response(sock)
    answer = None
    if body.startswith(b"{"):
        answer = json.loads(body)
    return {"status": status, "answer": answer, "closed": closed, "sent_all": sent_all}


# ---------------------------------------------------------------------------------------------- the mix

def _valid_body(rng: random.Random) -> tuple[list[str], bytes]:
    texts = [rng.choice(TEXTS) for _ in range(rng.randint(1, 3))]
    return texts, json.dumps({"texts": texts}).encode()


def _simple(body: bytes, status: int, code: str | None = None, content_type: str | None = "application/json") -> dict:
    return {"parts": [_json_head(len(body), content_type) + body], "status": status, "code": code}


def make_request(kind: str, rng: random.Random) -> dict:
    if kind == "valid":
        texts, body = _valid_body(rng)
        return {**_simple(body, 200), "texts": texts}
    if kind == "valid_other_content_type":  # the body decides; Content-Type is not checked
        texts, body = _valid_body(rng)
        content_type = rng.choice(["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
        return {**_simple(body, 200, content_type=content_type), "texts": texts}
    if kind == "valid_chunked":
        texts, body = _valid_body(rng)
        cut = rng.randint(1, len(body) - 1)
        return {"parts": [_json_head(None), *_chunked([body[:cut], body[cut:]])], "pause": 0.005, "status": 200,
                "code": None, "texts": texts}
    if kind == "valid_then_hang_up":  # sends a whole request, closes without reading the answer
        _, body = _valid_body(rng)
        return {**_simple(body, None), "hang_up": True, "reset": rng.random() < 0.5}
    if kind == "truncated_json":  # the whole (short) body arrives, but it is a cut JSON document
        _, body = _valid_body(rng)
        return _simple(body[:rng.randint(0, len(body) - 1)], 400, "malformed_json")
    if kind == "garbage_bytes":
        return _simple(rng.randbytes(rng.randint(1, 300)), 400)
    if kind == "form_body":
        return _simple(b"texts=John+went+to+Paris&lang=en", 400, "malformed_json",
                       "application/x-www-form-urlencoded")
    if kind == "multipart_body":
        body = (b'--xyz\r\nContent-Disposition: form-data; name="texts"\r\n\r\nJohn went to Paris\r\n--xyz--\r\n')
        return _simple(body, 400, "malformed_json", "multipart/form-data; boundary=xyz")
    if kind == "just_over_limit":  # a JSON body a few bytes over max_body_bytes, Content-Length declared
        pad = "x" * (MAX_BODY + rng.randint(1, 64))
        return _simple(json.dumps({"texts": [pad]}).encode(), 413, "body_too_large")
    if kind == "far_over_limit":  # declares 1 GiB, streams 16 KiB: refused from the headers, connection closed
        return {"parts": [_json_head(1 << 30), b"[" * 8192, b"[" * 8192], "status": 413, "code": "body_too_large",
                "must_close": True}
    if kind == "chunked_over_limit":  # no Content-Length: refused once the chunks pass the limit
        return {"parts": [_json_head(None), *_chunked([b" " * 1024] * (MAX_BODY // 1024 + 1), end=False)],
                "status": 413, "code": "body_too_large", "must_close": True}
    if kind == "too_many_texts":
        return _simple(json.dumps({"texts": ["Paris"] * rng.randint(MAX_TEXTS + 1, 40)}).encode(), 413,
                       "too_many_texts")
    if kind == "wrong_type":
        payload, code = rng.choice([({"texts": [1]}, "wrong_type"), ({"texts": [None, "a"]}, "wrong_type"),
                                    ({"texts": [["a", "b"]]}, "wrong_type"), ({"texts": [{"a": 1}]}, "wrong_type"),
                                    ({"texts": "Paris"}, "texts_not_a_list"), ({"texts": {"0": "a"}},
                                                                                "texts_not_a_list"),
                                    ({"texts": True}, "texts_not_a_list"), ({"text": ["a"]}, "unknown_field"),
                                    ({}, "missing_texts"), ({"texts": ["a"], "x": 1}, "unknown_field")])
        return _simple(json.dumps(payload).encode(), 422, code)
    if kind == "not_an_object":
        return _simple(rng.choice([b"[]", b'"texts"', b"42", b"null", b'[{"texts": ["a"]}]']), 400, "not_an_object")
    if kind == "deep_nesting":  # deeper than Python's recursion limit (1000), under the byte limit
        depth = rng.randint(1100, 1900)
        body = rng.choice([b"[" * depth + b"]" * depth, b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"])
        return _simple(body, 400, "too_deeply_nested")
    if kind == "shallow_nesting":
        depth = rng.randint(2, 200)
        return _simple(b'{"texts": [' + b"[" * depth + b'"a"' + b"]" * depth + b"]}", 422, "wrong_type")
    if kind == "invalid_utf8":
        return _simple(rng.choice([b'{"texts": ["caf\xe9"]}', b'{"texts": ["\xff\xfe\xfd"]}',
                                   b'{"texts": ["ok", "\xc3"]}',
                                   b'{"texts": ["\xc0\xaf"]}']), 400,
                       "malformed_json")
    if kind == "lone_surrogate":  # valid JSON, not Unicode text: the tokenizer raises on it. json.loads reads
        # bytes with "surrogatepass", so a surrogate's 3-byte encoding (ED A0 80, not UTF-8) is the same case
        return _simple(rng.choice([b'{"texts": ["a \\ud800 b"]}', b'{"texts": ["Paris", "\\udfff"]}',
                                   b'{"texts": ["\xed\xa0\x80 Paris"]}']), 422, "invalid_text")
    if kind == "empty":
        return rng.choice([_simple(b'{"texts": []}', 422, "empty_texts"), _simple(b"", 400, "malformed_json"),
                           _simple(b'{"texts": ["  \\t\\n"]}', 422, "blank_text"),
                           _simple(json.dumps({"texts": ["y" * (MAX_CHARS + 1)]}).encode(), 422, "text_too_long")])
    if kind == "hang_up_mid_body":  # a slow client that stops mid-body and closes the socket
        _, body = _valid_body(rng)
        cut = rng.randint(1, len(body) - 1)
        parts = [_json_head(len(body)), body[:cut // 2], body[cut // 2:cut]]
        return {"parts": parts, "pause": rng.uniform(0.005, 0.05), "status": None, "hang_up": True,
                "reset": rng.random() < 0.5}
    if kind == "stalled_mid_body":  # stops mid-body but keeps the connection open: 408 after the body timeout
        _, body = _valid_body(rng)
        return {"parts": [_json_head(len(body)), body[:len(body) // 2]], "status": 408, "code": "body_timeout",
                "must_close": True}
    if kind == "wrong_route":
        return rng.choice([{"parts": [_head("GET", "/predict", {})], "status": 405, "code": None},
                           {"parts": [_head("GET", "/nope", {})], "status": 404, "code": None}])
    raise AssertionError(kind)


KINDS = {  # weight
    "valid": 30, "valid_other_content_type": 4, "valid_chunked": 3, "valid_then_hang_up": 3,
    "truncated_json": 4, "garbage_bytes": 2, "form_body": 1, "multipart_body": 1, "just_over_limit": 4,
    "far_over_limit": 3, "chunked_over_limit": 3, "too_many_texts": 3, "wrong_type": 5, "not_an_object": 2,
    "deep_nesting": 3, "shallow_nesting": 1, "invalid_utf8": 3, "lone_surrogate": 3, "empty": 3,
    "hang_up_mid_body": 4, "stalled_mid_body": 1, "wrong_route": 1,
}
APP_STATUSES = ("200", "400", "408", "413", "422", "499", "500", "503")  # counted in jaxft_requests_total


def plan(seed: int, count: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    return [(kind, make_request(kind, rng)) for kind in kinds]


def run_round(port: int, requests: list[tuple[str, dict]]) -> list[dict]:
    results: list = [None] * len(requests)
    next_index = iter(range(len(requests)))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                results[index] = exchange(port, requests[index][1])
            except Exception as err:  # noqa: BLE001 - reported below with the request kind
                results[index] = {"status": "client error", "error": repr(err)}

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def request_counts(server: Server) -> dict[str, float]:
    metrics = server.metrics()
    return {s: metrics.value("jaxft_requests_total", route="/predict", status=s) for s in APP_STATUSES}


def settled_counts(server: Server, before: dict, expected_total: int) -> dict[str, float]:
    """Request counts once every handler has finished: hung-up clients are counted when the server notices."""
    for _ in range(120):
        counts = {s: v - before[s] for s, v in request_counts(server).items()}
        if sum(counts.values()) >= expected_total:
            return counts
        time.sleep(0.25)
    return counts


# ---------------------------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def abuse_server(tmp_path_factory, tiny_bert_no_dropout):
    export = make_export(tmp_path_factory.mktemp("abuse") / "ner", tiny_bert_no_dropout, "token-classification",
                         NER_LABELS)
    server = Server([export], "--body-timeout-s", str(BODY_TIMEOUT_S))
    yield server
    server.stop()


def check_round(requests, results, reference) -> dict[str, int]:
    """Exact statuses and error codes, predictions; returns how many requests of each kind there were."""
    kinds: dict[str, int] = {}
    for (kind, spec), result in zip(requests, results):
        kinds[kind] = kinds.get(kind, 0) + 1
        where = f"{kind}: {spec['parts'][0][:120]!r}... -> {result}"
        assert result["status"] == spec["status"], where
        if spec.get("code"):
            assert result["answer"]["error"]["code"] == spec["code"], where
        if spec.get("must_close"):  # the rest of the body is not read: the server closed the connection
            assert result["closed"], where
        if spec["status"] == 200:
            assert_same_predictions(result["answer"]["predictions"], [reference[t] for t in spec["texts"]])
    return kinds


def test_mixed_abusive_load_keeps_answers_right_and_memory_flat(abuse_server):
    server = abuse_server
    reference = {}
    for text in TEXTS:  # the single-request answer of every text a valid request sends
        status, answer = post(server.port, {"texts": [text]})
        assert status == 200
        reference[text] = answer["predictions"][0]
    requests = plan(SEED, REQUESTS_PER_ROUND)
    pid = server.process.pid

    rss = []
    for _ in range(2):  # round 1 warms the allocator up; round 2 repeats it exactly and must not grow memory
        before = request_counts(server)
        results = run_round(server.port, requests)
        kinds = check_round(requests, results, reference)
        app_answered = sum(n for kind, n in kinds.items() if kind != "wrong_route")  # 404/405 are Starlette's
        counts = settled_counts(server, before, app_answered)
        assert counts["500"] == 0 and counts["503"] == 0, counts
        assert sum(counts.values()) == app_answered, (counts, kinds)
        for status in ("400", "408", "413", "422"):
            assert counts[status] == sum(1 for _, spec in requests if spec["status"] == int(status)), (status, counts)
        answered_200 = sum(1 for _, spec in requests if spec["status"] == 200)
        hung_up = kinds.get("hang_up_mid_body", 0)
        # a client that hung up after its whole request counts as 200 if its body was read before the server saw
        # the connection close, else as 499, like one that hung up mid-body
        assert counts["200"] + counts["499"] == answered_200 + hung_up + kinds.get("valid_then_hang_up", 0)
        assert counts["499"] >= hung_up
        rss.append(rss_mib(pid))

    assert min(kinds.values()) >= 1 and len(kinds) == len(KINDS), kinds  # the seeded mix drew every kind
    status, answer = post(server.port, {"texts": [TEXTS[0]]})
    assert status == 200
    assert_same_predictions(answer["predictions"], [reference[TEXTS[0]]])
    assert http(server.port, "GET", "/health")[0] == 200
    metrics = server.metrics()
    assert metrics["jaxft_compilations"] == metrics["jaxft_warmup_compilations"] == 4
    print(f"server VmRSS after round 1: {rss[0]:.1f} MiB, after round 2: {rss[1]:.1f} MiB "
          f"({rss[1] - rss[0]:+.1f} MiB)")
    assert rss[1] - rss[0] <= RSS_GROWTH_BOUND_MIB, rss


# ---------------------------------------------------------------------------------------------- in process

def test_a_request_that_breaks_the_model_call_does_not_fail_its_batch():
    """Requests that share a batch with one whose items make the predictor raise still get their answers."""
    import asyncio

    from jaxft.serve.batcher import DynamicBatcher

    calls = []

    def predict(items):
        calls.append(list(items))
        if "boom" in items:
            raise TypeError("cannot tokenize")
        return [item.upper() for item in items]

    async def scenario():
        batcher = DynamicBatcher(predict, max_items=8, max_wait_ms=200)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(r) for r in (["a"], ["b", "boom"], ["c"])),
                                       return_exceptions=True)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers[0] == ["A"] and answers[2] == ["C"]
    assert isinstance(answers[1], TypeError)
    assert calls == [["a", "b", "boom", "c"], ["a"], ["b", "boom"], ["c"]]


def test_deep_json_and_lone_surrogates_are_request_errors():
    from jaxft.serve.inputs import Limits, RequestError, parse_json, validate

    with pytest.raises(RequestError) as err:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    assert err.value.status == 400 and err.value.code == "too_deeply_nested"
    for raw in (b'{"texts": ["a \\ud800"]}', b'{"texts": ["\xed\xa0\x80"]}'):
        with pytest.raises(RequestError) as err:
            validate(parse_json(raw), "text", Limits())
        assert err.value.status == 422 and err.value.code == "invalid_text" and "texts[0]" in err.value.message
