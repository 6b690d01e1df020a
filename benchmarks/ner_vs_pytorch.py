r"""Benchmark: the default jaxft NER recipe against the PyTorch ``transformers`` Trainer, same data, same run.

Command (from the repository root):
    .venv/bin/python benchmarks/ner_vs_pytorch.py                 # full: 10 epochs each (~30 min on 2 cores)
    .venv/bin/python benchmarks/ner_vs_pytorch.py --quick         # smoke test: 1 epoch, at most 30 steps each
    .venv/bin/python benchmarks/ner_vs_pytorch.py --skip-torch --jaxft-flag=--config.model.dtype=bfloat16

What it runs:
  * jaxft: the real CLI, ``python -m jaxft.main --config configs/ner.py --workdir <workdir>/jaxft
    --config.train.progress_bar=False [--jaxft-flag ...]``, with ``JAXFT_COMPILATION_CACHE=0`` (so XLA
    compilation is paid in full, unless ``--warm-cache``); its numbers come from ``<workdir>/jaxft/results.json``.
  * PyTorch: this script again in a child process (``--torch-worker``): the packaged all-MiniLM-L6-v2 as
    ``AutoModelForTokenClassification`` under ``transformers.Trainer`` with the recipe's hyper-parameters
    (AdamW lr 1e-4, weight decay 0.01 off biases/LayerNorm, 10% warmup + linear decay, grad-norm clip 1.0,
    batch 32, max_length 128, seed 0, CPU), dynamic padding (``DataCollatorForTokenClassification``) and
    Trainer's default random sampler. Data, split (70/15/15 in file order: 1675/359/360 sentences), label
    list, tokenizer and sub-token labelling are jaxft's own (``jaxft.tasks.ner.read_splits`` /
    ``label_list``, ``jaxft.data.ner_encoding.encode_for_training``). Dev is evaluated after every epoch, the
    best-dev weights are kept in memory and the test set is scored once with them, as jaxft does; both
    sides score words with the same code (``encode_for_prediction`` windows, first sub-token,
    seqeval entity-level micro F1 in default mode via ``jaxft.evaluate.ner_metrics.ner_metrics``).

What it measures, per side:
  * wall_seconds: the whole child process (interpreter start, imports, data loading and tokenization,
    model loading, compilation, training, evaluation, and for jaxft checkpoints and the export);
  * train_seconds: time in training steps only (dev/test evaluation and checkpointing excluded; jaxft's
    includes the XLA compilation of the train step, PyTorch's the Trainer's set-up inside ``train()``);
  * tokens_per_sec: real (non-pad) input tokens trained on, summed over the steps actually run, divided
    by train_seconds;
  * dev_f1 (best dev evaluation) and test_f1 (test scored with the best-dev weights);
and the ratios jaxft/PyTorch: wall-time and train-time speed-up (PyTorch seconds / jaxft seconds),
tokens/s ratio, and F1 differences (jaxft minus PyTorch).

Timings are whole-process wall-clock times of the two runs, one after the other, on the same machine in the
same invocation; anything else running on the machine affects both. ``--torch-threads`` sets PyTorch's
intra-op threads (default: all cores); XLA uses all cores. Results: a markdown table on stdout and a JSON
file (``--output``, default benchmarks/results/ner_vs_pytorch.json).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "ner.py"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "ner_vs_pytorch.json"
QUICK_EPOCHS, QUICK_MAX_STEPS = 1, 30


# ---------------------------------------------------------------------------------------------- driver

def add_shared_arguments(parser: argparse.ArgumentParser, default_output: Path, workdir_help: str) -> None:
    """The options every ``*_vs_pytorch.py`` benchmark takes (besides --epochs)."""
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_EPOCHS} epoch, at most {QUICK_MAX_STEPS} steps each run")
    parser.add_argument("--skip-torch", action="store_true", help="run only jaxft")
    parser.add_argument("--skip-jaxft", action="store_true", help="run only PyTorch")
    parser.add_argument("--workdir", default=None,
                        help=f"{workdir_help}; must not hold an earlier run). Default: a temporary folder, "
                             "deleted afterwards")
    parser.add_argument("--output", default=None, help=f"JSON results (default {default_output.relative_to(REPO)})")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="let jaxft use its persistent XLA compilation cache (default: off, so compile "
                             "time is included in full)")
    parser.add_argument("--jaxft-flag", action="append", default=[], metavar="--config.KEY=VALUE",
                        help="extra flag for the jaxft CLI, repeatable; write it as --jaxft-flag=--config.x=y")
    # internal: the PyTorch side, run in a child process so that its wall time is whole-process too
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)


def check_shared_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.skip_torch and args.skip_jaxft:
        parser.error("--skip-torch and --skip-jaxft together leave nothing to run")
    args.jaxft_flag = [f if f.startswith("--") else f"--{f}" for f in args.jaxft_flag]


def torch_side_unavailable(args: argparse.Namespace) -> bool:
    """True (after saying why) when the PyTorch side should run but transformers' Trainer cannot."""
    if args.skip_torch or importlib.util.find_spec("accelerate") is not None:
        return False
    print("error: the PyTorch side needs accelerate (transformers' Trainer does): "
          ".venv/bin/pip install 'accelerate>=1.1.0', or pass --skip-torch", file=sys.stderr)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs, both sides (default 10)")
    add_shared_arguments(parser, DEFAULT_OUTPUT, "folder for both runs (jaxft/ and torch/ inside")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    check_shared_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_worker:
        return torch_worker(args)
    if torch_side_unavailable(args):
        return 2
    epochs, max_steps = (QUICK_EPOCHS, QUICK_MAX_STEPS) if args.quick else (args.epochs, 0)
    output = Path(args.output) if args.output else DEFAULT_OUTPUT
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ner_vs_pytorch_")) if temporary else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for side in ("jaxft", "torch"):
        if (workdir / side).exists() and any((workdir / side).iterdir()):
            print(f"error: {workdir / side} holds an earlier run (jaxft would resume from it); "
                  "remove it or pick another --workdir", file=sys.stderr)
            return 2
    print(f"workdir: {workdir}  ({'quick: ' if args.quick else ''}{epochs} epoch(s)"
          f"{f', max {max_steps} steps' if max_steps else ''}; cores: {os.cpu_count()})", file=sys.stderr)

    results = {"jaxft": None, "pytorch": None}
    try:
        if not args.skip_jaxft:
            results["jaxft"] = run_jaxft(workdir / "jaxft", epochs, max_steps, args)
        if not args.skip_torch:
            results["pytorch"] = run_torch(workdir / "torch", epochs, max_steps, args)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    if any(r is not None and "error" in r for r in results.values()):
        failed = [side for side, r in results.items() if r is not None and "error" in r]
        print(f"error: {', '.join(failed)} failed (see the log lines above)", file=sys.stderr)
        return 1

    report = {
        "benchmark": "ner_vs_pytorch",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "setup": {"recipe": "configs/ner.py", "epochs": epochs, "max_steps": max_steps, "quick": args.quick,
                  "jaxft_flags": args.jaxft_flag, "compilation_cache": args.warm_cache,
                  "torch_threads": args.torch_threads or os.cpu_count()},
        "machine": machine_info(),
        **results,
        "ratios": ratios(results["jaxft"], results["pytorch"]),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(results["jaxft"], results["pytorch"], report["ratios"]))
    print(f"\nresults written to {output}")
    return 0


