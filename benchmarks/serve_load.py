r"""Loopback load test of `python -m jaxft.main serve`: throughput and latency at several concurrency levels.

    python benchmarks/serve_load.py [--model /tmp/jaxft_exports/ner] [--concurrency 1,4,16]
                                    [--requests 200] [--seconds 60] [--texts-per-request 1]
                                    [--abuse-fraction 0.3 [--seed 0]]

Starts the server as a subprocess on 127.0.0.1 (or uses --url), waits for /health, then for each
concurrency level runs that many client threads, each sending POST /predict requests one after another,
until --requests requests are done or --seconds have passed (both bound every level). Request texts are
tweets from the packaged NER data (cycled). Prints a table (requests/s, texts/s, p50/p90/p99 latency, mean
items per model batch from /metrics) and writes benchmarks/results/serve_load.json. Also checks that the
server compiled nothing after warm-up.

--abuse-fraction F makes a seeded fraction F of the requests bad ones, sent over raw sockets: malformed or
truncated JSON, a form body, a body just over --max-body-bytes, one declaring 1 GiB of which 64 KiB are
streamed, a chunked body over the limit, too many texts, wrong types, JSON nested 5,000 deep, invalid UTF-8,
a lone surrogate, an empty list, and clients that hang up mid-body. Throughput and latency are then those of
the valid requests; each level also reports the bad requests' statuses, how many got another status than
expected, and the server's resident memory (VmRSS) before and after. Writes serve_abuse.json by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def http(url: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metrics(url: str) -> dict[str, float]:
    """/metrics summed by sample name, plus jaxft_requests_total by status (all routes) as
    'jaxft_requests_total{status="..."}'."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(http(url + "/metrics")[1].decode()):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            if sample.name == "jaxft_requests_total":
                key = f'jaxft_requests_total{{status="{sample.labels["status"]}"}}'
                values[key] = values.get(key, 0.0) + sample.value
    return values


def tweets(limit: int = 2000) -> list[str]:
    from jaxft.data.ner_readers import read_sentences
    from jaxft.data.readers import packaged_tweets_ner_path
    sentences = read_sentences(packaged_tweets_ner_path())
    return [" ".join(s.tokens) for s in sentences[-limit:] if s.tokens]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


BAD_KINDS = ("truncated_json", "form_body", "just_over_limit", "far_over_limit", "chunked_over_limit",
             "too_many_texts", "wrong_type", "deep_nesting", "invalid_utf8", "lone_surrogate", "empty_list",
             "hang_up_mid_body")


