"""Reports after a run: the training-curve plot from metrics.jsonl and the results table."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jaxft.train.reporting import as_scalar


def read_metrics(metrics_jsonl_path) -> list[dict]:
    """All records of a metrics.jsonl file, in order; blank lines skipped."""
    with open(metrics_jsonl_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- plot

def _series(records: list[dict], split: str, name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in records
              if r.get("split") == split and as_scalar(r.get(name)) is not None]
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

COUNT_KEYS = ("sentences", "examples", "questions")  # how many items a split's metrics were computed on


def _is_split_metrics(value) -> bool:
    return isinstance(value, dict) and ("f1" in value or "accuracy" in value)


def _is_empty_split(metrics: dict) -> bool:
    """Metrics of a split with no data (no test file): a table of them would show zeros and nan."""
    return any(metrics.get(key) == 0 for key in COUNT_KEYS) or (
        not metrics.get("per_type") and all(as_scalar(v) is None or v != v for v in metrics.values()))


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
    return [split for split in preferred + others
            if _is_split_metrics(results[split]) and not _is_empty_split(results[split])]


def print_results_table(results: dict, console: Console | None = None) -> str:
    """Print per-type precision/recall/F1/support plus the micro row for each split of
    `results` ({split: ner_metrics(...)}); a bare metrics dict is shown as "test". A split without data
    (0 sentences, or nothing but nan) gets no table. Returns the rendered text (no colour codes)."""
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