def run_logged(command: list[str], log_path: Path, prefix: str, env: dict | None = None) -> tuple[int, float]:
    """Run a child process from the repository root, its output to a log file and (prefixed) to stderr.

    Returns (exit status, wall seconds from start to exit)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            log.write(line)
            sys.stderr.write(f"[{prefix}] {line}")
        status = process.wait()
    return status, time.perf_counter() - started


def run_jaxft_cli(recipe: Path, workdir: Path, flags: list[str], max_steps: int, args, name: str,
                  log_path: Path) -> tuple[dict | None, dict]:
    """One run of the real jaxft CLI on ``recipe`` (its own log in ``log_path``): (its results.json, the
    fields every benchmark reports), or (None, an error record) when it failed."""
    command = [sys.executable, "-m", "jaxft.main", "--config", str(recipe), "--workdir", str(workdir),
               "--config.train.progress_bar=False", *flags]
    if max_steps:
        command.append(f"--config.train.max_steps={max_steps}")
    command += args.jaxft_flag
    env = dict(os.environ)
    if not args.warm_cache:
        env["JAXFT_COMPILATION_CACHE"] = "0"
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr)
    status, wall = run_logged(command, log_path, name, env)
    if status != 0:
        return None, {"error": f"exit status {status}", "wall_seconds": wall}
    results = json.loads((workdir / "results.json").read_text())
    shared = {"wall_seconds": wall, **{key: results[key] for key in ("train_seconds", "train_tokens", "tokens_per_sec",
                                                                     "steps", "best_step", "compilations")},
              "command": " ".join(command[1:])}
    return results, shared


def run_jaxft(workdir: Path, epochs: int, max_steps: int, args) -> dict:
    results, record = run_jaxft_cli(RECIPE, workdir, [f"--config.train.num_epochs={epochs}"], max_steps, args,
                                    "jaxft", workdir.parent / "jaxft.log")
    if results is None:
        return record
    return {**record, "dev_f1": results["dev"]["f1"], "test_f1": results["test"]["f1"]}


def run_torch(workdir: Path, epochs: int, max_steps: int, args) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "results.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", str(out), "--epochs", str(epochs),
               "--max-steps", str(max_steps), "--torch-threads", str(args.torch_threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    print(f"pytorch: transformers.Trainer in {workdir}", file=sys.stderr)
    status, wall = run_logged(command, workdir.parent / "torch.log", "torch", env)
    if status != 0:
        return {"error": f"exit status {status}", "wall_seconds": wall}
    return {"wall_seconds": wall, **json.loads(out.read_text())}


def ratios(jaxft: dict | None, torch: dict | None) -> dict | None:
    if not jaxft or not torch:
        return None
    return {
        "wall_speedup": torch["wall_seconds"] / jaxft["wall_seconds"],
        "train_speedup": torch["train_seconds"] / jaxft["train_seconds"],
        "tokens_per_sec_ratio": jaxft["tokens_per_sec"] / torch["tokens_per_sec"],
        "dev_f1_diff": jaxft["dev_f1"] - torch["dev_f1"],
        "test_f1_diff": jaxft["test_f1"] - torch["test_f1"],
    }


def markdown_table(jaxft: dict | None, torch: dict | None, ratio: dict | None) -> str:
    rows = [("wall time (s, whole process)", "wall_seconds", "{:.1f}", "wall_speedup", "{:.2f}x"),
            ("training time (s)", "train_seconds", "{:.1f}", "train_speedup", "{:.2f}x"),
            ("tokens/s (real tokens trained)", "tokens_per_sec", "{:.0f}", "tokens_per_sec_ratio", "{:.2f}x"),
            ("tokens trained", "train_tokens", "{:,}", None, None),
            ("optimizer steps", "steps", "{}", None, None),
            ("best dev F1", "dev_f1", "{:.4f}", "dev_f1_diff", "{:+.4f}"),
            ("test F1", "test_f1", "{:.4f}", "test_f1_diff", "{:+.4f}")]
    lines = ["| | jaxft | PyTorch Trainer | jaxft vs PyTorch |", "|---|---:|---:|---:|"]
    for label, key, fmt, ratio_key, ratio_fmt in rows:
        cells = [fmt.format(side[key]) if side else "-" for side in (jaxft, torch)]
        cells.append(ratio_fmt.format(ratio[ratio_key]) if ratio and ratio_key else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("\nspeed-ups: PyTorch seconds / jaxft seconds; tokens/s: jaxft / PyTorch; F1: jaxft - PyTorch")
    return "\n".join(lines)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            pass
    return info


# ---------------------------------------------------------------------------------------------- PyTorch side

def load_recipe():
    from jaxft.config import load_recipe as recipe_config

    return recipe_config(str(RECIPE))


def torch_worker(args) -> int:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                              TrainerCallback, TrainingArguments)

    from jaxft.data.readers import packaged_minilm_path
    from jaxft.data.ner_encoding import encode_for_prediction, encode_for_training, gather_word_predictions
    from jaxft.evaluate.ner_metrics import ner_metrics
    from jaxft.models import load_tokenizer
    from jaxft.tasks.ner import label_list, read_splits

    torch.set_num_threads(args.torch_threads or os.cpu_count())
    out = Path(args.torch_worker)
    config = load_recipe()
    batch_size, eval_batch_size, max_length = config.train.batch_size, 64, config.data.max_length

    splits = read_splits(config.data)  # the packaged tweets file, 70/15/15 in file order, as jaxft reads it
    labels = label_list(splits)
    label2id = {label: i for i, label in enumerate(labels)}
    print(f"data: {len(splits.train)} train / {len(splits.dev)} dev / {len(splits.test)} test sentences, "
          f"{len(labels)} labels", flush=True)
    model_path = packaged_minilm_path()
    tokenizer = load_tokenizer(model_path)
    encoded, truncation = encode_for_training(tokenizer, splits.train, label2id, max_length)
    train_rows = [{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in encoded]
    windows = {name: encode_for_prediction(tokenizer, [s.tokens for s in sentences], max_length)
               for name, sentences in (("dev", splits.dev), ("test", splits.test))}

    transformers.set_seed(config.train.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def evaluate(split: str) -> dict:
        """Word-level seqeval F1: every word scored at its first sub-token, as jaxft scores it."""
        was_training = model.training
        model.eval()
        rows = windows[split]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        scores = [None] * len(rows)
        with torch.no_grad():
            for start in range(0, len(order), eval_batch_size):
                chunk = order[start:start + eval_batch_size]
                length = max(len(rows[i].input_ids) for i in chunk)
                ids = np.full((len(chunk), length), tokenizer.pad_token_id, dtype=np.int64)
                mask = np.zeros((len(chunk), length), dtype=np.int64)
                for row, i in enumerate(chunk):
                    ids[row, :len(rows[i].input_ids)] = rows[i].input_ids
                    mask[row, :len(rows[i].input_ids)] = 1
                logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
                log_probs = torch.log_softmax(logits.float(), dim=-1).numpy()
                for row, i in enumerate(chunk):
                    scores[i] = log_probs[row, :len(rows[i].input_ids)]
        model.train(was_training)
        sentences = getattr(splits, split)
        words = gather_word_predictions(rows, scores, [len(s.tokens) for s in sentences])
        predicted = [[labels[k] for k in w.argmax(-1)] for w in words]
        return ner_metrics([s.tags for s in sentences], predicted)

    class BestDev(TrainerCallback):
        """Dev F1 after every epoch; the best weights (first best on ties, like jaxft) kept in memory."""

        def __init__(self):
            self.eval_seconds, self.best_f1, self.best_step, self.best_state, self.history = 0.0, -1.0, -1, None, []

        def on_epoch_end(self, args_, state, control, **kwargs):
            started = time.perf_counter()
            f1 = evaluate("dev")["f1"]
            self.history.append({"step": state.global_step, "epoch": state.epoch, "dev_f1": f1})
            print(f"step {state.global_step}: dev f1 {f1:.4f}", flush=True)
            if f1 > self.best_f1:
                self.best_f1, self.best_step = f1, state.global_step
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.eval_seconds += time.perf_counter() - started

    class CountingTrainer(Trainer):
        """Counts the real (attention-mask) input tokens of every training batch."""

        tokens_seen = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            CountingTrainer.tokens_seen += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    training_args = TrainingArguments(
        output_dir=str(out.parent / "trainer"),
        learning_rate=config.optim.learning_rate,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_ratio,   # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=config.optim.schedule,
        max_grad_norm=config.optim.clip_norm,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        eval_strategy="no",                       # evaluation: the BestDev callback, timed separately
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=config.train.log_every,
        disable_tqdm=True,
        seed=config.train.seed,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
    )
    best = BestDev()
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=train_rows,
                              data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=[best])
    started = time.perf_counter()
    output = trainer.train()
    train_call_seconds = time.perf_counter() - started

    started = time.perf_counter()
    model.load_state_dict(best.best_state)
    test = evaluate("test")
    test_seconds = time.perf_counter() - started
    train_seconds = train_call_seconds - best.eval_seconds
    results = {
        "train_seconds": train_seconds,
        "train_call_seconds": train_call_seconds,
        "dev_eval_seconds": best.eval_seconds,
        "test_eval_seconds": test_seconds,
        "train_tokens": CountingTrainer.tokens_seen,
        "tokens_per_sec": CountingTrainer.tokens_seen / max(train_seconds, 1e-9),
        "steps": output.global_step,
        "best_step": best.best_step,
        "dev_f1": best.best_f1,
        "test_f1": test["f1"],
        "train_loss": output.training_loss,
        "dev_history": best.history,
        "truncated_train_sentences": truncation.truncated_sentences,
        "torch_threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"test f1 {test['f1']:.4f} (best dev {best.best_f1:.4f} at step {best.best_step}); "
          f"{train_seconds:.0f} s of training at {results['tokens_per_sec']:.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
