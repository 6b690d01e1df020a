r"""PEFT methods side by side on the NER default: trainable parameters, optimizer-state bytes, checkpoint size,
step time, peak memory and dev/test F1, one full training run per (method, seed), one run at a time.

    python benchmarks/peft_methods.py --out runs/peft_methods                     # every method, seed 0
    python benchmarks/peft_methods.py --out runs/peft_methods --methods full,lora --seeds 0,1,2
    python benchmarks/peft_methods.py --out runs/peft_methods --table-only        # re-print from results

Each run is `python -m jaxft.main --config <recipe> --workdir <out>/<method>-s<seed>` in a child process
(under /usr/bin/time -v when present, else a Python wrapper), so its peak resident memory is its own.
Existing finished runs are reused unless --rerun. Writes <out>/runs.jsonl and <out>/table.md.
Optimizer state, train-step memory (XLA's memory analysis of the compiled step) and step time (median of 5
compiled steps on a 32 x 128 batch, methods measured one after another) come from the model and recipe
alone, measured when the table is made; train_seconds of the runs (compiles included) are in runs.jsonl.
Runtime: about 6-8 minutes per run on a 2-core CPU (each is the 10-epoch NER default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# method -> (recipe, config overrides). LoRA's settings were picked on dev (see configs/ner_lora.py); the
# other PEFT methods reuse its learning rate and schedule untuned. What trains besides the method's own
# parameters: LoRA/DoRA and Houlsby the head and the LayerNorms (as in their recipes/paper), the others
# only the head.
# The other methods keep the 10 epochs their recorded rows were measured with (LoRA's recipe moved to 15).
HEAD = {"peft.modules_to_save": "auto"}
TEN = {"train.num_epochs": 10}
METHODS = {
    "full": ("configs/ner.py", {}),
    "lora": ("configs/ner_lora.py", {}),
    "dora": ("configs/ner_lora.py", {"peft.method": "dora", **TEN}),
    "bitfit": ("configs/ner_lora.py", {"peft.method": "bitfit", **HEAD, **TEN}),
    "houlsby": ("configs/ner_lora.py", {"peft.method": "houlsby", "peft.adapter_size": 64, **TEN}),
    "pfeiffer": ("configs/ner_lora.py", {"peft.method": "pfeiffer", "peft.adapter_size": 64, **HEAD, **TEN}),
    "prefix": ("configs/ner_lora.py", {"peft.method": "prefix", "peft.prefix_length": 16, **HEAD, **TEN}),
}

WRAPPER = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_module("jaxft.main", run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def command(recipe: str, workdir: Path, seed: int, overrides: dict, extra: list[str]) -> list[str]:
    args = ["jaxft.main", "--config", recipe, "--workdir", str(workdir), f"--config.train.seed={seed}",
            "--config.train.progress_bar=False", *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]
    if shutil.which("time") and Path("/usr/bin/time").exists():
        return ["/usr/bin/time", "-v", sys.executable, "-m", *args]
    return [sys.executable, "-c", WRAPPER, *args]


def peak_rss_mib(log: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log) or re.search(r"PEAK_RSS_KB (\d+)", log)
    return int(match.group(1)) / 1024 if match else None


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def checkpoint_bytes(workdir: Path) -> int:
    """Size of one checkpoint (the largest step folder; they are all the same size)."""
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit()]
    return max((dir_bytes(p) for p in steps), default=0)


def static_costs(recipe: str, overrides: dict) -> dict[str, int]:
    """From shapes only (no training): AdamW state bytes, and the compiled train step's memory for one
    batch of 32 x 128 (XLA's memory analysis: arguments + temporaries + outputs not aliased to inputs)."""
    import jax
    import jax.numpy as jnp

    from jaxft.models import TOKEN_CLASSIFICATION, from_pretrained
    from jaxft.peft import run as peft_run
    from jaxft.tasks.base import resolve_model_path
    from jaxft.train.optim import make_optimizer
    from jaxft.train.state import split_model
    from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

    config = load_recipe(recipe, overrides)
    model = from_pretrained(resolve_model_path(config.model.name_or_path), task=TOKEN_CLASSIFICATION,
                            num_labels=21, ignore_mismatched_sizes=True)
    trainable = peft_run.setup(config, model)
    parts, params, frozen, rng = split_model(model, *(() if trainable is None else (trainable,)))
    tx = make_optimizer(config.optim, 1000, params)
    state = jax.eval_shape(lambda p, r: init_train_state(p, r, tx), params, rng)
    opt_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state["opt_state"]))

    def loss(m, b):
        return token_cross_entropy(m(b["input_ids"], b["attention_mask"]), b["labels"])

    shape = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    batch = {k: jax.ShapeDtypeStruct((1, config.train.batch_size, config.data.max_length), jnp.int32)
             for k in ("input_ids", "attention_mask", "labels")}
    step = make_train_step(parts, tx, loss)
    memory = step.lower(state, shape(frozen), batch).compile().memory_analysis()
    step_bytes = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                  - memory.alias_size_in_bytes)
    return {"optimizer_bytes": opt_bytes, "step_memory_bytes": step_bytes,
            "step_seconds": timed_steps(step, tx, params, frozen, rng, batch)}


