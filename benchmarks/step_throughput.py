r"""Train-step throughput: jaxft's jit-compiled step against PyTorch `transformers` eager, same model and batch.

    python benchmarks/step_throughput.py [--models minilm,base] [--batch 32] [--length 128] [--steps 10]
                                         [--method full|lora]

For each model (the packaged all-MiniLM-L6-v2, and a BERT-base-sized random config: 12 layers, hidden 768)
and each framework, a separate process times a full token-classification train step (forward, backward,
clipping, AdamW) on a [batch, length] batch, with dropout on as in training. Printed per row: the first
step (jaxft: includes XLA compilation of the step), the median step time, tokens/s, model FLOPs utilisation (XLA's
FLOP count of the compiled step over the float32 matmul peak measured on this machine in the same run),
peak host memory (max RSS of the process) and the number of trainable parameters. The ratio column is
PyTorch time / jaxft time.

--method lora times the LoRA train step of configs/ner_lora.py instead: jaxft applies the recipe's `peft`
settings with its own set-up (jaxft.peft.run.setup, then split_model / make_optimizer as the Trainer does) and
uses the recipe's optimizer settings; PyTorch wraps the same model with `peft.get_peft_model` and an equivalent
LoraConfig (same rank, alpha, dropout, target layers and fully trained modules), AdamW over the trainable
parameters only, gradients clipped to norm 1.0. MFU uses XLA's FLOP count of the jaxft LoRA step for both rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

BASE_CONFIG = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512)
NUM_LABELS = 21
METHODS = ("full", "lora")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA_RECIPE = os.path.join(REPO, "configs", "ner_lora.py")
DEFAULT_OUTPUT = {"full": "benchmarks/results/step_throughput.json",
                  "lora": "benchmarks/results/step_throughput_lora.json"}


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


def lora_recipe():
    """configs/ner_lora.py's get_config(): the LoRA settings both sides use."""
    from jaxft.config import load_recipe
    config = load_recipe(LORA_RECIPE)
    if config.peft.method != "lora":
        raise SystemExit(f"{LORA_RECIPE}: peft.method is {config.peft.method!r}, expected 'lora'")
    return config


def trainable_counts(named_sizes) -> dict:
    """Trainable parameter count, total and split into LoRA matrices and fully trained parameters."""
    adapters = sum(size for name, size in named_sizes if "lora" in name.lower())
    total = sum(size for _, size in named_sizes)
    return {"trainable_params": total, "lora_params": adapters, "fully_trained_params": total - adapters}


def jaxft_model(folder: str, method: str):
    """(model, trainable filter or None, optim config): for lora, the recipe's PEFT set-up as a training run does."""
    import jaxft.models as jm
    from jaxft.config import base_config
    from jaxft.peft import run as peft_run

    model = jm.from_pretrained(folder, task="token-classification", num_labels=NUM_LABELS)
    if method == "full":
        return model, None, base_config().optim
    config = lora_recipe()
    return model, peft_run.setup(config, model), config.optim


def jaxft_worker(folder: str, batch_size: int, length: int, steps: int, method: str) -> dict:
    import jax

    from jaxft.models.encoder import model_inputs
    from jaxft.train.optim import make_optimizer
    from jaxft.train.state import split_model
    from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

    model, trainable, optim = jaxft_model(folder, method)
    parts, params, frozen, rng = split_model(model, *(() if trainable is None else (trainable,)))
    tx = make_optimizer(optim, 1000, params)
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
            "flops": flops, "peak_rss_mib": peak_rss_mib(),
            **trainable_counts([(name, int(value.size)) for name, value in params.items()])}


def peft_target_regex(rule: str) -> str:
    """jaxft's module rule (matches the end of a module path at a dot) as a regex peft full-matches."""
    return rf"(?:.*\.)?(?:{rule})"


def peft_modules_to_save(rule: str) -> list[str] | None:
    """jaxft's modules_to_save as peft's list of module-name suffixes ("auto": the head, which peft's
    TOKEN_CLS task type adds itself)."""
    if rule == "auto" or not rule:
        return None
    names = rule.split("|")
    if not all(re.fullmatch(r"\w+", name) for name in names):
        raise SystemExit(f"peft.modules_to_save {rule!r}: only plain names joined by | translate to peft")
    return names


def torch_lora_model(model, peft_config):
    import peft

    lora = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=peft_config.rank, lora_alpha=peft_config.alpha,
                           lora_dropout=peft_config.dropout, use_rslora=peft_config.rslora,
                           target_modules=peft_target_regex(peft_config.target_modules),
                           modules_to_save=peft_modules_to_save(peft_config.modules_to_save))
    return peft.get_peft_model(model, lora)


