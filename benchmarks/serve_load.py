r"""Loopback load test of `python -m jaxft.main serve`: throughput and latency at several concurrency levels.

    python benchmarks/serve_load.py [--model /tmp/jaxft_exports/ner] [--concurrency 1,4,16]
                                    [--requests 200] [--seconds 60] [--texts-per-request 1]

Starts the server as a subprocess on 127.0.0.1 (or uses --url), waits for /health, then for each
concurrency level runs that many client threads, each sending POST /predict requests one after another,
until --requests requests are done or --seconds have passed (both bound every level). Request texts are
tweets from the packaged NER data (cycled). Prints a table (requests/s, texts/s, p50/p90/p99 latency, mean
items per model batch from /metrics) and writes benchmarks/results/serve_load.json. Also checks that the
server compiled nothing after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

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
    values = {}
    for line in http(url + "/metrics")[1].decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def tweets(limit: int = 2000) -> list[str]:
    from jaxft.data.readers import packaged_tweets_ner_path, read_sentences
    sentences = read_sentences(packaged_tweets_ner_path())
    return [" ".join(s.tokens) for s in sentences[-limit:] if s.tokens]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def run_level(url: str, texts: list[str], concurrency: int, requests: int, seconds: float, per_request: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    counter = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        while True:
            with lock:
                if counter[0] >= requests or time.perf_counter() > deadline:
                    return
                index = counter[0]
                counter[0] += 1
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
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = metrics(url)
    batches = after["jaxft_batch_items_count"] - before["jaxft_batch_items_count"]
    items = after["jaxft_batch_items_sum"] - before["jaxft_batch_items_sum"]
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors[0], "wall_s": wall,
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
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args()

    process = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "jaxft.main", "serve", "--model", args.model, "--port", str(port),
                   *args.server_args.split()]
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
        rows = [run_level(url, texts, int(c), args.requests, args.seconds, args.texts_per_request)
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
    print(f"compilations after warm-up: {int(compiles_after)}")
    result = {"model": args.model, "texts_per_request": args.texts_per_request, "health": health,
              "compilations_after_warmup": int(compiles_after), "levels": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
