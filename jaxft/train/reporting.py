"""What the training loop writes while it runs: metrics.jsonl (+ TensorBoard, W&B), the progress bar on a
terminal, and plain log lines a person can follow in a log file (ProgressLog)."""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)

from jaxft.train.hooks import Hooks

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"

# ----------------------------------------------------------------------------- metrics log

def as_scalar(value) -> float | None:
    """A plain float for numeric scalars (Python, numpy, 0-d arrays); None for anything else."""
    if isinstance(value, numbers.Real):  # includes bool and numpy scalars
        return float(value)
    if getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return None


def _json_default(value):
    """Serialise numpy/JAX values that `json` does not know."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class MetricsWriter:
    """Appends `{"step", "split", **metrics}` lines to `workdir/metrics.jsonl` and scalar
    metrics to TensorBoard under `workdir/tensorboard` (tags `{split}/{name}`).

    With `enabled=False` (non-zero processes of a multi-host run) nothing is written.
    `add_wandb` also sends the same scalars to Weights & Biases (config `train.wandb`).
    """

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.jsonl_path = self.workdir / METRICS_FILENAME
        self._jsonl_file = None
        self._tensorboard = None
        self._wandb = None
        self._listeners: list[Callable[[int, str, dict], None]] = []
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported only where something is written

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_file = open(self.jsonl_path, "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(logdir=str(self.workdir / TENSORBOARD_DIRNAME))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        if self._jsonl_file is None:
            raise RuntimeError("MetricsWriter is closed")
        record = {"step": int(step), "split": split, **metrics}
        self._jsonl_file.write(json.dumps(record, default=_json_default) + "\n")
        self._jsonl_file.flush()
        for name, value in metrics.items():
            scalar = as_scalar(value)
            if scalar is not None:
                self._tensorboard.add_scalar(f"{split}/{name}", scalar, global_step=int(step))
        self._tensorboard.flush()
        if self._wandb is not None:
            scalars = {f"{split}/{n}": as_scalar(v) for n, v in metrics.items() if as_scalar(v) is not None}
            self._wandb.log({**scalars, "step": int(step)})
        for listener in self._listeners:
            listener(int(step), split, metrics)

    def add_listener(self, listener: Callable[[int, str, dict], None]) -> None:
        """listener(step, split, metrics) after every written record (ProgressLog's train lines)."""
        self._listeners.append(listener)

    def add_wandb(self, project: str, config: dict | None = None) -> None:
        """Log every scalar to a W&B run too (`WANDB_MODE=offline` needs no network; files go to
        workdir/wandb). The run id is kept in workdir/wandb_run_id.txt, so a resumed run continues its W&B
        run; "step" is the x axis, so steps a resume logs again do not break W&B's monotonic step."""
        if not self.enabled:
            return
        try:
            import wandb  # optional: pip install 'jaxft[wandb]'
        except ImportError:
            raise RuntimeError("train.wandb=True needs the wandb package: pip install 'jaxft[wandb]'") from None
        id_file = self.workdir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self._wandb = wandb.init(project=project, id=run_id, resume="allow", dir=str(self.workdir),
                                 name=self.workdir.name, config=config or {})
        self._wandb.define_metric("step")
        self._wandb.define_metric("*", step_metric="step")

    def close(self) -> None:
        if self._jsonl_file is not None:
            self._jsonl_file.close()
            self._jsonl_file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------- progress

def _loss_text(loss: float | None) -> str:
    return "" if loss is None else f"loss {loss:.4f}"


def _throughput_text(tokens_per_sec: float | None) -> str:
    return "" if tokens_per_sec is None else f"{tokens_per_sec:,.0f} tok/s"


def bar_visible(console: Console | None = None) -> bool:
    """Whether a rich progress bar renders on `console` (default: stdout): a terminal or a notebook."""
    console = console or Console()
    return console.is_terminal or console.is_jupyter


class ProgressBar:
    """A rich progress bar: step/total, loss, tokens/s, ETA. Prints nothing when disabled or when its console
    is neither a terminal nor a notebook (a log file gets ProgressLog's lines instead)."""

    def __init__(self, total: int, description: str = "train", enabled: bool = True,
                 console: Console | None = None):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TextColumn("{task.fields[throughput]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and bar_visible(console)),
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(description, total=total, loss="", throughput="")
        self._progress.start()
        self._closed = False

    def update(self, step: int, loss: float | None = None,
               tokens_per_sec: float | None = None) -> None:
        fields = {}
        if loss is not None:
            fields["loss"] = _loss_text(float(loss))
        if tokens_per_sec is not None:
            fields["throughput"] = _throughput_text(float(tokens_per_sec))
        self._progress.update(self._task, completed=step, **fields)

    def close(self) -> None:
        if not self._closed:
            self._progress.stop()
            self._closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------- plain log lines

def duration_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLog:
    """Log lines a person can follow where no progress bar renders (nohup, SLURM, CI logs):

        step 40/400 (epoch 0.48) loss 0.5123 lr 9.50e-05 2,345 tokens/s eta 5m12s
        evaluating dev: 359 rows in 6 batches
        evaluating dev: 4/6 batches, 10 s
        evaluated dev in 14.2 s

    Train lines come from the metrics writer's train records (one per train.log_every steps; `train_lines`
    False leaves them to the progress bar); evaluation lines from the task's evaluate and the trainer's
    after_eval_batch hook, every `every_seconds` while an evaluation runs. The eta is the remaining steps
    at the pace since the first line (the first line's pace includes compilation)."""

    def __init__(self, *, total_steps: int, start_step: int, steps_per_epoch: int,
                 count_predict_batches: Callable[[Sequence], int] | None,
                 train_lines: bool = True, log: logging.Logger | None = None, every_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total_steps, self.steps_per_epoch = total_steps, max(1, steps_per_epoch)
        self.count_predict_batches = count_predict_batches
        self.train_lines, self.every_seconds, self.clock = train_lines, every_seconds, clock
        self.log = log or logging.getLogger("jaxft.train")
        self._origin = (clock(), start_step)   # pace of the first line: since the run (re)started
        self._first_line: tuple[float, int] | None = None
        self._eval: dict | None = None

    @classmethod
    def attach(cls, trainer, task, *, train_lines: bool, **options) -> "ProgressLog":
        """Wire one into a Trainer (after restore_latest, so the start step is known) and its task: train
        lines from trainer.metrics, evaluation progress from task.evaluate and the after_eval_batch hook."""
        progress = cls(total_steps=trainer.total_steps, start_step=int(trainer.state["step"]),
                       steps_per_epoch=len(trainer.batches.epoch(0)),
                       count_predict_batches=trainer.batches.count_predict_batches, train_lines=train_lines,
                       **options)
        trainer.metrics.add_listener(progress.record_written)
        trainer.hooks = EvalProgressHooks(trainer.hooks, progress)
        task.evaluate = progress.watch(task.evaluate)
        return progress

    # ------------------------------------------------------------------ training

    def record_written(self, step: int, split: str, metrics: dict) -> None:
        if split == "train" and self.train_lines and as_scalar(metrics.get("loss")) is not None:
            self.log.info("%s", self.train_line(step, metrics))

    def train_line(self, step: int, metrics: dict) -> str:
        now = self.clock()
        if self._first_line is None:
            self._first_line = (now, step)
            since, since_step = self._origin
        else:
            since, since_step = self._first_line
        parts = [f"step {step}/{self.total_steps} (epoch {step / self.steps_per_epoch:.2f})",
                 f"loss {float(metrics['loss']):.4f}"]
        if as_scalar(metrics.get("learning_rate")) is not None:
            parts.append(f"lr {float(metrics['learning_rate']):.2e}")
        if as_scalar(metrics.get("tokens_per_sec")) is not None:
            parts.append(f"{float(metrics['tokens_per_sec']):,.0f} tokens/s")
        if step > since_step:
            parts.append(f"eta {duration_text((self.total_steps - step) * (now - since) / (step - since_step))}")
        return " ".join(parts)

    # ------------------------------------------------------------------ evaluation

    def watch(self, evaluate: Callable) -> Callable:
        """task.evaluate(split, predict_batches), logging its start, progress and duration."""
        def watched(split: str, predict_batches: Callable):
            started = self.clock()
            self._eval = {"split": split, "batches": 0, "total": None, "started": started, "last": started}

            def counted(rows, *args, **kwargs):
                total = self.count_predict_batches(rows) if self.count_predict_batches and rows else None
                self._eval["total"] = total
                self.log.info("evaluating %s: %s rows%s", split, f"{len(rows):,}",
                              f" in {total} batch{'es' if total > 1 else ''}" if total else "")
                return predict_batches(rows, *args, **kwargs)

            try:
                return evaluate(split, counted)
            finally:
                if self._eval["batches"]:
                    self.log.info("evaluated %s in %.1f s", split, self.clock() - started)
                self._eval = None

        return watched

    def batch_done(self) -> None:
        if self._eval is None:
            return
        self._eval["batches"] += 1
        now = self.clock()
        if now - self._eval["last"] >= self.every_seconds:
            self._eval["last"] = now
            of = f"/{self._eval['total']}" if self._eval["total"] else ""
            self.log.info("evaluating %s: %d%s batches, %.0f s", self._eval["split"], self._eval["batches"], of,
                          now - self._eval["started"])


class EvalProgressHooks(Hooks):
    """The run's hooks, plus ProgressLog's count of evaluation batches."""

    def __init__(self, inner: Hooks, progress: ProgressLog):
        self.inner, self.progress = inner, progress

    def before_step(self, step: int, batch: dict) -> dict:
        return self.inner.before_step(step, batch)

    def after_step(self, step: int) -> None:
        self.inner.after_step(step)

    def after_save(self, step: int) -> None:
        self.inner.after_save(step)

    def after_eval_batch(self) -> None:
        self.inner.after_eval_batch()
        self.progress.batch_done()

    def after_export_file(self, path: Path) -> None:
        self.inner.after_export_file(path)
