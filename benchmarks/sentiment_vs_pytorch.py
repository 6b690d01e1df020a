r"""Benchmark: the jaxft sentiment recipe against the PyTorch ``transformers`` Trainer, same data, same run.

Command (from the repository root):
    .venv/bin/python benchmarks/sentiment_vs_pytorch.py                    # full: 3 epochs, seed 0 (~30 min, 2 cores)
    .venv/bin/python benchmarks/sentiment_vs_pytorch.py --seeds 0,1,2      # each side once per seed (~1.5 h)
    .venv/bin/python benchmarks/sentiment_vs_pytorch.py --quick --seeds 0,1  # smoke test: 1 epoch, <= 30 steps
    .venv/bin/python benchmarks/sentiment_vs_pytorch.py --skip-jaxft --seeds 0,1,2  # the reference's seed spread

What it runs, once per seed S of ``--seeds`` (jaxft first, then PyTorch):
  * jaxft: the real CLI, ``python -m jaxft.main --config configs/sentiment.py --workdir <workdir>/jaxft_seedS
    --config.train.progress_bar=False --config.train.seed=S --config.train.num_epochs=E [--jaxft-flag ...]``,
    with ``JAXFT_COMPILATION_CACHE=0`` (so XLA compilation is paid in full, unless ``--warm-cache``); its
    numbers come from ``<workdir>/jaxft_seedS/results.json`` (dev = the best checkpoint by dev accuracy, test
    scored with it) and the dev history from its metrics.jsonl.
  * PyTorch: this script again in a child process (``--torch-worker``): the packaged all-MiniLM-L6-v2
    (the recipe's ``model.name_or_path``, resolved by ``jaxft.tasks.base.resolve_model_path``) as
    ``AutoModelForSequenceClassification`` (num_labels from jaxft's label list) under ``transformers.Trainer``
    with the recipe's hyper-parameters, read from ``configs/sentiment.py``'s ``get_config()``: AdamW lr 5e-5,
    weight decay 0.01 (Trainer's default: off biases and LayerNorm), 10% warmup (``warmup_steps=0.1``, a
    ratio of the total steps in transformers 5) + linear decay, grad-norm clip 1.0, batch 32, 3 epochs,
    max_length 128, ``seed=S`` (data_seed left at its default, i.e. the seed), CPU, dynamic padding
    (``DataCollatorWithPadding``) and Trainer's default random sampler. Data, split and labels are jaxft's
    own: ``jaxft.tasks.classification.read_splits`` on the recipe's data config (the packaged Rotten
    Tomatoes snippets without `plot` rows, 70/15/15 in file order: 8,965 / 1,921 / 1,922) and
    ``label_list`` (label ids in its order); texts are tokenized by jaxft's ``encode_texts`` with jaxft's
    tokenizer loader (truncated to max_length). ``eval_strategy="epoch"`` scores dev after every epoch; the
    weights with the best dev accuracy (first best on ties, like jaxft) are kept in memory (no checkpoints
    are saved, ``save_strategy="no"``), loaded after training, and the test set is scored once with them.
    Both sides compute accuracy and macro F1 with ``jaxft.evaluate.classification_metrics.single_label_metrics``.

What it measures, per run:
  * wall_seconds: the whole child process (interpreter start, imports, data reading and tokenization,
    model loading, compilation, training, dev/test evaluation, and for jaxft checkpoints and the export);
  * train_seconds: jaxft's own train_seconds from results.json (training steps only, including the XLA
    compilation of the train step; dev/test evaluation and checkpointing excluded). PyTorch: the wall time
    of ``trainer.train()`` minus the time spent inside ``Trainer.evaluate`` (the per-epoch dev evaluations,
    including their metric computation and the in-memory copy of the best weights); what remains is the
    training steps plus the Trainer's own set-up inside ``train()`` (dataloader, optimizer and scheduler
    creation) and its loss logging. The test scoring happens after ``train()`` and is not included;
  * tokens_per_sec: real (non-pad) input tokens trained on, summed over the steps actually run, divided by
    train_seconds;
  * dev_accuracy (best dev evaluation), test_accuracy and test_macro_f1 (test scored with the best-dev weights).
Per side: the mean and sample standard deviation (n - 1; none for a single seed) over the seeds of every
number above. Ratios jaxft vs PyTorch, on the seed means: wall-time and train-time speed-up (PyTorch seconds /
jaxft seconds), tokens/s ratio (jaxft / PyTorch), and accuracy / macro-F1 differences (jaxft minus PyTorch).

Timings are whole-process wall-clock times of runs one after the other on the same machine in the same
invocation; anything else running on the machine affects both. ``--torch-threads`` sets PyTorch's intra-op
threads (default: all cores); XLA uses all cores. The PyTorch worker imports jaxft's data code (which imports
jax, not initialising it) to read the same split. Results: markdown tables on stdout and a JSON file
(``--output``, default benchmarks/results/sentiment_vs_pytorch.json). Helpers shared with
benchmarks/ner_vs_pytorch.py (run_logged, machine_info) are imported from it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "sentiment.py"
NER_BENCHMARK = Path(__file__).resolve().with_name("ner_vs_pytorch.py")
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "sentiment_vs_pytorch.json"
EVAL_BATCH_SIZE = 64
SIDES = ("jaxft", "pytorch")
SUMMARISED = ("wall_seconds", "train_seconds", "tokens_per_sec", "dev_accuracy", "test_accuracy", "test_macro_f1")


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe():
    from jaxft.config import load_recipe as recipe_config

    return recipe_config(str(RECIPE))


# ---------------------------------------------------------------------------------------------- driver

def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants integers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds wants distinct integers, got {text!r}")
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=0, help="training epochs, both sides (default: the recipe's)")
    parser.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2 "
                                                                       "(default 0); each side runs once per seed")
    ner_benchmark().add_shared_arguments(parser, DEFAULT_OUTPUT,
                                         "folder for all runs (jaxft_seedS/ and torch_seedS/ inside")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # internal: the torch worker's
    args = parser.parse_args(argv)
    if args.epochs < 0:
        parser.error("--epochs must be >= 1 (or 0: the recipe's)")
    ner_benchmark().check_shared_arguments(parser, args)
    return args


def run_folders(workdir: Path, seed: int) -> dict[str, Path]:
    return {"jaxft": workdir / f"jaxft_seed{seed}", "pytorch": workdir / f"torch_seed{seed}"}


def earlier_run(workdir: Path, seeds: list[int]) -> Path | None:
    for seed in seeds:
        for folder in run_folders(workdir, seed).values():
            if folder.exists() and any(folder.iterdir()):
                return folder
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_worker:
        return torch_worker(args)
    if ner_benchmark().torch_side_unavailable(args):
        return 2
    recipe = load_recipe()
    ner = ner_benchmark()
    epochs = ner.QUICK_EPOCHS if args.quick else (args.epochs or recipe.train.num_epochs)
    max_steps = ner.QUICK_MAX_STEPS if args.quick else 0
    output = Path(args.output) if args.output else DEFAULT_OUTPUT
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sentiment_vs_pytorch_")) if temporary else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if (folder := earlier_run(workdir, args.seeds)) is not None:
        print(f"error: {folder} holds an earlier run (jaxft would resume from it); "
              "remove it or pick another --workdir", file=sys.stderr)
        return 2
    print(f"workdir: {workdir}  ({'quick: ' if args.quick else ''}{epochs} epoch(s)"
          f"{f', max {max_steps} steps' if max_steps else ''}; seeds {args.seeds}; cores: {os.cpu_count()})",
          file=sys.stderr)
    try:
        runs = run_all(workdir, epochs, max_steps, args)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(runs, recipe, epochs, max_steps, args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(per_seed_table(runs))
    print()
    print(summary_table(report["jaxft"], report["pytorch"], report["ratios"], args.seeds))
    print(f"\nresults written to {output}")
    failed = [f"{side} seed {run['seed']}" for side in SIDES for run in runs[side] if "error" in run]
    if failed:
        print(f"error: {', '.join(failed)} failed (see the log lines above); the summaries leave them out",
              file=sys.stderr)
        return 1
    return 0


def run_all(workdir: Path, epochs: int, max_steps: int, args) -> dict[str, list[dict]]:
    """Every seed: jaxft, then PyTorch (interleaved, so slow drifts in machine load hit both sides)."""
    runs = {side: [] for side in SIDES}
    for seed in args.seeds:
        folders = run_folders(workdir, seed)
        if not args.skip_jaxft:
            runs["jaxft"].append({"seed": seed, **run_jaxft(folders["jaxft"], seed, epochs, max_steps, args)})
        if not args.skip_torch:
            runs["pytorch"].append({"seed": seed, **run_torch(folders["pytorch"], seed, epochs, max_steps, args)})
    return runs


def build_report(runs: dict[str, list[dict]], recipe, epochs: int, max_steps: int, args) -> dict:
    sides = {side: side_summary(runs[side]) if runs[side] else None for side in SIDES}
    return {
        "benchmark": "sentiment_vs_pytorch",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "setup": {"recipe": "configs/sentiment.py", "epochs": epochs, "max_steps": max_steps, "quick": args.quick,
                  "seeds": args.seeds, "jaxft_flags": args.jaxft_flag, "compilation_cache": args.warm_cache,
                  "torch_threads": args.torch_threads or os.cpu_count(),
                  "hyper_parameters": recipe_hyper_parameters(recipe)},
        "machine": ner_benchmark().machine_info(),
        **sides,
        "ratios": ratios(sides["jaxft"], sides["pytorch"]),
    }


def recipe_hyper_parameters(config) -> dict:
    return {"learning_rate": config.optim.learning_rate, "weight_decay": config.optim.weight_decay,
            "warmup_ratio": config.optim.warmup_ratio, "schedule": config.optim.schedule,
            "clip_norm": config.optim.clip_norm, "batch_size": config.train.batch_size,
            "num_epochs": config.train.num_epochs, "max_length": config.data.max_length}


_NER_BENCHMARK = None


def ner_benchmark():
    """benchmarks/ner_vs_pytorch.py as a module, for its run_logged and machine_info."""
    global _NER_BENCHMARK
    if _NER_BENCHMARK is None:
        _NER_BENCHMARK = load_module("ner_vs_pytorch", NER_BENCHMARK)
    return _NER_BENCHMARK


def run_jaxft(workdir: Path, seed: int, epochs: int, max_steps: int, args) -> dict:
    flags = [f"--config.train.seed={seed}", f"--config.train.num_epochs={epochs}"]
    results, record = ner_benchmark().run_jaxft_cli(RECIPE, workdir, flags, max_steps, args, f"jaxft s{seed}",
                                                    workdir.parent / f"{workdir.name}.log")
    if results is None:
        return record
    return {**record, "dev_accuracy": results["dev"]["accuracy"], "dev_macro_f1": results["dev"]["macro_f1"],
            "test_accuracy": results["test"]["accuracy"], "test_macro_f1": results["test"]["macro_f1"],
            "dev_history": jaxft_dev_history(workdir / "metrics.jsonl")}


def jaxft_dev_history(metrics_path: Path) -> list[dict]:
    """Every dev evaluation of the run (step, accuracy), from its metrics.jsonl."""
    history = []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        record = json.loads(line)
        if record.get("split") == "dev":
            history.append({"step": record["step"], "dev_accuracy": record.get("accuracy")})
    return history


def run_torch(workdir: Path, seed: int, epochs: int, max_steps: int, args) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "results.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", str(out), "--seed", str(seed),
               "--epochs", str(epochs), "--max-steps", str(max_steps), "--torch-threads", str(args.torch_threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    print(f"pytorch seed {seed}: transformers.Trainer in {workdir}", file=sys.stderr)
    status, wall = ner_benchmark().run_logged(command, workdir.parent / f"{workdir.name}.log", f"torch s{seed}", env)
    if status != 0:
        return {"error": f"exit status {status}", "wall_seconds": wall}
    return {"wall_seconds": wall, **json.loads(out.read_text())}


# ---------------------------------------------------------------------------------------------- summaries

def mean_and_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def side_summary(runs: list[dict]) -> dict:
    finished = [run for run in runs if "error" not in run]
    summary = {key: mean_and_std([run[key] for run in finished]) for key in SUMMARISED} if finished else None
    return {"runs": runs, "summary": summary}


def ratios(jaxft: dict | None, torch: dict | None) -> dict | None:
    if not jaxft or not torch or not jaxft["summary"] or not torch["summary"]:
        return None
    ours = {key: value["mean"] for key, value in jaxft["summary"].items()}
    theirs = {key: value["mean"] for key, value in torch["summary"].items()}
    return {
        "wall_speedup": theirs["wall_seconds"] / ours["wall_seconds"],
        "train_speedup": theirs["train_seconds"] / ours["train_seconds"],
        "tokens_per_sec_ratio": ours["tokens_per_sec"] / theirs["tokens_per_sec"],
        "dev_accuracy_diff": ours["dev_accuracy"] - theirs["dev_accuracy"],
        "test_accuracy_diff": ours["test_accuracy"] - theirs["test_accuracy"],
        "test_macro_f1_diff": ours["test_macro_f1"] - theirs["test_macro_f1"],
    }


PER_SEED_COLUMNS = (("wall (s)", "wall_seconds", "{:.1f}"), ("train (s)", "train_seconds", "{:.1f}"),
                    ("tokens/s", "tokens_per_sec", "{:.0f}"), ("steps", "steps", "{}"),
                    ("best step", "best_step", "{}"), ("dev acc", "dev_accuracy", "{:.4f}"),
                    ("test acc", "test_accuracy", "{:.4f}"), ("test macro F1", "test_macro_f1", "{:.4f}"))


def per_seed_table(runs: dict[str, list[dict]]) -> str:
    lines = ["| side | seed | " + " | ".join(label for label, _, _ in PER_SEED_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(PER_SEED_COLUMNS)]
    for side, name in zip(SIDES, ("jaxft", "PyTorch Trainer")):
        for run in runs[side]:
            if "error" in run:
                cells = [run["error"]] + [""] * (len(PER_SEED_COLUMNS) - 1)
            else:
                cells = [fmt.format(run[key]) for _, key, fmt in PER_SEED_COLUMNS]
            lines.append(f"| {name} | {run['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SUMMARY_ROWS = (("wall time (s, whole process)", "wall_seconds", "{:.1f}", "wall_speedup", "{:.2f}x"),
                ("training time (s)", "train_seconds", "{:.1f}", "train_speedup", "{:.2f}x"),
                ("tokens/s (real tokens trained)", "tokens_per_sec", "{:.0f}", "tokens_per_sec_ratio", "{:.2f}x"),
                ("best dev accuracy", "dev_accuracy", "{:.4f}", "dev_accuracy_diff", "{:+.4f}"),
                ("test accuracy", "test_accuracy", "{:.4f}", "test_accuracy_diff", "{:+.4f}"),
                ("test macro F1", "test_macro_f1", "{:.4f}", "test_macro_f1_diff", "{:+.4f}"))


def mean_cell(side: dict | None, key: str, fmt: str) -> str:
    if not side or not side["summary"]:
        return "-"
    stats = side["summary"][key]
    text = fmt.format(stats["mean"])
    return text if stats["std"] is None else f"{text} ± {fmt.format(stats['std'])}"


def summary_table(jaxft: dict | None, torch: dict | None, ratio: dict | None, seeds: list[int]) -> str:
    lines = ["| mean over seeds | jaxft | PyTorch Trainer | jaxft vs PyTorch |", "|---|---:|---:|---:|"]
    for label, key, fmt, ratio_key, ratio_fmt in SUMMARY_ROWS:
        cells = [mean_cell(jaxft, key, fmt), mean_cell(torch, key, fmt),
                 ratio_fmt.format(ratio[ratio_key]) if ratio else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nseeds {','.join(map(str, seeds))}: mean ± sample standard deviation (n - 1) of the finished "
                 "runs; speed-ups: PyTorch seconds / jaxft seconds; tokens/s: jaxft / PyTorch; "
                 "accuracy and F1: jaxft - PyTorch (on the means)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- PyTorch side

def read_data(config):
    """jaxft's own split of the recipe's data and its label list (ids in that order)."""
    from jaxft.tasks.classification import label_list, read_splits

    problem_type = config.classification.problem_type
    splits = read_splits(config.data, problem_type)
    return splits, label_list(splits, problem_type, config.classification.label_separator)


def encode_split(tokenizer, examples, label2id: dict, max_length: int) -> tuple[list[dict], object]:
    """Trainer rows (plain lists, unpadded) from jaxft's tokenization, and its truncation count."""
    from jaxft.tasks.classification import encode_texts, label_key

    encoded, truncation = encode_texts(tokenizer, [e.text for e in examples], None, max_length)
    rows = []
    for example, row in zip(examples, encoded):
        item = {key: value.tolist() for key, value in row.items()}
        item["labels"] = label2id[label_key(example.label, example.source)]
        rows.append(item)
    return rows, truncation