def torch_model(folder: str, method: str):
    """(model in train mode, AdamW learning rate, weight decay)."""
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(folder, num_labels=NUM_LABELS)
    if method == "full":
        return model.train(), 1e-4, 0.01
    config = lora_recipe()
    return torch_lora_model(model, config.peft).train(), config.optim.learning_rate, config.optim.weight_decay


def torch_worker(folder: str, batch_size: int, length: int, steps: int, method: str) -> dict:
    import torch

    model, learning_rate, weight_decay = torch_model(folder, method)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    batch = {k: torch.tensor(v).long() for k, v in random_batch(batch_size, length).items()}

    def run_step():
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first, times = time_steps(run_step, steps)
    return {"first_step_s": first, "step_s": statistics.median(times), "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(), "attention": model.config._attn_implementation,
            **trainable_counts([(name, p.numel()) for name, p in trainable])}


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
               "--length", str(args.length), "--steps", str(args.steps), "--scratch", args.scratch,
               "--method", args.method]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "JAXFT_COMPILATION_CACHE": "0"})
    if done.returncode != 0:
        raise SystemExit(f"{framework}/{model} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def trainable_note(model: str, jx: dict, pt: dict) -> str | None:
    """Why the two sides train a different number of parameters (None when they match)."""
    if jx["trainable_params"] == pt["trainable_params"]:
        return None
    parts = [f"{label}: jaxft {jx[key]:,}, PyTorch {pt[key]:,}"
             for key, label in (("lora_params", "LoRA matrices"), ("fully_trained_params", "fully trained"))
             if jx[key] != pt[key]]
    return (f"note: {model} trains {jx['trainable_params']:,} parameters in jaxft and {pt['trainable_params']:,} "
            f"in PyTorch; the difference is in {'; '.join(parts)}")


def print_rows(model: str, jx: dict, pt: dict, tokens: int, peak: float) -> None:
    for name, result in (("jaxft", jx), ("PyTorch eager", pt)):
        mfu = jx["flops"] / result["step_s"] / peak
        ratio = f"{pt['step_s'] / jx['step_s']:.2f}x" if name == "jaxft" else ""
        print(f"| {model} | {name} | {result['first_step_s']:.1f} | {result['step_s']:.3f} | "
              f"{tokens / result['step_s']:,.0f} | {mfu:.0%} | {result['peak_rss_mib']:,.0f} | {ratio} | "
              f"{result['trainable_params']:,} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--method", choices=METHODS, default="full",
                        help="full fine-tuning, or LoRA as configs/ner_lora.py (PyTorch side: peft)")
    parser.add_argument("--scratch", default="/tmp/jaxft-bench")
    parser.add_argument("--output", help=f"default: {DEFAULT_OUTPUT['full']} (full), {DEFAULT_OUTPUT['lora']} (lora)")
    parser.add_argument("--worker", choices=("jaxft", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.output = args.output or DEFAULT_OUTPUT[args.method]
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        folder = model_folder(args.models, args.scratch)
        worker = jaxft_worker if args.worker == "jaxft" else torch_worker
        print(json.dumps(worker(folder, args.batch, args.length, args.steps, args.method)))
        return

    os.makedirs(args.scratch, exist_ok=True)
    peak = matmul_peak_flops()
    tokens = args.batch * args.length
    rows, notes = [], []
    method = "LoRA as configs/ner_lora.py (PyTorch: peft)" if args.method == "lora" else "full fine-tuning"
    print(f"float32 matmul peak measured here: {peak / 1e9:.0f} GFLOP/s; batch {args.batch} x {args.length}; "
          f"{method}\n")
    print("| model | framework | first step (s) | step (s) | tokens/s | MFU | peak RSS (MiB) | PyTorch/jaxft | "
          "trainable params |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        model_folder(model, args.scratch)
        jx, pt = run_worker("jaxft", model, args), run_worker("torch", model, args)
        print_rows(model, jx, pt, tokens, peak)
        notes.append(trainable_note(model, jx, pt))
        rows.append({"model": model, "jaxft": jx, "torch": pt})
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"method": args.method, "matmul_peak_flops": peak, "batch": args.batch, "length": args.length,
                   "rows": rows}, f, indent=2)
    print(f"\nMFU uses XLA's FLOP count of the compiled jaxft {args.method} step for both rows (same model, same "
          "work).")
    for note in filter(None, notes):
        print(note)


if __name__ == "__main__":
    main()
