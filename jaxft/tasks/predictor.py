"""What every task's predictor shares: loading exported folders (one model or an ensemble), the compiled
program over a fixed set of padded shapes, warm-up, and the sidecar file an export carries.

A Predictor loads one model (or several: an ensemble, whose outputs are combined inside one compiled
program) and runs rows through a fixed set of padded shapes: batch sizes (`batch_sizes`, rows padded up to
the smallest that fits) x length buckets. `warm_up()` compiles every shape ahead of time and `compilations`
counts the programs compiled so far, so a server can show that no request compiled anything.
Each task module defines its predictor on this base (tasks/ner.py TokenClassifier, ...); jaxft/predict.py
picks one from an export's config.json through the task registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxft.data.batching import bucket_lengths, collate
from jaxft.models import ModelLoadError, from_pretrained, load_tokenizer, task_of
from jaxft.models.quantized import WEIGHTS_FILE, load_quantized, quantization_info
from jaxft.train.state import split_model
from jaxft.train.step import compiled_count

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TASK_FILE = "jaxft_task.json"  # next to an export's config.json: what prediction needs beyond the HF config


def read_task_file(model_dir: str | Path) -> dict:
    """The export's jaxft_task.json ({} when it has none, e.g. a folder trained elsewhere)."""
    path = Path(model_dir) / TASK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------- loading

def load_model(model_dir: str | Path, task: str, *, dtype: str = "float32", safetensors_only: bool = False):
    """An exported folder -> model in eval mode: int8-quantized folders (models.quantized) or plain HF folders.
    safetensors_only refuses folders whose weights are pickles (pytorch_model.bin) or msgpack."""
    folder = Path(model_dir)
    if quantization_info(folder):
        return load_quantized(folder, task, dtype=dtype)
    if safetensors_only and folder.is_dir() and not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        raise ModelLoadError(f"{folder}: no model.safetensors (or {WEIGHTS_FILE}); only safetensors weights "
                             "are loaded here")
    return from_pretrained(folder, task=task, dtype=dtype)


def as_folder_list(model_dirs: str | Path | Sequence[str | Path]) -> list[str | Path]:
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    if not dirs:
        raise ValueError("no model folder given")
    return dirs


def load_members(model_dirs: str | Path | Sequence[str | Path], task: str, *, dtype: str = "float32",
                 safetensors_only: bool = False) -> tuple[list, Any]:
    """One model or an ensemble's members (same task, same labels, same tokenizer) and the tokenizer."""
    dirs = as_folder_list(model_dirs)
    models, tokenizer, vocab = [], None, None
    for folder in dirs:
        found = task_of(folder) if Path(folder).is_dir() else task
        if found != task:
            raise ModelLoadError(f"ensemble: {folder} is a {found} model, but {dirs[0]} is a {task} model")
        model = load_model(folder, task, dtype=dtype, safetensors_only=safetensors_only)
        if models:
            first = models[0]
            if tuple(model.labels) != tuple(first.labels):
                raise ModelLoadError(f"ensemble: {folder} has labels {list(model.labels)}, but {dirs[0]} has "
                                     f"{list(first.labels)}; every member must have the same labels in the same order")
            if getattr(model, "problem_type", None) != getattr(first, "problem_type", None):
                raise ModelLoadError(f"ensemble: {folder} is {model.problem_type}, but {dirs[0]} is "
                                     f"{first.problem_type}")
            if load_tokenizer(folder).get_vocab() != vocab:
                raise ModelLoadError(f"ensemble: {folder} has another tokenizer vocabulary than {dirs[0]}; members "
                                     "are averaged token by token and must share one tokenizer")
        else:
            tokenizer = load_tokenizer(folder)
            vocab = tokenizer.get_vocab()
        models.append(model)
    return models, tokenizer


# ---------------------------------------------------------------------------------------------- running

class EnsembleStep:
    """One jit-compiled program per input shape over one or more models: each member's predict_fn output,
    combined by `combine` (members > 1)."""

    def __init__(self, models: Sequence, predict_fn: Callable, combine: Callable | None = None):
        parts, self.states = [], []
        for model in models:
            part, params, frozen, rng = split_model(model)
            parts.append(part)
            self.states.append((params, frozen, rng))

        def step(states, batch):
            outputs = [predict_fn(part.merge(*state, train=False), batch) for part, state in zip(parts, states)]
            return outputs[0] if len(outputs) == 1 else combine(outputs)

        self._jitted = jax.jit(step)

    def __call__(self, batch: dict):
        return self._jitted(self.states, batch)

    @property
    def compilations(self) -> int:
        return compiled_count(self._jitted)


CALL_OVERHEAD_ROWS = 2.0  # one extra compiled call costs about as much as this many padded rows


