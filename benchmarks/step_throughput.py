r"""Train-step throughput: jaxft's jit-compiled step against PyTorch `transformers` eager, same model and batch.

    python benchmarks/step_throughput.py [--models minilm,base] [--batch 32] [--length 128] [--steps 10]

For each model (the packaged all-MiniLM-L6-v2, and a BERT-base-sized random config: 12 layers, hidden 768)
and each framework, a separate process times a full token-classification train step (forward, backward,
clipping, AdamW) on a [batch, length] batch, with dropout on as in training. Printed per row: the first
step (jaxft: includes XLA compilation of the step), the median step time, tokens/s, model FLOPs utilisation (XLA's
FLOP count of the compiled step over the float32 matmul peak measured on this machine in the same run),
and peak host memory (max RSS of the process). The ratio column is PyTorch time / jaxft time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BASE_CONFIG = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512)
NUM_LABELS = 21


def model_folder(name: str, scratch: str) -> str:
    from jaxft.data.readers import packaged_minilm_path
    if name == "minilm":
        return str(packaged_minilm_path())
    folder = os.path.join(scratch, "bert-base-random")
    if not os.path.exists(os.path.join(folder, "config.json")):
        import torch
        import transformers
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig(**BASE_CONFIG)).save_pretrained(folder)
    return folder


def random_batch(batch: int, length: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, 30000, (batch, length)).astype(np.int32),
            "attention_mask": np.ones((batch, length), np.int32),
            "labels": rng.integers(0, NUM_LABELS, (batch, length)).astype(np.int32)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(run_step, steps: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    run_step()
    first = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - started)
    return first, times


def jaxft_worker(folder: str, batch_size: int, length: int, steps: int) -> dict:
    import jax

    import jaxft.models as jm
    from jaxft.config import base_config
    from jaxft.models.encoder import model_inputs
    from jaxft.train.optim import make_optimizer
    from jaxft.train.state import split_model
    from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

    model = jm.from_pretrained(folder, task="token-classification", num_labels=NUM_LABELS)
    parts, params, frozen, rng = split_model(model)
    tx = make_optimizer(base_config().optim, 1000, params)
    step = make_train_step(parts, tx, lambda m, b: token_cross_entropy(m(**model_inputs(b)), b["labels"]))
    batch = {k: v[None] for k, v in random_batch(batch_size, length).items()}
    holder = {"state": init_train_state(params, rng, tx)}
    started = time.perf_counter()
    compiled = step.lower(holder["state"], frozen, batch).compile()
    compile_s = time.perf_counter() - started
    flops = compiled.cost_analysis()["flops"]

    def run_step():
        holder["state"], metrics = step(holder["state"], frozen, batch)
        jax.block_until_ready(metrics)

    first, times = time_steps(run_step, steps)
    # The first call reuses the executable compiled above for the FLOP count: add that compile time back.
    return {"first_step_s": first + compile_s, "compile_s": compile_s, "step_s": statistics.median(times),
            "flops": flops, "peak_rss_mib": peak_rss_mib()}


def torch_worker(folder: str, batch_size: int, length: int, steps: int) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(folder, num_labels=NUM_LABELS).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batch = {k: torch.tensor(v).long() for k, v in random_batch(batch_size, length).items()}

    def run_step():
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first, times = time_steps(run_step, steps)
    return {"first_step_s": first, "step_s": statistics.median(times), "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(), "attention": model.config._attn_implementation}


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    started = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(matmul(a))
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def run_worker(framework: str, model: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", framework, "--models", model, "--batch", str(args.batch),
               "--length", str(args.length), "--steps", str(args.steps), "--scratch", args.scratch]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "JAXFT_COMPILATION_CACHE": "0"})
    if done.returncode != 0:
        raise SystemExit(f"{framework}/{model} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scratch", default="/tmp/jaxft-bench")
    parser.add_argument("--output", default="benchmarks/results/step_throughput.json")
    parser.add_argument("--worker", choices=("jaxft", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder = model_folder(args.models, args.scratch)
        worker = jaxft_worker if args.worker == "jaxft" else torch_worker
        print(json.dumps(worker(folder, args.batch, args.length, args.steps)))
        return

    os.makedirs(args.scratch, exist_ok=True)
    peak = matmul_peak_flops()
    tokens = args.batch * args.length
    rows = []
    print(f"float32 matmul peak measured here: {peak / 1e9:.0f} GFLOP/s; batch {args.batch} x {args.length}\n")
    print("| model | framework | first step (s) | step (s) | tokens/s | MFU | peak RSS (MiB) | PyTorch/jaxft |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        model_folder(model, args.scratch)
        jx, pt = run_worker("jaxft", model, args), run_worker("torch", model, args)
        for name, result in (("jaxft", jx), ("PyTorch eager", pt)):
            mfu = jx["flops"] / result["step_s"] / peak
            ratio = f"{pt['step_s'] / jx['step_s']:.2f}x" if name == "jaxft" else ""
            print(f"| {model} | {name} | {result['first_step_s']:.1f} | {result['step_s']:.3f} | "
                  f"{tokens / result['step_s']:,.0f} | {mfu:.0%} | {result['peak_rss_mib']:,.0f} | {ratio} |")
        rows.append({"model": model, "jaxft": jx, "torch": pt})
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"matmul_peak_flops": peak, "batch": args.batch, "length": args.length, "rows": rows}, f, indent=2)
    print("\nMFU uses XLA's FLOP count of the compiled jaxft step for both rows (same model, same work).")


if __name__ == "__main__":
    main()
