"""What the training loop writes while it runs: metrics.jsonl (+ TensorBoard, W&B) and the progress bar."""

from __future__ import annotations

import json
import numbers
import uuid
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)

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
