r"""int8 quantization and pruning of the default recipes' exports against float32 in the same run: size,
latency, metric.

    python benchmarks/quantize.py [--ner /tmp/jaxft_exports/ner] [--sentiment /tmp/jaxft_exports/sentiment]
                                  [--variants fp32,int8,int8_weight_only,...] [--repeats 15]
    python benchmarks/quantize.py --quick ...   # checks that the script runs: 3 repeats, 64 test examples

For each export and variant, `jaxft.quantize.quantize_folder` writes a folder under --scratch, which is loaded
through the same path as predict/serve (`jaxft.predict.load_predictor`). Reported per row:
  - MB: bytes of the weight file on disk;
  - step ms: median over --repeats of one compiled predict call on a [32, 64] batch (after a warm-up call),
    timed round-robin over the variants so that load drift on a shared machine hits all alike;
  - eval s: wall time to predict the whole test split (tokenization and decoding included);
  - GFLOP of that compiled call (XLA's cost analysis; load-independent);
  - the test metric on the recipe's fixed split, computed by the task's own evaluation code
    (configs/ner.py: entity-level micro F1 on the last 15% of the packaged tweets; configs/sentiment.py:
    accuracy on the last 15% of the packaged Rotten Tomatoes snippets), and its change against float32.
Variants (VARIANTS): fp32 (the export); int8 (encoder-layer kernels as integer matmuls with per-token
activation scales); int8_weight_only (the same file, float matmuls of the dequantized kernels: smaller, not
faster); int8_emb (int8 plus the word-embedding table); ffn30 / ffn50 (structured pruning: 30% / 50% of every
layer's FFN units removed, float32); ffn30_int8 (both); int8_prune30 / int8_prune50 (magnitude pruning: that
share of each kernel's smallest weights zeroed, then int8). Timings are valid only from a run with nothing else
heavy on the machine. Writes benchmarks/results/quantize.json (--quick: --scratch/quantize_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = {
    "fp32": None,
    "int8": dict(),
    "int8_weight_only": dict(method="int8_weight_only"),
    "int8_emb": dict(embeddings=True),
    "ffn30": dict(int8=False, prune_ffn_fraction=0.3),
    "ffn50": dict(int8=False, prune_ffn_fraction=0.5),
    "ffn30_int8": dict(prune_ffn_fraction=0.3),
    "int8_prune30": dict(prune_fraction=0.3),
    "int8_prune50": dict(prune_fraction=0.5),
}
DEFAULT_VARIANTS = "fp32,int8,int8_weight_only,int8_emb,ffn30,ffn50,ffn30_int8"
QUICK_EXAMPLES = 64


def recipe(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def ner_evaluator(predictor, limit: int | None = None):
    """(evaluate(predictor) -> test F1, "f1", test sentences); limit: only the first that many test sentences."""
    from jaxft.tasks.ner import NerTask, read_splits
    config = recipe("ner")
    splits = read_splits(config.data)
    splits.test = splits.test[:limit]
    # windows as long as the export predicts (its max_length), with its CRF and document context
    task = NerTask(predictor.tokenizer, splits, predictor.labels, predictor.max_length, crf=predictor.crf,
                   context_tokens=predictor.context_tokens)
    return lambda p: task.evaluate("test", p.run_rows)["f1"], "f1", len(splits.test)


def sentiment_evaluator(predictor, limit: int | None = None):
    """(evaluate(predictor) -> test accuracy, "accuracy", test reviews); limit: the first that many reviews."""
    from jaxft.tasks.classification import ClassificationTask, label_list, read_splits
    config = recipe("sentiment")
    splits = read_splits(config.data, config.classification.problem_type)
    labels = label_list(splits, config.classification.problem_type)  # from every split, before the cut
    splits.test = splits.test[:limit]
    if labels != predictor.labels:
        raise SystemExit(f"the export's labels {predictor.labels} are not the recipe's {labels}")
    task = ClassificationTask(predictor.tokenizer, splits, labels, max_length=predictor.max_length,
                              problem_type=config.classification.problem_type)
    return lambda p: task.evaluate("test", p.run_rows)["accuracy"], "accuracy", len(splits.test)


def step_batch(predictor) -> dict:
    from jaxft.data.batching import collate
    rng = np.random.default_rng(0)
    rows = [{key: (rng.integers(1000, 20000, 64) if key == "input_ids" else np.full(64, pad)).astype(np.int32)
             for key, pad in predictor.pad_values.items()} for _ in range(32)]
    return collate(rows, 32, [64], predictor.pad_values)


def step_gflop(predictor) -> float:
    """GFLOP of one compiled [32, 64] predict call, from XLA's cost analysis of the compiled program."""
    step = predictor._step
    compiled = step._jitted.lower(step.states, step_batch(predictor)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan"))) / 1e9


def interleaved_step_ms(predictors: list, repeats: int) -> list[float]:
    """Median time of one compiled [32, 64] predict call per predictor, timed round-robin (A B C A B C ...)
    so that a machine whose load drifts over the run affects every variant alike."""
    import jax
    batches = [step_batch(p) for p in predictors]
    for p, batch in zip(predictors, batches):
        jax.block_until_ready(p._step(batch))
    times: list[list[float]] = [[] for _ in predictors]
    for _ in range(repeats):
        for i, (p, batch) in enumerate(zip(predictors, batches)):
            start = time.perf_counter()
            jax.block_until_ready(p._step(batch))
            times[i].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ner", default="/tmp/jaxft_exports/ner")
    parser.add_argument("--sentiment", default="/tmp/jaxft_exports/sentiment")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scratch", default="/tmp/jaxft_quantize_bench")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/quantize.json (--quick: "
                                                    "SCRATCH/quantize_quick.json)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 64 test examples: checks the script")
    args = parser.parse_args()
    limit = QUICK_EXAMPLES if args.quick else None
    repeats = 3 if args.quick else args.repeats
    out = args.out or str(Path(args.scratch) / "quantize_quick.json" if args.quick
                          else REPO / "benchmarks" / "results" / "quantize.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jaxft.predict import load_predictor
    from jaxft.quantize import folder_bytes, quantize_folder

    rows = []
    for name, source, make_evaluator in (("ner", args.ner, ner_evaluator),
                                         ("sentiment", args.sentiment, sentiment_evaluator)):
        if not source:
            continue
        evaluate = metric = None
        baseline = None
        predictors, model_rows = [], []
        for variant in args.variants.split(","):
            options = VARIANTS[variant]
            folder = source if options is None else os.path.join(args.scratch, name, variant)
            if options is not None:
                quantize_folder(source, folder, **options)
            predictor = load_predictor(folder, batch_size=32)
            if evaluate is None:
                evaluate, metric, examples = make_evaluator(predictor, limit)
            start = time.perf_counter()
            score = evaluate(predictor)
            eval_s = time.perf_counter() - start
            baseline = score if baseline is None else baseline
            row = {"model": name, "variant": variant, "mb": folder_bytes(folder) / 1e6, "eval_s": eval_s,
                   "metric": metric, "test": score, "delta": score - baseline, "test_examples": examples,
                   "gflop_step": step_gflop(predictor)}
            predictors.append(predictor)
            model_rows.append(row)
            print(f"{name:9} {variant:16} {row['mb']:7.1f} MB  eval {eval_s:6.1f} s  "
                  f"test {metric} {score:.4f} ({row['delta']:+.4f})", flush=True)
        for row, ms in zip(model_rows, interleaved_step_ms(predictors, repeats)):
            row["step_ms"] = ms
        reference = next((r["step_ms"] for r in model_rows if r["variant"] == "fp32"), model_rows[0]["step_ms"])
        for row in model_rows:
            ms = row["step_ms"]
            row["speedup"] = reference / ms
            print(f"{name:9} {row['variant']:16} step [32, 64] median {ms:7.1f} ms ({row['speedup']:.2f}x fp32), "
                  f"{row['gflop_step']:.2f} GFLOP", flush=True)
        rows += model_rows
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"rows": rows, "quick": args.quick, "load_average_at_end": os.getloadavg(),
                                     "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
