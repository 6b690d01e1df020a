"""Prediction with exported model folders: the in-process Predictor that `predict` and `serve` share.

A Predictor loads one model (or several: an ensemble, whose outputs are averaged inside one compiled
program) and runs rows through a fixed set of padded shapes: batch sizes (`batch_sizes`, rows padded up to
the smallest that fits) x length buckets. `warm_up()` compiles every shape ahead of time and `compilations`
counts the programs compiled so far, so a server can show that no request compiled anything.
Task-specific predictors: TokenClassifier (here, NER), tasks.classification.SequenceClassifier,
tasks.qa.QuestionAnswerer; `load_predictor` picks one from an export's config.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.data.batching import bucket_lengths, collate
from jaxft.data.tokenize import encode_for_prediction, gather_word_predictions
from jaxft.evaluate.metrics import decode_entities, word_char_offsets
from jaxft.models import TOKEN_CLASSIFICATION, ModelLoadError, from_pretrained, load_tokenizer
from jaxft.train.state import split_model
from jaxft.train.step import compiled_count

IGNORE = -100
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


# ---------------------------------------------------------------------------------------------- loading

def exported_task(model_dir: str | Path) -> str:
    from jaxft.main import exported_task as task_of
    return task_of(str(model_dir))


def load_model(model_dir: str | Path, task: str, *, dtype: str = "float32", safetensors_only: bool = False):
    """An exported folder -> model in eval mode: int8-quantized folders (jaxft.quantize) or plain HF folders.
    safetensors_only refuses folders whose weights are pickles (pytorch_model.bin) or msgpack."""
    from jaxft.quantize import WEIGHTS_FILE, load_quantized, quantization_info

    folder = Path(model_dir)
    if quantization_info(folder):
        return load_quantized(folder, task, dtype=dtype)
    if safetensors_only and folder.is_dir() and not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        raise ModelLoadError(f"{folder}: no model.safetensors (or {WEIGHTS_FILE}); only safetensors weights "
                             "are loaded here")
    return from_pretrained(folder, task=task, dtype=dtype)


def load_members(model_dirs: str | Path | Sequence[str | Path], task: str, *, dtype: str = "float32",
                 safetensors_only: bool = False) -> tuple[list, Any]:
    """One model or an ensemble's members (same task, same labels, same tokenizer) and the tokenizer."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    if not dirs:
        raise ValueError("no model folder given")
    models, tokenizer, vocab = [], None, None
    for folder in dirs:
        found = exported_task(folder) if Path(folder).is_dir() else task
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


def plan_batches(count: int, batch_sizes: Sequence[int], overhead_rows: float = CALL_OVERHEAD_ROWS) -> list[int]:
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
    """fn over length-sorted batches, padded to the batch sizes `plan_batches` picks and to their length
    bucket; one output per row, in row order (per-token outputs cut back to the row's length). With one
    batch size this is data.batching.map_batches."""
    lengths = [len(row["input_ids"]) for row in rows]
    order = np.argsort(lengths, kind="stable")
    outputs: list = [None] * len(rows)
    start = 0
    for size in plan_batches(len(rows), batch_sizes):
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
    """What every task's predictor shares: the compiled step, the shapes, warm-up and the compile count.

    Subclasses set `task`, call `_setup` and implement `predict_items(items) -> results` (one result per
    item, in order; the items are what `predict` reads and `serve` accepts, already validated)."""

    task: str = ""
    per_token: bool = True

    def _setup(self, models: Sequence, predict_fn: Callable, combine: Callable, pad_values: dict, *,
               max_length: int, batch_sizes: Sequence[int], bucket_multiple: int = 16,
               length_buckets: Sequence[int] | Callable[[int], Sequence[int]] | None = None) -> None:
        self.members = len(models)
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        if callable(length_buckets):
            length_buckets = length_buckets(max_length)
        if length_buckets:
            buckets = sorted({int(b) for b in length_buckets if int(b) < max_length} | {max_length})
        else:
            buckets = bucket_lengths(max_length, bucket_multiple)
        self.buckets = buckets
        self.pad_values = pad_values
        self._step = EnsembleStep(models, predict_fn, combine)

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


