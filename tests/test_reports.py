"""Metrics log, training-curve plot, results table and progress bar."""

import io
import json
import logging
import struct

import numpy as np
import pytest
from rich.console import Console
from tensorboardX.proto.event_pb2 import Event

from jaxft.evaluate.ner_metrics import ner_metrics
from jaxft.evaluate.reports import plot_training_curves, print_results_table, read_metrics
from jaxft.train.hooks import NO_HOOKS
from jaxft.train.reporting import EvalProgressHooks, MetricsWriter, ProgressBar, ProgressLog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensorboard_scalars(tensorboard_dir):
    """{tag: [(step, value), ...]} from the TFRecord event files in a directory."""
    scalars = {}
    for path in sorted(tensorboard_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        position = 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position:position + 8])
            event = Event.FromString(data[position + 12:position + 12 + length])
            position += 12 + length + 4  # length, length crc, payload, payload crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


# ----------------------------------------------------------------------------- MetricsWriter

def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
    per_type = {"PER": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}}
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, "train", {"loss": 0.5, "learning_rate": np.float32(0.25)})
        # Flushed at once: readable before close.
        assert read_metrics(tmp_path / "metrics.jsonl") == [
            {"step": 1, "split": "train", "loss": 0.5, "learning_rate": 0.25}]
        writer.write(np.int64(10), "dev", {"f1": 0.75, "per_type": per_type, "note": "x"})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "split": "train", "loss": 0.5, "learning_rate": 0.25},
        {"step": 10, "split": "dev", "f1": 0.75, "per_type": per_type, "note": "x"},
    ]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    # Nested dicts and strings are skipped.
    assert scalars == {"train/loss": [(1, 0.5)], "train/learning_rate": [(1, 0.25)],
                       "dev/f1": [(10, pytest.approx(0.75))]}


def test_metrics_writer_appends_across_runs(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, "train", {"loss": 2.0})
    with MetricsWriter(tmp_path) as writer:
        writer.write(2, "train", {"loss": 1.0})
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2.0, 1.0]


def test_disabled_metrics_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    writer = MetricsWriter(workdir, enabled=False)
    writer.write(1, "train", {"loss": 0.5})
    writer.close()
    assert not workdir.exists()


def test_write_after_close_raises(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(1, "train", {"loss": 0.5})


# ----------------------------------------------------------------------------- plot

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_plot_training_curves_with_dev_points(tmp_path):
    records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 21)]
    records += [{"step": 10, "split": "dev", "f1": 0.5, "per_type": {}},
                {"step": 20, "split": "dev", "f1": 0.7, "per_type": {}}]
    png = plot_training_curves(write_jsonl(tmp_path / "metrics.jsonl", records),
                               tmp_path / "plots" / "curves.png")
    assert png == tmp_path / "plots" / "curves.png"
    assert_png(png)


def test_plot_training_curves_without_dev_points(tmp_path):
    records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 4)]
    png = plot_training_curves(write_jsonl(tmp_path / "m.jsonl", records), tmp_path / "c.png")
    assert_png(png)


def test_plot_training_curves_accuracy_only(tmp_path):
    records = [{"step": 1, "split": "train", "loss": 0.9},
               {"step": 1, "split": "dev", "accuracy": 0.6}]
    png = plot_training_curves(write_jsonl(tmp_path / "m.jsonl", records), tmp_path / "c.png")
    assert_png(png)


# ----------------------------------------------------------------------------- results table

def test_print_results_table_shows_types_and_numbers():
    # test: micro P 1/3, R 1/2, F1 0.4; PER P 0.5 R 1 F1 2/3 (support 1); LOC 0 (support 1)
    test = ner_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "B-ORG", "B-PER"]])
    # dev: everything right, 1 MISC entity
    dev = ner_metrics([["B-MISC", "O"]], [["B-MISC", "O"]])
    shown = io.StringIO()
    text = print_results_table({"test": test, "dev": dev},
                               console=Console(file=shown, width=100))
    assert shown.getvalue() == text
    assert text.index("dev results") < text.index("test results")
    test_text = text[text.index("test results"):]
    per_row = next(line for line in test_text.splitlines() if "PER" in line)
    assert per_row.replace("│", " ").split() == ["PER", "0.5000", "1.0000", "0.6667", "1"]
    micro_row = next(line for line in test_text.splitlines() if "micro avg" in line)
    assert micro_row.replace("│", " ").split() == ["micro", "avg", "0.3333", "0.5000",
                                                   "0.4000", "2"]
    assert "LOC" in test_text and "ORG" in test_text
    assert "token accuracy 0.5000" in test_text
    dev_micro = next(line for line in text.splitlines() if "micro avg" in line)
    assert dev_micro.replace("│", " ").split() == ["micro", "avg", "1.0000", "1.0000",
                                                  "1.0000", "1"]


def test_print_results_table_accepts_a_single_split():
    metrics = ner_metrics([["B-LOC"]], [["B-LOC"]])
    text = print_results_table(metrics, console=Console(file=io.StringIO()))
    assert "test results" in text
    loc_row = next(line for line in text.splitlines() if "LOC" in line)
    assert loc_row.replace("│", " ").split() == ["LOC", "1.0000", "1.0000", "1.0000", "1"]


