"""Graceful drain: a real `serve` subprocess on 127.0.0.1 (over HTTPS with a throw-away self-signed
certificate when the openssl command exists, through uvicorn's --ssl-certfile / --ssl-keyfile) gets SIGTERM
while requests wait in the batcher; every one of them is answered 200 with the same predictions as before,
new connections are refused once the drain has started, and the process exits 0 within DRAIN_BOUND_S.

The batcher holds the requests: --max-wait-ms 2500 keeps a batch open for 2.5 s after its first request
(6 one-text requests stay under the largest batch size, 8, so nothing closes it early), and SIGTERM is sent
once /metrics shows all 6 in flight.
"""

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from test_serve import ENV, REPO, Metrics, assert_same_predictions, free_port
from tiny_exports import NER_LABELS, TEXTS, make_export

HELD = 6
DRAIN_BOUND_S = 20  # SIGTERM to exit: the 2.5 s batch window, the model call, uvicorn's shutdown


def self_signed_certificate(folder) -> tuple[str, str] | None:
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


class Client:
    def __init__(self, port: int, cert: str | None):
        self.base = f"{'https' if cert else 'http'}://127.0.0.1:{port}"
        self.context = ssl.create_default_context(cafile=cert) if cert else None

    def request(self, path: str, payload=None, timeout: float = 60) -> tuple[int, bytes]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


def test_sigterm_drains_requests_in_flight_then_exits_0(tmp_path, tiny_bert_no_dropout):
    export = make_export(tmp_path / "ner", tiny_bert_no_dropout, "token-classification", NER_LABELS)
    certificate = self_signed_certificate(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "jaxft.main", "serve", "--model", str(export), "--port", str(port),
               "--batch-sizes", "1,8", "--length-buckets", "16,32", "--max-length", "32", "--max-wait-ms", "2500"]
    if certificate:
        command += ["--ssl-certfile", certificate[0], "--ssl-keyfile", certificate[1]]
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    client = Client(port, certificate[0] if certificate else None)

    def output() -> str:
        log.seek(0)
        return log.read()[-3000:]

    try:
        deadline = time.time() + 300
        while True:
            assert process.poll() is None and time.time() < deadline, output()
            try:
                if client.request("/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        texts = TEXTS[:HELD]
        status, raw = client.request("/predict", {"texts": texts})
        assert status == 200
        expected = json.loads(raw)["predictions"]

        answers: list = [None] * HELD

        def send(i):
            answers[i] = client.request("/predict", {"texts": [texts[i]]})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(HELD)]
        for thread in threads:
            thread.start()
        while Metrics(client.request("/metrics")[1].decode())["jaxft_requests_in_flight"] < HELD + 1:  # + this one
            assert time.time() < deadline and all(a is None for a in answers), answers
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(OSError):  # the listening socket is closed: no new work once the drain has begun
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        for thread in threads:
            thread.join(timeout=60)
        returncode = process.wait(timeout=DRAIN_BOUND_S)
        drained_in = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()

    text = (tmp_path / "serve.log").read_text()
    assert [status for status, _ in answers] == [200] * HELD, text[-3000:]
    assert_same_predictions([json.loads(raw)["predictions"][0] for _, raw in answers], expected)
    assert returncode == 0, text[-3000:]
    assert drained_in < DRAIN_BOUND_S
    assert "SIGTERM: draining" in text and "jaxft serve: stopped" in text and "Traceback" not in text
    assert ("on https://" in text) == bool(certificate)