def plan_call_sizes(count: int, batch_sizes: Sequence[int], overhead_rows: float = CALL_OVERHEAD_ROWS) -> list[int]:
    """Padded batch sizes whose calls cover `count` rows at the least cost, a call of size s costing
    s + overhead_rows: 10 rows with sizes (1, 8, 32) run as 8 + 1 + 1 rather than padded to 32. With one
    batch size this is ceil(count / size) calls of that size."""
    sizes = sorted(set(batch_sizes))
    if len(sizes) == 1:
        return [sizes[0]] * -(-count // sizes[0])
    full, rest = divmod(count, sizes[-1])
    best: list[tuple[float, list[int]]] = [(0.0, [])] + [(float("inf"), [])] * rest
    for n in range(1, rest + 1):  # least cost to cover n rows
        for size in sizes:
            cost, plan = best[max(0, n - size)]
            if cost + size + overhead_rows < best[n][0]:
                best[n] = (cost + size + overhead_rows, plan + [size])
    return [sizes[-1]] * full + sorted(best[rest][1], reverse=True)


def run_rows(fn: Callable, rows: Sequence[dict], batch_sizes: Sequence[int], buckets: Sequence[int],
             pad_values: dict, per_token: bool = True) -> list:
    """fn over length-sorted batches, padded to the batch sizes `plan_call_sizes` picks and to their length
    bucket; one output per row, in row order (per-token outputs cut back to the row's length). With one
    batch size this is data.batching.map_batches."""
    lengths = [len(row["input_ids"]) for row in rows]
    order = np.argsort(lengths, kind="stable")
    outputs: list = [None] * len(rows)
    start = 0
    for size in plan_call_sizes(len(rows), batch_sizes):
        indices = order[start:start + size]
        start += size
        if not len(indices):
            continue
        predicted = jax.device_get(fn(collate([rows[i] for i in indices], size, buckets, pad_values)))
        for row_in_batch, index in enumerate(indices):
            cut = (lambda x: x[row_in_batch, :lengths[index]]) if per_token else (lambda x: x[row_in_batch])
            outputs[index] = jax.tree.map(cut, predicted)
    return outputs


class Predictor:
    """What every task's predictor shares: loading the export(s), the compiled step, the shapes, warm-up and
    the compile count.

    Subclasses set `task`, `default_max_length` and `item_kind` (what one input item is: "text", "pair" or
    "question"; serve validates requests by it), implement `configure(models) -> (predict_fn, combine,
    pad_values)` (they may read `self.info`, the export's jaxft_task.json, and `self.max_length`) and
    `predict_items(items) -> results` (one result per item, in order; the items are what `predict` reads and
    `serve` accepts, already validated)."""

    task: str = ""
    default_max_length: int = 128
    item_kind: str = "text"
    per_token: bool = True

    def __init__(self, model_dir: str | Path | Sequence[str | Path], *, max_length: int | None = None,
                 batch_size: int = 32, bucket_multiple: int = 16, dtype: str = "float32",
                 batch_sizes: Sequence[int] | None = None,
                 length_buckets: Sequence[int] | Callable[[int], Sequence[int]] | None = None,
                 safetensors_only: bool = False):
        dirs = as_folder_list(model_dir)
        models, self.tokenizer = load_members(dirs, self.task, dtype=dtype, safetensors_only=safetensors_only)
        self.model = models[0]
        self.members = len(models)
        self.info = read_task_file(dirs[0])
        self.max_length = int(max_length or self.info.get("max_length") or self.default_max_length)
        self.batch_size = batch_size
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes or (batch_size,)}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        if callable(length_buckets):
            length_buckets = length_buckets(self.max_length)
        if length_buckets:
            self.buckets = sorted({int(b) for b in length_buckets if int(b) < self.max_length} | {self.max_length})
        else:
            self.buckets = bucket_lengths(self.max_length, bucket_multiple)
        predict_fn, combine, self.pad_values = self.configure(models)
        self._step = EnsembleStep(models, predict_fn, combine)

    def configure(self, models: Sequence) -> tuple[Callable, Callable | None, dict]:
        raise NotImplementedError

    def run_rows(self, rows: Sequence[dict]) -> list:
        return run_rows(self._step, rows, self.batch_sizes, self.buckets, self.pad_values, self.per_token)

    @property
    def compilations(self) -> int:
        return self._step.compilations

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(b, length) for b in self.batch_sizes for length in self.buckets]

    def warm_up(self) -> int:
        """Compile (and run once) every (batch size, length bucket) shape; returns the compile count."""
        row = {key: np.full(1, pad, np.int32) for key, pad in self.pad_values.items()}
        for size, length in self.shapes:
            jax.block_until_ready(self._step(collate([row], size, [length], self.pad_values)))
        return self.compilations

    def predict_items(self, items: list) -> list[dict]:
        raise NotImplementedError
