"""Sequence classification (task "sequence-classification"): single-label, multi-label (sigmoid + BCE, dev-tuned
threshold) and regression; data, Task, predictor and the task's spec.

Texts (or sentence pairs) come from CSV/TSV/JSON/JSONL/parquet files or a hub dataset (see
data.text_readers); the label set is read from the training split and every dev/test label must be in it.
A row is {"input_ids", "token_type_ids" (when the tokenizer gives them), and one target}: "label"
(class id), "labels" (multi-hot, float32) or "target" (float32). The model reads the first token
([CLS]) through the checkpoint family's own head, so an export loads as *ForSequenceClassification.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxft.config import PACKAGED_ROTTEN_TOMATOES, PACKAGED_TWEETS_NER, PROBLEM_TYPES, SEQUENCE_CLASSIFICATION, ConfigError
from jaxft.data.augment import augment_train
from jaxft.data.errors import DataError
from jaxft.data.readers import hf_data_files, train_dev_test
from jaxft.data.text_readers import (TEXT_EXTENSIONS, TextExample, read_hf_text_dataset,
                                     read_packaged_rotten_tomatoes, read_text_examples, table_suffix)
from jaxft.evaluate.classification_metrics import (multi_label_metrics, plot_confusion_matrix,
                                                   regression_metrics, single_label_metrics, tune_threshold)
from jaxft.evaluate.reports import plot_training_curves
from jaxft.models.encoder import model_inputs
from jaxft.tasks.base import TaskSpec, TrainingTask
from jaxft.tasks.losses import smoothed_binary_cross_entropy, smoothed_cross_entropy
from jaxft.tasks.predictor import Predictor

log = logging.getLogger("jaxft.classification")

SINGLE, MULTI, REGRESSION = PROBLEM_TYPES
MAIN_METRICS = {SINGLE: "accuracy", MULTI: "micro_f1", REGRESSION: "pearson"}
DEFAULT_MAX_LENGTH = 128


# ---------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class TextSplits:
    train: list[TextExample]
    dev: list[TextExample]
    test: list[TextExample]
    class_names: list[str] | None = None  # a hub dataset's ClassLabel names (all of them, in order)


def read_splits(data, problem_type: str = SINGLE) -> TextSplits:
    """Train/dev/test examples from files, the packaged reviews or a hub dataset; a lone train file is split
    70/15/15 in file order, a missing dev file is the last 15% of train."""
    if data.hf_dataset:
        return _read_hf_splits(data)
    if data.train_file == PACKAGED_ROTTEN_TOMATOES:
        train = read_packaged_rotten_tomatoes()  # its own columns: text, category (fresh/rotten)
    elif not data.train_file or data.train_file.startswith("packaged:"):
        raise ConfigError(f"data.train_file {data.train_file!r} is not a text-classification file "
                          f"(use a CSV/TSV/JSON/JSONL/parquet file or {PACKAGED_ROTTEN_TOMATOES!r})")
    else:
        train = _read_file(data.train_file, data, problem_type)
    dev = _read_file(data.validation_file, data, problem_type) if data.validation_file else []
    test = _read_file(data.test_file, data, problem_type) if data.test_file else []
    return TextSplits(*train_dev_test(train, dev, test))


def _read_file(path: str, data, problem_type: str) -> list[TextExample]:
    return read_text_examples(path, data.text_column, data.text_pair_column or "", data.label_column,
                              allow_empty_label=problem_type == MULTI)


def _read_hf_splits(data) -> TextSplits:
    kwargs = {}
    if data.train_file.startswith("packaged:"):
        raise ConfigError("data.hf_dataset is set while data.train_file is a packaged default: set "
                          "data.train_file='' (or to the data files of a builder such as 'csv' or 'json')")
    if data.train_file:
        kwargs["data_files"] = hf_data_files(data)
    splits, names = [], None
    for split in (data.train_split, data.validation_split, data.test_split):
        if not split or ("data_files" in kwargs and split not in kwargs["data_files"] and split != "train"):
            splits.append([])
            continue
        examples, split_names = read_hf_text_dataset(
            data.hf_dataset, data.hf_config_name or None, split, data.text_column, data.text_pair_column or "",
            data.label_column, **kwargs)
        names = names or split_names
        splits.append([e for e in examples if e.label is not None or split == data.train_split])
    return TextSplits(*train_dev_test(*splits), names)


# ---------------------------------------------------------------------------------------------- labels

def label_key(value: Any, where: str) -> str:
    """One class label as a string: ints (and integral floats) as their digits, strings stripped."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DataError(where, f"a class label must be a string or an integer, got {value!r}")