def classification_scores(logits, label_ids, labels: list[str]) -> dict:
    """Accuracy and macro F1 by jaxft's metric code (argmax of the logits = argmax of the softmax)."""
    from jaxft.evaluate.classification_metrics import single_label_metrics

    metrics = single_label_metrics(label_ids, logits, labels)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def torch_training_arguments(config, args, output_dir: Path):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=config.optim.learning_rate,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_ratio,   # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=config.optim.schedule,
        max_grad_norm=config.optim.clip_norm,
        per_device_train_batch_size=config.train.batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        eval_strategy="epoch",
        save_strategy="no",                       # the best-dev weights are kept in memory instead
        logging_strategy="steps",
        logging_steps=config.train.log_every,
        disable_tqdm=True,
        seed=args.seed,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
    )


def torch_worker(args) -> int:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback

    from jaxft.models import load_tokenizer
    from jaxft.tasks.base import resolve_model_path

    torch.set_num_threads(args.torch_threads or os.cpu_count())
    out = Path(args.torch_worker)
    config = load_recipe()
    splits, labels = read_data(config)
    label2id = {label: i for i, label in enumerate(labels)}
    print(f"data: {len(splits.train)} train / {len(splits.dev)} dev / {len(splits.test)} test texts, "
          f"labels {labels}", flush=True)
    model_path = resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(model_path)  # jaxft's loader: the packaged tokenizer's fixed padding switched off
    rows, truncation = {}, {}
    for split in ("train", "dev", "test"):
        rows[split], truncation[split] = encode_split(tokenizer, getattr(splits, split), label2id,
                                                      config.data.max_length)

    transformers.set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    class BestDev(TrainerCallback):
        """Dev accuracy after every epoch; the best weights (first best on ties, like jaxft) kept in memory."""

        def __init__(self):
            self.best_accuracy, self.best_macro_f1, self.best_step, self.best_state = -1.0, -1.0, -1, None
            self.history = []

        def on_evaluate(self, args_, state, control, metrics=None, **kwargs):
            accuracy, macro_f1 = metrics["eval_accuracy"], metrics["eval_macro_f1"]
            self.history.append({"step": state.global_step, "epoch": state.epoch, "dev_accuracy": accuracy,
                                 "dev_macro_f1": macro_f1})
            print(f"step {state.global_step}: dev accuracy {accuracy:.4f}, macro F1 {macro_f1:.4f}", flush=True)
            if accuracy > self.best_accuracy:
                self.best_accuracy, self.best_macro_f1, self.best_step = accuracy, macro_f1, state.global_step
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    class TimedTrainer(Trainer):
        """Counts the real (attention-mask) tokens of every training batch and times every evaluate() call."""

        tokens_seen, eval_seconds = 0, 0.0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens_seen += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def evaluate(self, *pargs, **kwargs):
            started = time.perf_counter()
            try:
                return super().evaluate(*pargs, **kwargs)
            finally:
                self.eval_seconds += time.perf_counter() - started

    best = BestDev()
    trainer = TimedTrainer(
        model=model, args=torch_training_arguments(config, args, out.parent / "trainer"),
        train_dataset=rows["train"], eval_dataset=rows["dev"], data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda prediction: classification_scores(prediction.predictions, prediction.label_ids,
                                                                 labels),
        callbacks=[best])
    started = time.perf_counter()
    output = trainer.train()
    train_call_seconds = time.perf_counter() - started

    started = time.perf_counter()
    model.load_state_dict(best.best_state)
    prediction = trainer.predict(rows["test"])
    test = classification_scores(prediction.predictions, prediction.label_ids, labels)
    test_seconds = time.perf_counter() - started
    train_seconds = train_call_seconds - trainer.eval_seconds
    results = {
        "train_seconds": train_seconds,
        "train_call_seconds": train_call_seconds,
        "dev_eval_seconds": trainer.eval_seconds,
        "test_eval_seconds": test_seconds,
        "train_tokens": trainer.tokens_seen,
        "tokens_per_sec": trainer.tokens_seen / max(train_seconds, 1e-9),
        "steps": output.global_step,
        "best_step": best.best_step,
        "dev_accuracy": best.best_accuracy,
        "dev_macro_f1": best.best_macro_f1,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "train_loss": output.training_loss,
        "dev_history": best.history,
        "split_sizes": {split: len(rows[split]) for split in rows},
        "truncated_texts": {split: count.truncated for split, count in truncation.items()},
        "labels": labels,
        "torch_threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f} (best dev accuracy "
          f"{best.best_accuracy:.4f} at step {best.best_step}); {train_seconds:.0f} s of training at "
          f"{results['tokens_per_sec']:.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