def load_predictor(model_dirs: str | Path | Sequence[str | Path], *, max_length: int | None = None,
                   **kwargs) -> Predictor:
    """The task's predictor for one export or an ensemble of exports (the task is read from config.json)."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    task = exported_task(dirs[0])
    if task == TOKEN_CLASSIFICATION:
        return TokenClassifier(dirs, max_length=max_length or 128, **kwargs)
    if task == "sequence-classification":
        from jaxft.tasks.classification import SequenceClassifier
        return SequenceClassifier(dirs, max_length=max_length, **kwargs)
    from jaxft.tasks.qa import QuestionAnswerer
    return QuestionAnswerer(dirs, max_length=max_length, **kwargs)


@dataclasses.dataclass
class TokenPrediction:
    words: list[str]
    tags: list[str]
    scores: list[float]  # probability of each word's predicted tag


class TokenClassifier(Predictor):
    """A jit-compiled NER predictor over fixed shapes (batch sizes x length buckets), one model or an
    ensemble (word probabilities averaged over the members)."""

    task = TOKEN_CLASSIFICATION

    def __init__(self, model_dir: str | Path | Sequence[str | Path], *, max_length: int = 128, batch_size: int = 32,
                 bucket_multiple: int = 16, dtype: str = "float32", batch_sizes: Sequence[int] | None = None,
                 length_buckets: Sequence[int] | None = None, safetensors_only: bool = False):
        models, self.tokenizer = load_members(model_dir, TOKEN_CLASSIFICATION, dtype=dtype,
                                              safetensors_only=safetensors_only)
        self.model = models[0]
        self.labels = list(self.model.labels)
        self.max_length = max_length
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "labels": IGNORE}
        self._setup(models, token_log_probs, average_log_probs, pad_values, max_length=max_length,
                    batch_sizes=batch_sizes or (batch_size,), bucket_multiple=bucket_multiple,
                    length_buckets=length_buckets)

    def predict_words(self, sentences: list[list[str]]) -> list[TokenPrediction]:
        windows = encode_for_prediction(self.tokenizer, sentences, self.max_length)
        rows = [{"input_ids": w.input_ids, "labels": w.labels} for w in windows]
        token_scores = self.run_rows(rows)
        word_scores = gather_word_predictions(windows, token_scores, [len(s) for s in sentences])
        predictions = []
        for words, scores in zip(sentences, word_scores):
            best = scores.argmax(-1) if len(words) else np.zeros(0, int)
            probs = np.exp(scores[np.arange(len(words)), best]) if len(words) else np.zeros(0)
            predictions.append(TokenPrediction(list(words), [self.labels[i] for i in best],
                                               [float(p) for p in probs]))
        return predictions

    def predict_texts(self, texts: list[str]) -> list[dict]:
        """Whitespace-tokenised texts -> {"text", "entities": [{type, text, start, end, score}]}."""
        sentences = [text.split() for text in texts]
        results = []
        for text, prediction in zip(texts, self.predict_words(sentences)):
            offsets = word_char_offsets(text, prediction.words)
            entities = decode_entities(prediction.words, prediction.tags, prediction.scores, offsets, text=text)
            results.append({"text": text, "entities": [_public_entity(e) for e in entities]})
        return results

    def predict_items(self, items: list) -> list[dict]:
        return self.predict_texts(list(items))


def token_log_probs(model, batch):
    return jax.nn.log_softmax(model(batch["input_ids"], batch["attention_mask"]), axis=-1)


def average_log_probs(outputs: list):
    """log of the mean of the members' probabilities."""
    return jax.nn.logsumexp(jnp.stack(outputs), axis=0) - jnp.log(len(outputs))


def _public_entity(entity: dict) -> dict:
    return {key: entity[key] for key in ("type", "text", "start", "end", "score") if key in entity}


def read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def run_predict(model_dir: str | Sequence[str], input_path: str | None, output: TextIO = sys.stdout, *,
                max_length: int = 128, batch_size: int = 32, chunk: int = 256, input_format: str = "text") -> int:
    """Predict one sentence per input line (stdin when no path), or the sentences of a CoNLL file (first
    column; words joined by single spaces for the offsets); writes one JSON object per sentence."""
    classifier = TokenClassifier(model_dir, max_length=max_length, batch_size=batch_size)
    if input_format == "conll":
        from jaxft.data.readers import read_conll
        if input_path in (None, "-"):
            raise ValueError("--format conll needs --input FILE")
        sentences = read_conll(input_path, tag_column=None)
        texts = [" ".join(sentence.tokens) for sentence in sentences]
        for start in range(0, len(texts), chunk):
            for result in classifier.predict_texts(texts[start:start + chunk]):
                output.write(json.dumps(result, ensure_ascii=False) + "\n")
        return len(texts)
    stream = sys.stdin if input_path in (None, "-") else open(input_path, encoding="utf-8")
    count = 0
    with stream:
        for texts in _chunks(read_lines(stream), chunk):
            for result in classifier.predict_texts(texts):
                output.write(json.dumps(result, ensure_ascii=False) + "\n")
                count += 1
    return count


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
