r"""Distilled students against their teachers, measured in the same run: predict throughput, compiled step,
FLOPs, size and the test metric, for the NER and sentiment defaults.

    python -m jaxft.main --config configs/ner.py --workdir runs/ner                  # the teachers
    python -m jaxft.main --config configs/sentiment.py --workdir runs/sentiment
    python -m jaxft.main --config configs/ner_distill.py --workdir runs/ner_student  # the students
    python -m jaxft.main --config configs/sentiment_distill.py --workdir runs/sentiment_student
    python benchmarks/distill.py --ner runs/ner/export runs/ner_student/export \
        --sentiment runs/sentiment/export runs/sentiment_student/export [--repeats 5]
    python benchmarks/distill.py --quick --ner runs/ner/export   # checks the script: 2 repeats, 64 examples;
        # a missing student is stood in for by the teacher's layers 0, 2, 4 untrained (jaxft.distill)

Per pair, both models are loaded through predict's path (jaxft.predict.load_predictor, batch 32) and warmed
up; then, alternating teacher and student so that load drift hits both alike:
  - predict examples/s: the whole test split from raw inputs (NER: word lists through predict_words;
    sentiment: texts through predict), tokenization, compiled steps and decoding included; median of --repeats;
  - step ms: one compiled [32, 64] predict call, median of 5 x --repeats;
  - GFLOP per [32, 64] call from XLA's cost analysis of the compiled program (load-independent);
  - the test metric on the recipe's fixed split by the task's own evaluation (benchmarks/quantize.py's
    evaluators: NER entity F1, sentiment accuracy), encoder layers, parameters and MB on disk.
The speed-ups are student over teacher. Timings are valid only from a run with nothing else heavy on the
machine (the load average at the end is recorded). Writes benchmarks/results/distill.json
(--quick: --scratch/distill_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import quantize as quantize_bench  # noqa: E402 (benchmarks/quantize.py: evaluators, step batch, FLOPs)

QUICK_EXAMPLES = 64


def test_inputs(name: str, limit: int | None):
    """The raw test inputs of the recipe's fixed split and predict's call on them."""
    config = quantize_bench.recipe(name)
    if name == "ner":
        from jaxft.tasks.ner import read_splits
        words = [s.tokens for s in read_splits(config.data).test[:limit]]
        return len(words), lambda p: p.predict_words(words)
    from jaxft.tasks.classification import read_splits
    texts = [e.text for e in read_splits(config.data, config.classification.problem_type).test[:limit]]
    return len(texts), lambda p: p.predict(texts)


def stand_in_student(teacher: str, scratch: Path) -> str:
    """--quick without a student: the teacher's layers 0, 2, 4 (untrained), the folder a distillation run starts
    from."""
    from jaxft.distill import layer_indices, teacher_layer_count, write_student_folder
    layers = layer_indices("every_other", teacher_layer_count(teacher), 3)
    folder = write_student_folder(teacher, layers, scratch / "student")
    if (Path(teacher) / "jaxft_task.json").is_file():  # predict's max_length and task options, as an export has
        shutil.copy(Path(teacher) / "jaxft_task.json", folder / "jaxft_task.json")
    return str(folder)


def alternating_medians(calls: list, repeats: int) -> list[float]:
    """Median seconds of each call, run round-robin (A B A B ...) `repeats` times after one warm-up each."""
    import jax
    for call in calls:
        jax.block_until_ready(call())
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def model_facts(folder: str, predictor) -> dict:
    from jaxft.distill import teacher_layer_count
    from jaxft.models.hf import param_items
    from jaxft.quantize import folder_bytes
    return {"folder": folder, "layers": teacher_layer_count(folder), "mb": folder_bytes(folder) / 1e6,
            "params": int(sum(v.get_value().size for _, v in param_items(predictor.model)))}


def measure_pair(name: str, teacher: str, student: str, repeats: int, limit: int | None) -> dict:
    from jaxft.predict import load_predictor
    evaluators = {"ner": quantize_bench.ner_evaluator, "sentiment": quantize_bench.sentiment_evaluator}
    predictors = [load_predictor(folder, batch_size=32) for folder in (teacher, student)]
    for predictor in predictors:
        predictor.warm_up()
    evaluate, metric, examples = evaluators[name](predictors[0], limit)
    count, predict = test_inputs(name, limit)
    rows = []
    for role, folder, predictor in (("teacher", teacher, predictors[0]), ("student", student, predictors[1])):
        rows.append({"role": role, **model_facts(folder, predictor), "metric": metric,
                     "test": evaluate(predictor), "gflop_step": quantize_bench.step_gflop(predictor)})
    predict_s = alternating_medians([lambda p=p: predict(p) for p in predictors], repeats)
    batches = [quantize_bench.step_batch(p) for p in predictors]
    step_s = alternating_medians([lambda p=p, b=b: p._step(b) for p, b in zip(predictors, batches)], 5 * repeats)
    for row, seconds, step in zip(rows, predict_s, step_s):
        row.update(predict_examples_per_s=count / seconds, predict_s=seconds, step_ms=1000 * step)
    teacher_row, student_row = rows
    return {"model": name, "test_examples": examples, "predict_examples": count, "rows": rows,
            "predict_speedup": student_row["predict_examples_per_s"] / teacher_row["predict_examples_per_s"],
            "step_speedup": teacher_row["step_ms"] / student_row["step_ms"],
            "flop_ratio": teacher_row["gflop_step"] / student_row["gflop_step"],
            "metric_change": student_row["test"] - teacher_row["test"]}


def print_pair(pair: dict) -> None:
    for row in pair["rows"]:
        print(f"{pair['model']:9} {row['role']:7} {row['layers']} layers {row['params'] / 1e6:5.1f}M params "
              f"{row['mb']:6.1f} MB  test {row['metric']} {row['test']:.4f}  predict "
              f"{row['predict_examples_per_s']:7.1f} ex/s  step [32, 64] {row['step_ms']:7.1f} ms  "
              f"{row['gflop_step']:.2f} GFLOP", flush=True)
    print(f"{pair['model']:9} student / teacher: predict {pair['predict_speedup']:.2f}x, step "
          f"{pair['step_speedup']:.2f}x, FLOPs 1/{pair['flop_ratio']:.2f}, {pair['rows'][0]['metric']} "
          f"{pair['metric_change']:+.4f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ner", nargs="+", metavar=("TEACHER", "STUDENT"), help="NER teacher and student exports")
    parser.add_argument("--sentiment", nargs="+", metavar=("TEACHER", "STUDENT"),
                        help="sentiment teacher and student exports")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 64 test examples: checks the script")
    parser.add_argument("--scratch", default="/tmp/jaxft_distill_bench")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/distill.json (--quick: "
                                                    "SCRATCH/distill_quick.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    limit = QUICK_EXAMPLES if args.quick else None
    repeats = 2 if args.quick else args.repeats
    pairs = []
    for name, folders in (("ner", args.ner), ("sentiment", args.sentiment)):
        if not folders:
            continue
        if len(folders) == 1 and not args.quick:
            parser.error(f"--{name} takes TEACHER STUDENT (a lone teacher only with --quick)")
        student = folders[1] if len(folders) > 1 else stand_in_student(folders[0], Path(args.scratch) / name)
        pair = measure_pair(name, folders[0], student, repeats, limit)
        print_pair(pair)
        pairs.append(pair)
    if not pairs:
        parser.error("give --ner and/or --sentiment")
    out = Path(args.out or (Path(args.scratch) / "distill_quick.json" if args.quick
                            else REPO / "benchmarks" / "results" / "distill.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pairs": pairs, "quick": args.quick, "repeats": repeats,
                               "load_average_at_end": os.getloadavg(), "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