# ----------------------------------------------------------------------------- progress bar

def test_progress_bar_shows_step_loss_and_throughput():
    output = io.StringIO()
    with ProgressBar(total=10, console=Console(file=output, width=120, force_terminal=True)) as bar:
        bar.update(5, loss=0.1234, tokens_per_sec=12345.6)
        bar.update(10, loss=np.float32(0.05))  # throughput kept from the last update
    shown = output.getvalue()
    assert "10/10" in shown
    assert "loss 0.0500" in shown
    assert "12,346 tok/s" in shown


def test_progress_bar_prints_nothing_where_it_cannot_render():
    output = io.StringIO()  # a log file: ProgressLog's lines take the bar's place there
    with ProgressBar(total=10, console=Console(file=output, width=120)) as bar:
        bar.update(10, loss=0.5, tokens_per_sec=10.0)
    assert output.getvalue() == ""


def test_disabled_progress_bar_prints_nothing():
    output = io.StringIO()
    bar = ProgressBar(total=3, enabled=False, console=Console(file=output, force_terminal=True))
    for step in range(1, 4):
        bar.update(step, loss=1.0, tokens_per_sec=10.0)
    bar.close()
    bar.close()  # idempotent
    assert output.getvalue() == ""


# ----------------------------------------------------------------------------- plain log lines

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def capture_log(name: str):
    records = []
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.handlers = [handler]
    return logger, records


def test_progress_log_train_lines_with_epoch_lr_throughput_and_eta(tmp_path):
    clock = Clock()
    logger, lines = capture_log("test.progress.train")
    progress = ProgressLog(total_steps=100, start_step=0, steps_per_epoch=40, count_predict_batches=lambda rows: -(-len(rows) // 64), log=logger,
                           clock=clock)
    with MetricsWriter(tmp_path) as writer:
        writer.add_listener(progress.record_written)
        clock.now = 20.0  # the first 10 steps, compilation included, took 20 s: 90 more at that pace = 180 s
        writer.write(10, "train", {"loss": 2.5, "learning_rate": 1e-4, "tokens_per_sec": 1234.4, "grad_norm": 1.0})
        clock.now = 30.0  # then 10 steps in 10 s: the eta follows the pace since the first line
        writer.write(20, "train", {"loss": 1.25, "learning_rate": 5e-5, "tokens_per_sec": 2000.0})
        writer.write(20, "dev", {"f1": 0.5})  # not a train line
    assert lines == ["step 10/100 (epoch 0.25) loss 2.5000 lr 1.00e-04 1,234 tokens/s eta 3m00s",
                     "step 20/100 (epoch 0.50) loss 1.2500 lr 5.00e-05 2,000 tokens/s eta 1m20s"]


def test_progress_log_leaves_train_lines_to_the_bar_and_resumes_from_its_step(tmp_path):
    clock = Clock()
    logger, lines = capture_log("test.progress.bar")
    quiet = ProgressLog(total_steps=100, start_step=0, steps_per_epoch=10, count_predict_batches=None, train_lines=False,
                        log=logger, clock=clock)
    quiet.record_written(10, "train", {"loss": 1.0})
    assert lines == []
    resumed = ProgressLog(total_steps=100, start_step=50, steps_per_epoch=10, count_predict_batches=None, log=logger,
                          clock=clock)
    clock.now = 5.0
    resumed.record_written(60, "train", {"loss": 1.0})
    assert lines == ["step 60/100 (epoch 6.00) loss 1.0000 eta 0m20s"]


def test_progress_log_shows_evaluation_progress():
    clock = Clock()
    logger, lines = capture_log("test.progress.eval")
    progress = ProgressLog(total_steps=10, start_step=0, steps_per_epoch=10, count_predict_batches=lambda rows: -(-len(rows) // 64), log=logger,
                           clock=clock, every_seconds=10.0)
    hooks = EvalProgressHooks(NO_HOOKS, progress)

    def predict_batches(rows):
        for start in range(0, len(rows), 64):
            clock.now += 6.0
            hooks.after_eval_batch()
        return rows

    def evaluate(split, predict_batches):
        return {"rows": len(predict_batches(list(range(200))))}

    assert progress.watch(evaluate)("dev", predict_batches) == {"rows": 200}
    assert lines == ["evaluating dev: 200 rows in 4 batches", "evaluating dev: 2/4 batches, 12 s",
                     "evaluating dev: 4/4 batches, 24 s", "evaluated dev in 24.0 s"]
    lines.clear()
    hooks.after_eval_batch()  # a batch outside an evaluation (nothing watched): no line
    assert progress.watch(lambda split, predict: {"sentences": 0})("test", predict_batches) == {"sentences": 0}
    assert lines == []  # an empty split predicts nothing: no lines


def test_an_empty_split_gets_no_table():
    dev = ner_metrics([["B-LOC"]], [["B-LOC"]])
    text = print_results_table({"dev": dev, "test": {"f1": float("nan"), "sentences": 0}},
                               console=Console(file=io.StringIO()))
    assert "dev results" in text and "test results" not in text and "nan" not in text
    assert print_results_table({"test": {"f1": float("nan"), "sentences": 0}}, console=Console(file=io.StringIO())) == ""