def label_keys(value: Any, where: str, separator: str) -> list[str]:
    """Multi-label labels: a list, or one string split on `separator` ("" for none)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [label_key(v, where) for v in value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()] if separator else [value.strip()]
    return [label_key(value, where)]


def regression_target(value: Any, where: str) -> float:
    try:
        target = float(value)
    except (TypeError, ValueError):
        raise DataError(where, f"a regression target must be a number, got {value!r}") from None
    if not np.isfinite(target):
        raise DataError(where, f"a regression target must be finite, got {value!r}")
    return target


def _sorted_labels(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    if all(k.lstrip("-").isdigit() for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def label_list(splits: TextSplits, problem_type: str, separator: str = ",") -> list[str]:
    """The classes, read from the training split (a hub dataset's ClassLabel names when it has them)."""
    if problem_type == REGRESSION:
        return ["LABEL_0"]
    if splits.class_names:
        return list(splits.class_names)
    if problem_type == MULTI:
        keys = [k for e in splits.train for k in label_keys(e.label, e.source, separator)]
    else:
        keys = [label_key(e.label, e.source) for e in splits.train]
    if not keys:
        raise DataError(splits.train[0].source if splits.train else "train", "no labels in the training data")
    return _sorted_labels(keys)


def check_labels(examples: Sequence[TextExample], labels: Sequence[str], problem_type: str, separator: str,
                 split: str) -> None:
    """Every label of a dev/test split must be one the model can predict: name the first that is not."""
    if problem_type == REGRESSION:
        for e in examples:
            regression_target(e.label, e.source)
        return
    known = set(labels)
    for e in examples:
        keys = label_keys(e.label, e.source, separator) if problem_type == MULTI else [label_key(e.label, e.source)]
        for key in keys:
            if key not in known:
                shown = ", ".join(repr(k) for k in list(labels)[:10]) + (", ..." if len(labels) > 10 else "")
                raise DataError(e.source, f"{split} label {key!r} does not occur in the training data, whose "
                                          f"{len(labels)} labels are {shown}")


def class_weight_vector(spec: str, problem_type: str, labels: Sequence[str], targets: np.ndarray) -> np.ndarray | None:
    """none | balanced | "label:weight,...": per-class loss weights (single-label) or positive weights
    (multi-label BCE). balanced = n / (classes * count) for single-label, negatives / positives for multi-label."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if problem_type == REGRESSION:
        raise ConfigError("classification.class_weights does not apply to regression; set it to 'none'")
    k = len(labels)
    if spec == "balanced":
        if problem_type == SINGLE:
            counts = np.bincount(targets, minlength=k).astype(np.float64)
            return (len(targets) / (k * np.maximum(counts, 1))).astype(np.float32)
        positives = targets.sum(0)
        return ((len(targets) - positives) / np.maximum(positives, 1)).astype(np.float32)
    weights = np.ones(k, np.float32)
    index = {label: i for i, label in enumerate(labels)}
    for part in spec.split(","):
        name, sep, value = part.rpartition(":")
        if not sep or name.strip() not in index:
            raise ConfigError(f"classification.class_weights: {part!r} is not 'label:weight' with a label among "
                              f"{', '.join(map(repr, labels))} (or use 'none' / 'balanced')")
        try:
            weights[index[name.strip()]] = float(value)
        except ValueError:
            raise ConfigError(f"classification.class_weights: weight {value!r} of {name!r} is not a number") from None
    return weights


# ---------------------------------------------------------------------------------------------- encoding

@dataclasses.dataclass
class TruncationCount:
    examples: int = 0
    truncated: int = 0       # examples longer than max_length, cut
    dropped_tokens: int = 0  # sub-tokens those lost


def encode_texts(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int
                 ) -> tuple[list[dict[str, np.ndarray]], TruncationCount]:
    """Batched fast tokenization with the model's special tokens; texts longer than max_length are truncated
    (pairs: longest first) and counted."""
    texts = list(texts)
    pairs = list(pairs) if pairs is not None else None
    count = TruncationCount(examples=len(texts))
    if not texts:
        return [], count
    encoded = tokenizer(texts, pairs, padding=False, truncation=False, return_token_type_ids=True,
                        return_attention_mask=False, verbose=False)
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids")
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    if long:
        count.truncated = len(long)
        count.dropped_tokens = sum(len(ids[i]) - max_length for i in long)
        cut = tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs is not None else None,
                        padding=False, truncation="longest_first", max_length=max_length,
                        return_token_type_ids=True, return_attention_mask=False, verbose=False)
        ids, types = list(ids), list(types) if types is not None else None
        for j, i in enumerate(long):
            ids[i] = cut["input_ids"][j]
            if types is not None:
                types[i] = cut["token_type_ids"][j]
    rows = []
    for i, row in enumerate(ids):
        item = {"input_ids": np.asarray(row, np.int32)}
        if types is not None:
            item["token_type_ids"] = np.asarray(types[i], np.int32)
        rows.append(item)
    return rows, count


def predict_fn(problem_type: str) -> Callable:
    """model, batch -> class probabilities [B, K] (softmax or sigmoid), or the regression value [B]."""
    def predict(model, batch):
        logits = model(**model_inputs(batch))
        if problem_type == SINGLE:
            return jax.nn.softmax(logits, axis=-1)
        if problem_type == MULTI:
            return jax.nn.sigmoid(logits)
        return logits[:, 0]
    return predict


# ---------------------------------------------------------------------------------------------- the task

class ClassificationTask(TrainingTask):
    """The sequence-classification side of the training loop (see train.loop.Task)."""

    per_token_outputs = False
    label_smoothing = 0.0  # train.label_smoothing (set by build)

    def __init__(self, tokenizer, splits: TextSplits, labels: Sequence[str], *, max_length: int,
                 problem_type: str = SINGLE, class_weights: str = "none", threshold: float = 0.5,
                 tune_threshold_on_dev: bool = True, label_separator: str = ",", main_metric: str | None = None,
                 text_column: str = "text", text_pair_column: str = ""):
        if problem_type not in MAIN_METRICS:
            raise ConfigError(f"problem_type must be one of {', '.join(MAIN_METRICS)}, got {problem_type!r}")
        self.problem_type = problem_type
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.separator = label_separator
        self.text_column, self.text_pair_column = text_column, text_pair_column  # written into the export
        self.main_metric = main_metric or MAIN_METRICS[problem_type]
        self.threshold = float(threshold)
        self.tune_threshold_on_dev = tune_threshold_on_dev
        self.splits = {"train": splits.train, "dev": splits.dev, "test": splits.test}
        self.pairs = bool(splits.train) and splits.train[0].text_pair is not None
        for name in ("dev", "test"):
            check_labels(self.splits[name], self.labels, problem_type, label_separator, name)
        self.rows: dict[str, list[dict]] = {}
        self.targets: dict[str, np.ndarray] = {}
        self.truncation: dict[str, TruncationCount] = {}
        for name, examples in self.splits.items():
            rows, self.truncation[name] = encode_texts(
                tokenizer, [e.text for e in examples], [e.text_pair for e in examples] if self.pairs else None,
                max_length)
            self.targets[name] = self._targets(examples)
            key = self.target_key
            for row, target in zip(rows, self.targets[name]):
                row[key] = target
            self.rows[name] = rows
        self.train_rows = self.rows["train"]
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0}
        if self.train_rows and "token_type_ids" in self.train_rows[0]:
            self.pad_values["token_type_ids"] = 0
        weights = class_weight_vector(class_weights, problem_type, self.labels, self.targets["train"])
        self.class_weights = None if weights is None else jnp.asarray(weights)
        if weights is not None:
            log.info("class weights: %s", ", ".join(f"{l}={w:.3g}" for l, w in zip(self.labels, weights)))
        self._predict = predict_fn(problem_type)

    @property
    def target_key(self) -> str:
        return {SINGLE: "label", MULTI: "labels", REGRESSION: "target"}[self.problem_type]

    def _targets(self, examples: Sequence[TextExample]) -> np.ndarray:
        if self.problem_type == SINGLE:
            return np.array([self.label2id[label_key(e.label, e.source)] for e in examples], np.int32)
        if self.problem_type == REGRESSION:
            return np.array([regression_target(e.label, e.source) for e in examples], np.float32)
        hot = np.zeros((len(examples), len(self.labels)), np.float32)
        for i, e in enumerate(examples):
            for key in label_keys(e.label, e.source, self.separator):
                hot[i, self.label2id[key]] = 1.0
        return hot

    # ------------------------------------------------------------------ loss and prediction (traced)

    def loss(self, model, batch):
        logits = model(**model_inputs(batch))
        real = batch["attention_mask"][:, 0] > 0  # rows that fill a short batch are all padding
        if self.problem_type == SINGLE and self.label_smoothing:
            losses = smoothed_cross_entropy(logits, batch["label"], self.label_smoothing, self.class_weights)
        elif self.problem_type == SINGLE:
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            if self.class_weights is not None:
                losses = losses * self.class_weights[batch["label"]]
        elif self.problem_type == MULTI and self.label_smoothing:
            losses = smoothed_binary_cross_entropy(logits, batch["labels"], self.label_smoothing,
                                                   self.class_weights).mean(-1)
        elif self.problem_type == MULTI:
            terms = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
            if self.class_weights is not None:  # positive weights, as torch's BCEWithLogitsLoss(pos_weight)
                terms = terms * (1.0 + (self.class_weights - 1.0) * batch["labels"])
            losses = terms.mean(-1)
        else:
            losses = jnp.square(logits[:, 0] - batch["target"])
        return jnp.sum(jnp.where(real, losses, 0.0)), jnp.sum(real, dtype=jnp.int32)

    def predict(self, model, batch):
        return self._predict(model, batch)

    # ------------------------------------------------------------------ evaluation (host)

    def evaluate(self, split: str, predict_batches: Callable) -> dict:
        rows = self.rows[split]
        if not rows:
            return {self.main_metric: float("nan"), "examples": 0}
        outputs = np.stack(predict_batches(rows))
        return self.metrics(split, outputs)

    def metrics(self, split: str, outputs: np.ndarray) -> dict:
        targets = self.targets[split]
        if self.problem_type == SINGLE:
            return single_label_metrics(targets, outputs, self.labels)
        if self.problem_type == REGRESSION:
            return regression_metrics(targets, outputs)
        if split == "dev" and self.tune_threshold_on_dev:
            self.threshold = tune_threshold(targets, outputs)
        return multi_label_metrics(targets, outputs, self.labels, self.threshold)

    def results(self) -> dict:
        results = {"main_metric": self.main_metric, "problem_type": self.problem_type, "labels": self.labels,
                   "truncation": {name: dataclasses.asdict(count) for name, count in self.truncation.items()}}
        if self.problem_type == MULTI:
            results["threshold"] = self.threshold
        return results

    def export_info(self) -> dict:
        return {"problem_type": self.problem_type, "labels": self.labels, "threshold": self.threshold,
                "pairs": self.pairs, "text_column": self.text_column, "text_pair_column": self.text_pair_column}

    def report(self, workdir: Path, results: dict) -> None:
        for name in ("dev", "test"):
            if "confusion_matrix" in results[name]:
                plot_confusion_matrix(results[name]["confusion_matrix"], self.labels,
                                      workdir / ("confusion_matrix.png" if name == "test" else "confusion_matrix_dev.png"),
                                      title=f"{name} confusion matrix")
        plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png", self.main_metric)
        text = format_report(results["test"], "test")
        print(text)
        (workdir / "report_test.txt").write_text(text + "\n")
        log.info("test %s %.4f (dev %.4f) after %d steps, %.0f s of training at %.0f tokens/s; compiled %s",
                 self.main_metric, results["test"].get(self.main_metric, float("nan")),
                 results["dev"].get(self.main_metric, float("nan")), results["steps"], results["train_seconds"],
                 results["tokens_per_sec"], results["compilations"])


def truncation_summary(count: TruncationCount, split: str) -> str:
    return (f"{count.truncated} of {count.examples} {split} texts longer than max_length were truncated "
            f"({count.dropped_tokens} sub-tokens cut)")


def format_report(metrics: dict, split: str) -> str:
    """A plain-text per-class report (sklearn's layout) plus the averages, for logs and report files."""
    lines = [f"{split} results"]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(12, *(len(label) for label in per_class))
        lines.append(f"{'':>{width}}  precision  recall      f1  support")
        for label, row in per_class.items():
            lines.append(f"{label:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
                         f"{row['support']:7d}")
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "subset_accuracy", "threshold", "mse",
                "rmse", "mae", "pearson", "spearman"):
        if key in metrics:
            lines.append(f"{key}: {metrics[key]:.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run

def prepare(config) -> TextSplits:
    """Examples of the three splits (train augmented when augment.methods asks), checked against the labels
    of the training split before the model is loaded."""
    cls, data = config.classification, config.data
    if data.train_file == PACKAGED_TWEETS_NER and not data.hf_dataset:
        raise ConfigError("data.train_file is the packaged NER data; for sequence classification set it to "
                          f"a text file or {PACKAGED_ROTTEN_TOMATOES!r}")
    if data.packing:
        raise ConfigError("data.packing is for token-level tasks; sequence classification pads by length buckets "
                          "(set data.packing=False)")
    splits = read_splits(data, cls.problem_type)
    splits.train = augment_train(splits.train, config)  # train only; a no-op unless augment.methods
    labels = label_list(splits, cls.problem_type, cls.label_separator)
    for name, examples in (("dev", splits.dev), ("test", splits.test)):
        check_labels(examples, labels, cls.problem_type, cls.label_separator, name)
    log.info("data: %d train / %d dev / %d test examples%s, %s with %d label%s", len(splits.train),
             len(splits.dev), len(splits.test), " (sentence pairs)" if splits.train and
             splits.train[0].text_pair is not None else "", cls.problem_type, len(labels),
             "" if len(labels) == 1 else "s")
    return splits


def model_options(config, splits: TextSplits) -> dict:
    cls = config.classification
    return {"id2label": label_list(splits, cls.problem_type, cls.label_separator),
            "problem_type": cls.problem_type, "ignore_mismatched_sizes": True}


def build(config, tokenizer, model, splits: TextSplits) -> ClassificationTask:
    cls, data = config.classification, config.data
    task = ClassificationTask(tokenizer, splits, model.labels, max_length=data.max_length,
                              problem_type=cls.problem_type, class_weights=cls.class_weights,
                              threshold=cls.threshold, tune_threshold_on_dev=cls.tune_threshold,
                              label_separator=cls.label_separator, main_metric=cls.main_metric,
                              text_column=data.text_column, text_pair_column=data.text_pair_column or "")
    task.label_smoothing = config.train.label_smoothing
    log.info("tokenized: %s", "; ".join(truncation_summary(count, name) for name, count in task.truncation.items()
                                         if count.examples))
    return task


# ---------------------------------------------------------------------------------------------- predict

class SequenceClassifier(Predictor):
    """Texts (or pairs) -> labels with probabilities, from an exported folder (or an ensemble of them:
    probabilities, or regression values, averaged); compiled once per (batch size, length bucket)."""

    task = SEQUENCE_CLASSIFICATION
    default_max_length = DEFAULT_MAX_LENGTH
    per_token = False

    def configure(self, models):
        info = self.info
        self.labels = list(self.model.labels)
        self.problem_type = self.model.problem_type
        self.threshold = float(info.get("threshold", 0.5))
        self.pairs = bool(info.get("pairs", False))
        self.text_column = info.get("text_column") or "text"
        self.text_pair_column = info.get("text_pair_column") or "text_pair"
        self.item_kind = "pair" if self.pairs else "text"
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0}
        return predict_fn(self.problem_type), _mean_outputs, pad_values

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[dict]:
        rows, _ = encode_texts(self.tokenizer, texts, pairs, self.max_length)
        for row in rows:
            row.setdefault("token_type_ids", np.zeros_like(row["input_ids"]))
        outputs = self.run_rows(rows)
        results = []
        for i, output in enumerate(outputs):
            result: dict[str, Any] = {"text": texts[i]}
            if pairs is not None:
                result["text_pair"] = pairs[i]
            if self.problem_type == REGRESSION:
                result["value"] = float(output)
            else:
                probs = {label: float(p) for label, p in zip(self.labels, output)}
                if self.problem_type == SINGLE:
                    best = int(np.argmax(output))
                    result.update(label=self.labels[best], score=float(output[best]))
                else:
                    result.update(labels=[l for l, p in probs.items() if p >= self.threshold],
                                  threshold=self.threshold)
                result["probabilities"] = probs
            results.append(result)
        return results

    def predict_items(self, items: list) -> list[dict]:
        """Texts, or (text, pair) sequences for pair models."""
        if self.pairs:
            return self.predict([item[0] for item in items], [item[1] for item in items])
        return self.predict(list(items))


def _mean_outputs(outputs: list):
    return jnp.mean(jnp.stack(outputs), axis=0)


def read_prediction_inputs(input_path: str | None, text_column: str, text_pair_column: str, pairs: bool
                           ) -> tuple[list[str], list[str] | None]:
    """CSV/TSV/JSON/JSONL/parquet files: rows with the text (and pair) columns the model was trained with
    ("text", "text_pair" by default; other columns are ignored); anything else (or stdin): one text a line,
    "text<TAB>pair" for pair models."""
    if input_path not in (None, "-") and table_suffix(input_path) in TEXT_EXTENSIONS:
        examples = read_text_examples(input_path, text_column, text_pair_column if pairs else "", None)
        return [e.text for e in examples], [e.text_pair for e in examples] if pairs else None
    stream = sys.stdin if input_path in (None, "-") else open(input_path, encoding="utf-8")
    texts, second = [], []
    with stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if pairs:
                first, tab, rest = line.partition("\t")
                if not tab:
                    raise DataError(input_path or "<stdin>", "this model reads sentence pairs: write "
                                                             "'text<TAB>pair' on each line", number)
                texts.append(first)
                second.append(rest)
            else:
                texts.append(line)
    return texts, second if pairs else None


def read_inputs(classifier: SequenceClassifier, input_path: str | None, input_format: str = "text") -> list:
    """Texts, or (text, pair) for pair models: see read_prediction_inputs."""
    texts, pairs = read_prediction_inputs(input_path, classifier.text_column, classifier.text_pair_column,
                                          classifier.pairs)
    return list(zip(texts, pairs)) if pairs is not None else texts


SPEC = TaskSpec(
    name=SEQUENCE_CLASSIFICATION, summary="sequence classification: single-label, multi-label, regression; pairs",
    config_group="classification", default_max_length=DEFAULT_MAX_LENGTH, prepare=prepare,
    model_options=model_options, build=build, predictor=SequenceClassifier, read_inputs=read_inputs)
