"""Run reports: metrics log (JSONL + TensorBoard), training-curve plot, results table, progress bar."""

from __future__ import annotations

import io
import json
import numbers
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


# ----------------------------------------------------------------------------- metrics log

def _as_scalar(value) -> float | None:
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
            scalar = _as_scalar(value)
            if scalar is not None:
                self._tensorboard.add_scalar(f"{split}/{name}", scalar, global_step=int(step))
        self._tensorboard.flush()
        if self._wandb is not None:
            scalars = {f"{split}/{n}": _as_scalar(v) for n, v in metrics.items() if _as_scalar(v) is not None}
            self._wandb.log({**scalars, "step": int(step)})

    def add_wandb(self, project: str, config: dict | None = None) -> None:
        """Log every scalar to a W&B run too (`WANDB_MODE=offline` needs no network; files go to
        workdir/wandb). The run id is kept in workdir/wandb_run_id.txt, so a resumed run continues its W&B
        run; "step" is the x axis, so steps a resume logs again do not break W&B's monotonic step."""
        if not self.enabled:
            return
        import uuid
        try:
            import wandb
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


def read_metrics(metrics_jsonl_path) -> list[dict]:
    """All records of a metrics.jsonl file, in order; blank lines skipped."""
    with open(metrics_jsonl_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- plot

def _series(records: list[dict], split: str, name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in records
              if r.get("split") == split and _as_scalar(r.get(name)) is not None]
    return [step for step, _ in points], [float(value) for _, value in points]


def _dev_metric_name(records: list[dict]) -> str:
    has_f1 = any(r.get("split") == "dev" and "f1" in r for r in records)
    return "f1" if has_f1 else "accuracy"


def plot_training_curves(metrics_jsonl_path, png_path, dev_metric: str | None = None) -> Path:
    """Two panels: train loss vs step, and the dev metric (default: F1, else accuracy) vs step."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, touches no display

    records = read_metrics(metrics_jsonl_path)
    loss_steps, losses = _series(records, "train", "loss")
    dev_metric = dev_metric or _dev_metric_name(records)
    dev_steps, dev_values = _series(records, "dev", dev_metric)

    figure = Figure(figsize=(11, 4))
    loss_axes, dev_axes = figure.subplots(1, 2)
    loss_axes.plot(loss_steps, losses, color="tab:blue")
    loss_axes.set(title="train loss", xlabel="step", ylabel="loss")
    if dev_steps:
        dev_axes.plot(dev_steps, dev_values, marker="o", color="tab:orange")
    else:
        dev_axes.text(0.5, 0.5, "no dev evaluation yet", ha="center", va="center",
                      transform=dev_axes.transAxes)
    dev_axes.set(title=f"dev {dev_metric}", xlabel="step", ylabel=dev_metric)
    for axes in (loss_axes, dev_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    return png_path


# ----------------------------------------------------------------------------- results table

def _is_split_metrics(value) -> bool:
    return isinstance(value, dict) and ("f1" in value or "accuracy" in value)


def _score_cells(scores: dict) -> list[str]:
    return [f"{scores.get(key, 0.0):.4f}" for key in ("precision", "recall", "f1")]


def _results_table(split: str, metrics: dict) -> Table:
    table = Table(title=f"{split} results")
    table.add_column("type")
    for header in ("precision", "recall", "f1", "support"):
        table.add_column(header, justify="right")
    per_type = metrics.get("per_type", {})
    for entity_type, scores in sorted(per_type.items()):
        table.add_row(entity_type, *_score_cells(scores), str(scores.get("support", "")))
    if per_type:
        table.add_section()
    total_support = sum(scores.get("support", 0) for scores in per_type.values())
    table.add_row("micro avg", *_score_cells(metrics), str(total_support) if per_type else "")
    if "accuracy" in metrics:
        table.caption = f"token accuracy {metrics['accuracy']:.4f}"
    return table


def _ordered_splits(results: dict) -> list[str]:
    """dev, then test, then any other split that holds metrics."""
    preferred = [split for split in ("dev", "test") if split in results]
    others = [split for split in results if split not in preferred]
    return [split for split in preferred + others if _is_split_metrics(results[split])]


def print_results_table(results: dict, console: Console | None = None) -> str:
    """Print per-type precision/recall/F1/support plus the micro row for each split of
    `results` ({split: ner_metrics(...)}); a bare metrics dict is shown as "test".
    Returns the rendered text (no colour codes)."""
    if _is_split_metrics(results):
        results = {"test": results}
    console = console or Console()
    text_buffer = io.StringIO()
    text_console = Console(file=text_buffer, width=max(console.width, 80), color_system=None)
    for split in _ordered_splits(results):
        table = _results_table(split, results[split])
        console.print(table)
        text_console.print(table)
    return text_buffer.getvalue()


# ----------------------------------------------------------------------------- progress

def _loss_text(loss: float | None) -> str:
    return "" if loss is None else f"loss {loss:.4f}"


def _throughput_text(tokens_per_sec: float | None) -> str:
    return "" if tokens_per_sec is None else f"{tokens_per_sec:,.0f} tok/s"


class ProgressBar:
    """A rich progress bar: step/total, loss, tokens/s, ETA. Prints nothing when disabled;
    on a non-terminal output rich prints only the final state."""

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
            disable=not enabled,
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