def timed_steps(step, tx, params, frozen, rng, batch, repeats: int = 5) -> float:
    """Median wall time of one compiled train step on a full 32 x 128 batch (after 2 warm-up steps)."""
    import jax
    import numpy as np

    from jaxft.train.step import init_train_state

    generator = np.random.default_rng(0)
    shape = batch["input_ids"].shape
    arrays = {"input_ids": generator.integers(1000, 20000, shape).astype(np.int32),
              "attention_mask": np.ones(shape, np.int32),
              "labels": generator.integers(0, 21, shape).astype(np.int32)}
    state = jax.jit(lambda p, r: init_train_state(p, r, tx))(params, rng)
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        state, metrics = step(state, frozen, arrays)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def load_recipe(recipe: str, overrides: dict):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe", REPO / recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for dotted, value in overrides.items():
        group, key = dotted.split(".")
        config[group][key] = value
    return config


def run_one(out: Path, method: str, seed: int, rerun: bool, extra: list[str]) -> dict:
    recipe, overrides = METHODS[method]
    workdir = out / f"{method}-s{seed}"
    results_path = workdir / "results.json"
    log_path = out / f"{method}-s{seed}.log"
    if rerun and workdir.exists():
        shutil.rmtree(workdir)
    if not results_path.exists():
        workdir.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {method} seed {seed} ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command(recipe, workdir, seed, overrides, extra), cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        log_path.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{method} seed {seed} failed (exit {done.returncode}); see {log_path}")
        (workdir / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    results = json.loads(results_path.read_text())
    log = log_path.read_text() if log_path.exists() else ""
    wall = workdir / "wall_seconds.txt"
    return {
        "method": method, "seed": seed, "test_f1": results["test"]["f1"], "dev_f1": results["dev"]["f1"],
        "trainable_params": results["trainable_params"], "total_params": results["total_params"],
        "train_seconds": results["train_seconds"], "steps": results["steps"],
        "step_seconds": results["train_seconds"] / max(results["steps"], 1),
        "checkpoint_bytes": checkpoint_bytes(workdir), "export_bytes": dir_bytes(workdir / "export"),
        "adapter_bytes": dir_bytes(workdir / "export_adapter"), "peak_rss_mib": peak_rss_mib(log),
        "wall_seconds": float(wall.read_text()) if wall.exists() else None,
    }


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def table(rows: list[dict], costs: dict[str, dict]) -> str:
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    full = by_method.get("full")
    lines = ["| method | trainable params (% of total) | optimizer state | checkpoint | step time | "
             "train-step memory (XLA) | peak RSS | dev F1 | test F1 |", "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        runs = by_method.get(method)
        if not runs:
            continue
        r = runs[0]
        f1s = [x["test_f1"] for x in runs]
        f1 = f"{mean(f1s):.4f}" + (f" ± {statistics.stdev(f1s):.4f} ({len(f1s)} seeds)" if len(f1s) > 1 else " (1 seed)")
        ckpt = mean([x["checkpoint_bytes"] for x in runs])
        ratio = f" ({100 * ckpt / mean([x['checkpoint_bytes'] for x in full]):.1f}%)" if full and method != "full" else ""
        lines.append(
            f"| {method} | {r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%) | "
            f"{costs[method]['optimizer_bytes'] / 2**20:.2f} MiB | {ckpt / 2**20:.2f} MiB{ratio} | "
            f"{costs[method]['step_seconds']:.2f} s | {costs[method]['step_memory_bytes'] / 2**20:,.0f} MiB | "
            f"{mean([x['peak_rss_mib'] for x in runs]):,.0f} MiB | "
            f"{mean([x['dev_f1'] for x in runs]):.4f} | {f1} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/peft_methods")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0", help="comma-separated; applied to every listed method")
    parser.add_argument("--rerun", action="store_true", help="train again even where results exist")
    parser.add_argument("--table-only", action="store_true", help="only collect finished runs into the table")
    parser.add_argument("extra", nargs="*", help="more --config.* flags for every run (after --)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        for method in methods:
            for seed in seeds:
                run_one(out, method, seed, args.rerun, args.extra)
    rows = []
    for workdir in sorted(out.glob("*-s*")):
        if workdir.is_dir() and (workdir / "results.json").exists():
            method, seed = workdir.name.rsplit("-s", 1)
            if method in METHODS:
                rows.append(run_one(out, method, int(seed), False, []))
    with open(out / "runs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    costs = {m: static_costs(*METHODS[m]) for m in sorted({r["method"] for r in rows})}
    (out / "static_costs.json").write_text(json.dumps(costs, indent=2) + "\n")
    text = table(rows, costs)
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
