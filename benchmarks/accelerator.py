r"""Train-step speed on the device at hand: jaxft against PyTorch `transformers` on the same device, batch and
model, measured in the same run.

    python benchmarks/accelerator.py [--cases base-32x128,base-16x512,minilm-32x128,base-packed-16x512]
                                     [--steps 20] [--torch eager,compile] [--output FILE]
    python benchmarks/accelerator.py --quick        # CPU, a tiny model, about a minute (CI runs this)

Every (case, framework) runs in its own process. A case is a model (`base`: BERT-base size, random weights;
`minilm`: the packaged all-MiniLM-L6-v2; `tiny`: 2 layers of 64, for --quick) and a batch [rows x length];
`packed` cases fill every row with several variable-length examples (lengths drawn from 16..length/2) and
pass segment ids, which jaxft's attention entry point takes as they are.

jaxft: a token-classification train step (forward, backward, clipping, AdamW) from make_train_step, compute
dtype as model.dtype=auto picks it (bfloat16 on GPU/TPU, float32 on CPU), attention as model.attention=auto
picks it, hidden dropout 0.1 and attention dropout --attention-dropout (0.0 by default: what lets the fused
kernels run). Reported: the first step (includes compilation), the median step with the batch already on the
device, the median step of the training loop's own path (collate, the prefetch thread's device_put, the
summed-metrics step), tokens/s, MFU (XLA's FLOP count of the compiled step over the matmul peak of this
device measured in the same run: bfloat16 on GPU/TPU, float32 on CPU) and peak device memory.
PyTorch: BertForTokenClassification with SDPA attention, bfloat16 autocast on GPU (float32 on CPU), AdamW,
clipping; eager and torch.compile. Packed rows: BERT's PyTorch attention takes no segment ids (padding-free
batches need flash-attention-2 position-id unpadding, which BERT's SDPA path does not do), so the packed
cases have no PyTorch row; their jaxft row is compared with the padded case of the same tokens.
The ratio column is PyTorch step time / jaxft step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_throughput import time_steps  # noqa: E402 - the same first-step / per-step timing for PyTorch
MODELS = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512),
    "tiny": dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512),
}
NUM_LABELS = 21
FULL_CASES = "base-32x128,base-16x512,minilm-32x128,base-packed-16x512"
QUICK_CASES = "tiny-8x64,tiny-packed-8x64"


def parse_case(case: str) -> dict:
    name, shape = case.rsplit("-", 1)
    rows, length = (int(x) for x in shape.split("x"))
    packed = name.endswith("-packed")
    return {"case": case, "model": name.removesuffix("-packed"), "rows": rows, "length": length, "packed": packed}


def model_folder(model: str, scratch: str) -> str:
    if model == "minilm":
        from jaxft.data.readers import packaged_minilm_path
        return str(packaged_minilm_path())
    folder = os.path.join(scratch, f"bert-{model}-random")
    if not os.path.exists(os.path.join(folder, "config.json")):
        import torch
        import transformers
        torch.manual_seed(0)
        transformers.BertForTokenClassification(
            transformers.BertConfig(num_labels=NUM_LABELS, hidden_dropout_prob=0.1, **MODELS[model])
        ).save_pretrained(folder)
    return folder


def rows_of(case: dict, seed: int = 0) -> list[dict]:
    """Examples for one batch: `rows` full-length ones, or for packed cases enough variable-length ones to
    fill `rows` rows of `length` tokens."""
    import numpy as np
    rng = np.random.default_rng(seed)
    if not case["packed"]:
        lengths = [case["length"]] * case["rows"]
    else:
        lengths, budget = [], case["rows"] * case["length"]
        while budget > 16:
            n = int(min(rng.integers(16, case["length"] // 2 + 1), budget))
            lengths.append(n)
            budget -= n
    return [{"input_ids": rng.integers(1000, 30000, n).astype(np.int32),
             "labels": rng.integers(0, NUM_LABELS, n).astype(np.int32)} for n in lengths]


def collated(case: dict, rows: list[dict]) -> dict:
    from jaxft.data import batching
    pad = {"input_ids": 0, "labels": -100}
    if case["packed"]:
        groups = batching.pack_rows([len(r["input_ids"]) for r in rows], range(len(rows)), case["length"])
        batch = batching.collate_packed(rows, groups[:case["rows"]], case["rows"], case["length"], pad)
    else:
        batch = batching.collate(rows, case["rows"], [case["length"]], pad)
    return {k: v[None] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- peak


def matmul_peak(dtype_name: str, size: int) -> float:
    """FLOP/s of a square matmul chain in this dtype on this device (median of 5 timed runs)."""
    import jax
    import jax.numpy as jnp
    dtype = jnp.dtype(dtype_name)
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    f = jax.jit(lambda x: (x @ a) @ a)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(5):
        started = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - started)
    return 4 * size ** 3 / statistics.median(times)


# ---------------------------------------------------------------------------------------------- jaxft


def jaxft_worker(case: dict, folder: str, steps: int, attention_dropout: float) -> dict:
    import jax
    import numpy as np

    import jaxft.models as jm
    from jaxft import runtime
    from jaxft.config import base_config
    from jaxft.models.encoder import describe_attention, model_inputs
    from jaxft.train.optim import make_optimizer
    from jaxft.train.prefetch import Prefetcher
    from jaxft.train.state import split_model
    from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy, zero_metric_sums

    config = base_config()
    dtype, _, compute = runtime.describe_compute(config.model)
    model = jm.from_pretrained(folder, task=jm.TOKEN_CLASSIFICATION, num_labels=NUM_LABELS, dtype=dtype,
                               attention_dropout=attention_dropout)
    attention = describe_attention(model.config, dtype, packed=case["packed"])
    model.train()
    parts, params, frozen, rng = split_model(model)
    tx = make_optimizer(config.optim, 1000, params)
    loss = lambda m, b: token_cross_entropy(m(**model_inputs(b)), b["labels"])  # noqa: E731
    step = make_train_step(parts, tx, loss, summed=True)
    state = init_train_state(params, rng, tx)
    sums = jax.device_put(zero_metric_sums())
    batch = jax.device_put(collated(case, rows_of(case)))

    started = time.perf_counter()
    state, sums = step(state, frozen, batch, sums)
    jax.block_until_ready(sums)
    first = time.perf_counter() - started
    flops = step.lower(state, frozen, batch, sums).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))

    device_times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, sums = step(state, frozen, batch, sums)
        jax.block_until_ready(sums)
        device_times.append(time.perf_counter() - started)

    # the training loop's own path: collate on the host, device_put in the prefetch thread, dispatch
    host_rows = [rows_of(case, seed) for seed in range(steps)]
    started = time.perf_counter()
    with Prefetcher((jax.device_put(collated(case, rows)) for rows in host_rows), depth=2) as placed:
        for placed_batch in placed:
            state, sums = step(state, frozen, placed_batch, sums)
    jax.block_until_ready(sums)
    loop_step = (time.perf_counter() - started) / steps

    step_time = statistics.median(device_times)
    tokens = int(np.asarray(batch["attention_mask"]).sum())
    peak = matmul_peak("bfloat16" if dtype == "bfloat16" else "float32", 4096 if jax.default_backend() != "cpu" else 1024)
    memory = jax.devices()[0].memory_stats() or {}
    return {"framework": "jaxft", "first_step_s": first, "step_ms": 1e3 * step_time, "loop_step_ms": 1e3 * loop_step,
            "tokens_per_s": tokens / step_time, "tokens": tokens, "flops": flops, "matmul_peak_flops": peak,
            "mfu": flops / step_time / peak, "peak_device_mib": memory.get("peak_bytes_in_use", 0) / 2 ** 20 or None,
            "device": jax.devices()[0].device_kind, "compute": compute, "attention": attention,
            "jax": jax.__version__}


# ---------------------------------------------------------------------------------------------- torch


def torch_worker(case: dict, folder: str, steps: int, mode: str, attention_dropout: float) -> dict:
    import torch
    import transformers

    if case["packed"]:
        return {"framework": f"torch-{mode}", "skipped": "BERT's SDPA attention takes no packed rows"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.BertForTokenClassification.from_pretrained(
        folder, num_labels=NUM_LABELS, attn_implementation="sdpa", attention_probs_dropout_prob=attention_dropout
    ).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batch = {k: torch.as_tensor(v[0], dtype=torch.long, device=device) for k, v in collated(case, rows_of(case)).items()}
    forward = torch.compile(model) if mode == "compile" else model
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else torch.autocast(device, enabled=False)

    def run_step():
        with autocast:
            loss = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    first, times = time_steps(run_step, steps)
    step_time = statistics.median(times)
    tokens = int(batch["attention_mask"].sum())
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    return {"framework": f"torch-{mode}", "first_step_s": first, "step_ms": 1e3 * step_time,
            "tokens_per_s": tokens / step_time, "tokens": tokens, "peak_device_mib": peak, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------- driver


def run_worker(args, case: str, framework: str, scratch: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--cases", case,
               "--steps", str(args.steps), "--scratch", scratch, "--attention-dropout", str(args.attention_dropout)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"framework": framework, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| case | framework | step ms | loop step ms | tokens/s | MFU | peak device MiB | first step s | "
             "torch / jaxft |", "|---|---|---|---|---|---|---|---|---|"]
    jaxft = {r["case"]: r for r in results if r.get("framework") == "jaxft" and "step_ms" in r}
    for r in results:
        if "step_ms" not in r:
            lines.append(f"| {r['case']} | {r['framework']} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        ratio = jaxft.get(r["case"], {}).get("step_ms")
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else ""  # noqa: E731
        lines.append(f"| {r['case']} | {r['framework']} | {r['step_ms']:.2f} | {fmt(r.get('loop_step_ms'), '.2f')} | "
                     f"{r['tokens_per_s']:,.0f} | {fmt(r.get('mfu', None) and 100 * r['mfu'], '.1f')}"
                     f"{'%' if r.get('mfu') else ''} | {fmt(r.get('peak_device_mib'), ',.0f')} | "
                     f"{r['first_step_s']:.1f} | "
                     f"{'' if r['framework'] == 'jaxft' or not ratio else format(r['step_ms'] / ratio, '.2f') + 'x'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, 3 steps, torch eager only")
    parser.add_argument("--cases", default=None, help=f"comma-separated (default {FULL_CASES})")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--torch", default="eager,compile", help="PyTorch modes to time ('' for none)")
    parser.add_argument("--attention-dropout", type=float, default=0.0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--scratch", default=os.path.join(REPO, "build", "accelerator"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.steps, args.torch = args.cases or QUICK_CASES, min(args.steps, 3), "eager"
    cases = [parse_case(c) for c in (args.cases or FULL_CASES).split(",") if c]

    if args.worker:
        case = cases[0]
        folder = model_folder(case["model"], args.scratch)
        if args.worker == "jaxft":
            result = jaxft_worker(case, folder, args.steps, args.attention_dropout)
        else:
            result = torch_worker(case, folder, args.steps, args.worker.removeprefix("torch-"), args.attention_dropout)
        print(json.dumps({"case": case["case"], **result}))
        return 0

    os.makedirs(args.scratch, exist_ok=True)
    results = []
    for case in cases:
        model_folder(case["model"], args.scratch)
        for framework in ["jaxft"] + [f"torch-{m}" for m in args.torch.split(",") if m]:
            result = {"case": case["case"], **run_worker(args, case["case"], framework, args.scratch)}
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