def bad_request(kind: str, rng: random.Random, max_body: int, max_texts: int) -> tuple[list[bytes], int | None]:
    """(what the client sends, in pieces; the status it must get, None for a client that hangs up)."""
    def post(body: bytes, content_type: str = "application/json", length: int | None = None) -> bytes:
        return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body

    valid = json.dumps({"texts": ["John went to Paris", "the weather in London"]}).encode()
    if kind == "truncated_json":
        return [post(valid[:rng.randint(0, len(valid) - 1)])], 400
    if kind == "form_body":
        return [post(b"texts=John+went+to+Paris", "application/x-www-form-urlencoded")], 400
    if kind == "just_over_limit":
        return [post(json.dumps({"texts": ["x" * (max_body + rng.randint(1, 100))]}).encode())], 413
    if kind == "far_over_limit":
        return [post(b"", length=1 << 30), b"[" * 65536], 413
    if kind == "chunked_over_limit":
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = 65536
        return [head] + [b"%x\r\n" % chunk + b" " * chunk + b"\r\n"] * (max_body // chunk + 1), 413
    if kind == "too_many_texts":
        return [post(json.dumps({"texts": ["Paris"] * (max_texts + rng.randint(1, 50))}).encode())], 413
    if kind == "wrong_type":
        return [post(json.dumps(rng.choice([{"texts": [1]}, {"texts": "Paris"}, {"text": ["a"]}])).encode())], 422
    if kind == "deep_nesting":
        return [post(b"[" * 5000 + b"]" * 5000)], 400
    if kind == "invalid_utf8":
        return [post(b'{"texts": ["caf\xe9 \xff"]}')], 400
    if kind == "lone_surrogate":
        return [post(b'{"texts": ["Paris \\ud800"]}')], 422
    if kind == "empty_list":
        return [post(b'{"texts": []}')], 422
    if kind == "hang_up_mid_body":
        whole = post(valid)
        return [whole[:len(whole) - len(valid) // 2]], None
    raise ValueError(kind)


def send_raw(url: str, parts: list[bytes], hang_up: bool) -> int | None:
    """Send the pieces over one connection; the answer's status (None: none, or the client hung up)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (413) and closed before the client finished sending: read the answer
        if hang_up:
            return None
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
        except ConnectionResetError:
            return None
        return int(data.split(b" ", 2)[1])


def server_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def run_level(url: str, texts: list[str], concurrency: int, requests: int, seconds: float, per_request: int,
              abuse_fraction: float = 0.0, seed: int = 0, max_body: int = 1 << 20, max_texts: int = 64,
              pid: int | None = None) -> dict:
    latencies: list[float] = []
    errors = [0]
    counter = [0]
    bad_statuses: dict[str, int] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        while True:
            with lock:
                if counter[0] >= requests or time.perf_counter() > deadline:
                    return
                index = counter[0]
                counter[0] += 1
            rng = random.Random(f"{seed}:{concurrency}:{index}")
            if rng.random() < abuse_fraction:
                kind = rng.choice(BAD_KINDS)
                parts, expected = bad_request(kind, rng, max_body, max_texts)
                status = send_raw(url, parts, hang_up=expected is None)
                with lock:
                    key = f"{kind}:{status}"
                    bad_statuses[key] = bad_statuses.get(key, 0) + 1
                    if status != expected:
                        unexpected.append(f"{kind}: {status}, expected {expected}")
                continue
            batch = [texts[(index * per_request + j) % len(texts)] for j in range(per_request)]
            start = time.perf_counter()
            status, _ = http(url + "/predict", json.dumps({"texts": batch}).encode())
            elapsed = time.perf_counter() - start
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    before = metrics(url)
    rss_before = server_rss_mib(pid)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = metrics(url)
    rss_after = server_rss_mib(pid)
    batches = after["jaxft_batch_items_count"] - before["jaxft_batch_items_count"]
    items = after["jaxft_batch_items_sum"] - before["jaxft_batch_items_sum"]
    abuse = {}
    if abuse_fraction > 0:
        status_500 = 'jaxft_requests_total{status="500"}'
        abuse = {"bad_requests": sum(bad_statuses.values()),
                 "bad_by_kind_and_status": dict(sorted(bad_statuses.items())),
                 "unexpected_statuses": unexpected, "server_500s": after.get(status_500, 0) - before.get(status_500, 0)}
    if rss_before is not None:
        abuse.update(rss_mib_before=round(rss_before, 1), rss_mib_after=round(rss_after, 1),
                     rss_growth_mib=round(rss_after - rss_before, 1))
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors[0], "wall_s": wall, **abuse,
            "requests_per_s": len(latencies) / wall, "texts_per_s": len(latencies) * per_request / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p90_ms": 1000 * percentile(latencies, 90),
            "p99_ms": 1000 * percentile(latencies, 99), "mean_ms": 1000 * statistics.fmean(latencies),
            "model_batches": int(batches), "mean_items_per_batch": items / max(batches, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/jaxft_exports/ner")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=200, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per level at most")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--server-args", default="", help="extra serve flags, e.g. '--batch-sizes 1,8,32'")
    parser.add_argument("--abuse-fraction", type=float, default=0.0,
                        help="fraction of requests that are bad ones (malformed, oversized, hung up; see above)")
    parser.add_argument("--seed", type=int, default=0, help="which requests are bad, and how")
    parser.add_argument("--max-body-bytes", type=int, default=None,
                        help="the server's limit (passed to a server started here; default the serve default)")
    parser.add_argument("--max-texts", type=int, default=None, help="likewise")
    parser.add_argument("--out", default=None,
                        help="default benchmarks/results/serve_load.json, serve_abuse.json with --abuse-fraction")
    args = parser.parse_args()
    from jaxft.serve.inputs import Limits
    max_body = args.max_body_bytes or Limits.max_body_bytes
    max_texts = args.max_texts or Limits.max_texts
    out = args.out or str(REPO / "benchmarks" / "results" /
                          ("serve_abuse.json" if args.abuse_fraction > 0 else "serve_load.json"))

    process = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "jaxft.main", "serve", "--model", args.model, "--port", str(port),
                   "--max-body-bytes", str(max_body), "--max-texts", str(max_texts), *args.server_args.split()]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
    try:
        started = time.perf_counter()
        while True:
            if process is not None and process.poll() is not None:
                print(process.stderr.read()[-3000:], file=sys.stderr)
                return 1
            try:
                status, raw = http(url + "/health", timeout=5)
                if status == 200:
                    health = json.loads(raw)
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.perf_counter() - started > 600:
                print("server not ready after 600 s", file=sys.stderr)
                return 1
            time.sleep(1)
        print(f"server ready: {health['compilations']} shapes (batch {health['batch_sizes']} x length "
              f"{health['length_buckets']}), warm-up {health['warmup_seconds']} s")
        texts = tweets()
        rows = [run_level(url, texts, int(c), args.requests, args.seconds, args.texts_per_request,
                          args.abuse_fraction, args.seed, max_body, max_texts,
                          process.pid if process is not None else None)
                for c in args.concurrency.split(",")]
        final = metrics(url)
        compiles_after = final["jaxft_compilations"] - final["jaxft_warmup_compilations"]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    print(f"\n{'conc':>4} {'requests':>8} {'err':>3} {'req/s':>7} {'texts/s':>7} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'items/batch':>11}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['requests']:>8} {r['errors']:>3} {r['requests_per_s']:>7.1f} "
              f"{r['texts_per_s']:>7.1f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['mean_items_per_batch']:>11.2f}")
    if args.abuse_fraction > 0 or any("rss_mib_after" in r for r in rows):
        print(f"\n{'conc':>4} {'bad':>5} {'unexpected':>10} {'500s':>4} {'RSS before MiB':>14} {'after':>7} "
              f"{'growth':>6}")
        for r in rows:
            print(f"{r['concurrency']:>4} {r.get('bad_requests', 0):>5} {len(r.get('unexpected_statuses', [])):>10} "
                  f"{int(r.get('server_500s', 0)):>4} {r.get('rss_mib_before') or 0:>14.1f} "
                  f"{r.get('rss_mib_after') or 0:>7.1f} {r.get('rss_growth_mib') or 0:>+6.1f}")
            for line in r.get("unexpected_statuses", [])[:5]:
                print(f"     unexpected: {line}")
    print(f"compilations after warm-up: {int(compiles_after)}")
    result = {"model": args.model, "texts_per_request": args.texts_per_request, "abuse_fraction": args.abuse_fraction,
              "seed": args.seed, "limits": {"max_body_bytes": max_body, "max_texts": max_texts}, "health": health,
              "compilations_after_warmup": int(compiles_after), "levels": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
