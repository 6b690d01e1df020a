"""Extractive question answering (task "question-answering", SQuAD v1.1 / v2.0): windows, span labels, n-best
decoding, EM/F1, the predictor and the task's spec.

A question and its context are tokenized as one pair; a context longer than the window is cut into
windows of at most data.max_length tokens that overlap by qa.doc_stride tokens. Every context token keeps
its character offsets, so a predicted token span maps back to the exact characters of the context
(unicode included). Training labels each window with the answer's first/last token, or with [CLS]
(position 0) when the answer is not wholly inside the window or the question has no answer.
Decoding takes the n-best start and end logits of every window of a question, keeps spans that lie in the
context, end >= start and at most qa.max_answer_length tokens long, and scores a span by start + end logit;
for SQuAD v2 the answer is "" when the [CLS] ("null") score beats the best span by more than a threshold
that is tuned on dev.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from jaxft.config import PACKAGED_TWEETS_NER, QUESTION_ANSWERING, ConfigError
from jaxft.data.errors import DataError
from jaxft.data.readers import hf_data_files, split_fixed, train_dev_test
from jaxft.data.text_readers import QAExample, read_hf_squad, read_squad
from jaxft.evaluate.qa_metrics import best_null_threshold, best_scores, squad_metrics
from jaxft.evaluate.reports import plot_training_curves
from jaxft.files import write_json
from jaxft.models.encoder import model_inputs
from jaxft.tasks.base import TaskSpec, TrainingTask
from jaxft.tasks.predictor import Predictor

log = logging.getLogger("jaxft.qa")
DEFAULT_MAX_LENGTH = 384
NO_OFFSET = -1  # offsets of tokens outside the context (question, special tokens)
MASKED = -1e9   # logit given to padding positions in the loss


# ---------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class QASplits:
    train: list[QAExample]
    dev: list[QAExample]
    test: list[QAExample]


def split_by_context(examples: Sequence[QAExample], fractions=(0.7, 0.15, 0.15)) -> tuple[list[QAExample], ...]:
    """The fixed split in file order, by paragraph: questions on one context never straddle two splits."""
    groups: list[list[QAExample]] = []
    for example in examples:
        if groups and groups[-1][0].context == example.context:
            groups[-1].append(example)
        else:
            groups.append([example])
    return tuple([e for group in part for e in group] for part in split_fixed(groups, fractions))


def read_splits(data) -> QASplits:
    if data.hf_dataset:
        kwargs = {}
        if data.train_file and not data.train_file.startswith("packaged:"):
            kwargs["data_files"] = hf_data_files(data)
        parts = []
        for split in (data.train_split, data.validation_split, data.test_split):
            skip = not split or ("data_files" in kwargs and split != "train" and split not in kwargs["data_files"])
            parts.append([] if skip else read_hf_squad(data.hf_dataset, data.hf_config_name or None, split, **kwargs))
        train, dev, test = parts
    else:
        if not data.train_file or data.train_file.startswith("packaged:"):
            raise ConfigError("question answering needs SQuAD-format data: set data.train_file to a .json "
                              "(SQuAD v1.1/v2.0) or .jsonl file (no QA data ships in a package)")
        train = read_squad(data.train_file)
        dev = read_squad(data.validation_file) if data.validation_file else []
        test = read_squad(data.test_file) if data.test_file else []
    return QASplits(*train_dev_test(train, dev, test, split=split_by_context))


# ---------------------------------------------------------------------------------------------- windows

@dataclasses.dataclass(eq=False)
class QAFeature:
    """One window of one question: token ids, each token's character span in the context, and labels."""

    input_ids: np.ndarray             # int32 [L]
    token_type_ids: np.ndarray | None
    offsets: np.ndarray               # int32 [L, 2]; NO_OFFSET for tokens outside the context
    example_index: int
    start_position: int = 0           # answer's first/last token; 0 ([CLS]) when not inside this window
    end_position: int = 0

    @property
    def has_answer(self) -> bool:
        return self.start_position > 0


def truncate_questions(tokenizer, questions: Sequence[str], max_query_length: int) -> tuple[list[str], int]:
    """Questions (leading whitespace stripped) cut after `max_query_length` sub-tokens; and how many were cut."""
    questions = [q.lstrip() for q in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True, padding=False,
                        truncation=False, verbose=False)
    cut = 0
    for i, offsets in enumerate(encoded["offset_mapping"]):
        if len(offsets) > max_query_length:
            questions[i] = questions[i][:offsets[max_query_length - 1][1]]
            cut += 1
    return questions, cut


def encode_windows(tokenizer, examples: Sequence[QAExample], *, max_length: int, doc_stride: int,
                   max_query_length: int) -> tuple[list[QAFeature], dict]:
    """Every question/context pair as windows with context offsets and span labels (see the module doc)."""
    if not examples:
        return [], {"questions": 0, "windows": 0, "questions_cut": 0, "answers_outside_every_window": 0}
    room = max_length - max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= room:
        raise ConfigError(f"qa.doc_stride ({doc_stride}) must be smaller than the context room of a window: "
                          f"data.max_length ({max_length}) - qa.max_query_length ({max_query_length}) - special "
                          f"tokens = {room}")
    questions, cut = truncate_questions(tokenizer, [e.question for e in examples], max_query_length)
    encoded = tokenizer(questions, [e.context for e in examples], truncation="only_second", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_token_type_ids=True, return_attention_mask=False, padding=False, verbose=False)
    features = []
    answered = set()
    for i, ids in enumerate(encoded["input_ids"]):
        index = int(encoded["overflow_to_sample_mapping"][i])
        in_context = np.array([s == 1 for s in encoded.sequence_ids(i)], bool)
        offsets = np.array(encoded["offset_mapping"][i], np.int32).reshape(-1, 2)
        offsets[~in_context] = NO_OFFSET
        types = encoded.get("token_type_ids")
        feature = QAFeature(np.asarray(ids, np.int32), None if types is None else np.asarray(types[i], np.int32),
                            offsets, index)
        example = examples[index]
        if example.answers:
            text, start_char = example.answers[0]
            feature.start_position, feature.end_position = answer_token_span(offsets, start_char,
                                                                             start_char + len(text))
            if feature.has_answer:
                answered.add(index)
        features.append(feature)
    outside = sum(1 for i, e in enumerate(examples) if e.answers and i not in answered)
    stats = {"questions": len(examples), "windows": len(features), "questions_cut": cut,
             "answers_outside_every_window": outside}
    return features, stats


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context token of the characters [start_char, end_char), or (0, 0) when the window's
    context does not hold all of them."""
    context = np.nonzero(offsets[:, 0] != NO_OFFSET)[0]
    if not len(context) or end_char <= start_char:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first, 0] > start_char or offsets[last, 1] < end_char:
        return 0, 0
    starts, ends = offsets[context, 0], offsets[context, 1]
    start_token = context[np.nonzero(starts <= start_char)[0][-1]]
    end_token = context[np.nonzero(ends >= end_char)[0][0]]
    return int(start_token), int(end_token)


# ---------------------------------------------------------------------------------------------- decoding

@dataclasses.dataclass
class SpanPrediction:
    text: str                 # "" for "no answer"
    start: int                # character offsets in the context (-1 for "no answer")
    end: int
    score: float              # probability among the n-best candidates (softmax of start + end logits)
    logit: float              # start + end logit
    null_score_diff: float    # null logit - best span logit (SQuAD v2's "na_prob" input); -inf without windows
    best_span: str            # the best non-empty span, whatever the null decision
    n_best: list[dict]


def decode_example(example: QAExample, features: Sequence[QAFeature], outputs: Sequence[tuple[np.ndarray, np.ndarray]],
                   *, n_best_size: int = 20, max_answer_length: int = 30, version_2: bool = False,
                   null_threshold: float = 0.0) -> SpanPrediction:
    """n-best span decoding over all windows of one question (see the module doc)."""
    candidates: dict[tuple[int, int], float] = {}
    null_logit = np.inf
    for feature, (start_logits, end_logits) in zip(features, outputs):
        start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
        null_logit = min(null_logit, float(start_logits[0] + end_logits[0]))
        in_context = feature.offsets[:, 0] != NO_OFFSET
        top_starts = _top(np.where(in_context, start_logits, -np.inf), n_best_size)
        top_ends = _top(np.where(in_context, end_logits, -np.inf), n_best_size)
        s, e = np.meshgrid(top_starts, top_ends, indexing="ij")
        ok = (e >= s) & (e - s + 1 <= max_answer_length) & in_context[s] & in_context[e]
        scores = start_logits[s] + end_logits[e]
        for si, ei, score in zip(s[ok], e[ok], scores[ok]):
            span = (int(feature.offsets[si, 0]), int(feature.offsets[ei, 1]))
            if score > candidates.get(span, -np.inf):
                candidates[span] = float(score)
    ranked = sorted(candidates.items(), key=lambda item: -item[1])[:n_best_size]
    entries = [{"text": example.context[a:b], "start": a, "end": b, "logit": score} for (a, b), score in ranked]
    if version_2 or not entries:
        entries.append({"text": "", "start": -1, "end": -1, "logit": null_logit if np.isfinite(null_logit) else 0.0})
        entries.sort(key=lambda entry: -entry["logit"])
    logits = np.array([entry["logit"] for entry in entries])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for entry, p in zip(entries, probs):
        entry["score"] = float(p)
    best_span = next((entry for entry in entries if entry["text"]), None)
    if best_span is None:
        chosen, diff = next(entry for entry in entries if not entry["text"]), float("inf")
    else:
        diff = null_logit - best_span["logit"] if np.isfinite(null_logit) else float("-inf")
        chosen = best_span
        if version_2 and diff > null_threshold:
            chosen = next(entry for entry in entries if not entry["text"])
    return SpanPrediction(chosen["text"], chosen["start"], chosen["end"], chosen["score"], chosen["logit"], diff,
                          best_span["text"] if best_span else "", entries)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(values))
    index = np.argpartition(-values, k - 1)[:k]
    index = index[np.isfinite(values[index])]
    return index[np.argsort(-values[index], kind="stable")]


def group_features(features: Sequence[QAFeature], num_examples: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(num_examples)]
    for i, feature in enumerate(features):
        groups[feature.example_index].append(i)
    return groups


def feature_row(feature: QAFeature, labels: bool = True) -> dict[str, np.ndarray]:
    row = {"input_ids": feature.input_ids}
    if feature.token_type_ids is not None:
        row["token_type_ids"] = feature.token_type_ids
    if labels:
        row["start_positions"] = np.int32(feature.start_position)
        row["end_positions"] = np.int32(feature.end_position)
    return row


def span_logits(model, batch):
    return model(**model_inputs(batch))


# ---------------------------------------------------------------------------------------------- the task

class QATask(TrainingTask):
    """The extractive-QA side of the training loop (see train.loop.Task). Dev picks checkpoints by F1."""

    main_metric = "f1"

    def __init__(self, tokenizer, splits: QASplits, *, max_length: int, doc_stride: int = 128,
                 max_query_length: int = 64, max_answer_length: int = 30, n_best_size: int = 20,
                 null_threshold: float = 0.0, tune_null_threshold: bool = True):
        self.examples = {"train": splits.train, "dev": splits.dev, "test": splits.test}
        self.version_2 = any(e.is_impossible for part in self.examples.values() for e in part)
        self.window = dict(max_length=max_length, doc_stride=doc_stride, max_query_length=max_query_length)
        self.decoding = dict(n_best_size=n_best_size, max_answer_length=max_answer_length)
        self.null_threshold = float(null_threshold)
        self.tune_null_threshold = tune_null_threshold
        self.features, self.stats, self.rows, self.groups = {}, {}, {}, {}
        for name, examples in self.examples.items():
            self.features[name], self.stats[name] = encode_windows(tokenizer, examples, **self.window)
            self.rows[name] = [feature_row(f) for f in self.features[name]]
            self.groups[name] = group_features(self.features[name], len(examples))
        self.train_rows = self.rows["train"]
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0}
        if self.train_rows and "token_type_ids" in self.train_rows[0]:
            self.pad_values["token_type_ids"] = 0
        self.last_predictions: dict[str, dict[str, SpanPrediction]] = {}

    def loss(self, model, batch):
        start, end = span_logits(model, batch)
        valid = batch["attention_mask"] > 0
        start, end = jnp.where(valid, start, MASKED), jnp.where(valid, end, MASKED)
        losses = (optax.softmax_cross_entropy_with_integer_labels(start, batch["start_positions"]) +
                  optax.softmax_cross_entropy_with_integer_labels(end, batch["end_positions"])) / 2
        real = valid[:, 0]
        return jnp.sum(jnp.where(real, losses, 0.0)), jnp.sum(real, dtype=jnp.int32)

    def predict(self, model, batch):
        return span_logits(model, batch)

    def decode(self, split: str, outputs: Sequence, null_threshold: float | None = None) -> dict[str, SpanPrediction]:
        threshold = self.null_threshold if null_threshold is None else null_threshold
        features = self.features[split]
        return {example.id: decode_example(example, [features[i] for i in group], [outputs[i] for i in group],
                                           version_2=self.version_2, null_threshold=threshold, **self.decoding)
                for example, group in zip(self.examples[split], self.groups[split])}

    def evaluate(self, split: str, predict_batches: Callable) -> dict:
        examples = self.examples[split]
        if not examples:
            return {"f1": float("nan"), "exact_match": float("nan"), "questions": 0}
        outputs = predict_batches(self.rows[split])
        predictions = self.decode(split, outputs)
        references = {e.id: e.answer_texts for e in examples}
        if self.version_2 and split == "dev" and self.tune_null_threshold:
            self.null_threshold = self._tuned_threshold(predictions, references)
            predictions = self.decode(split, outputs)
        self.last_predictions[split] = predictions
        metrics = squad_metrics({qid: p.text for qid, p in predictions.items()}, references)
        if self.version_2:
            metrics["null_threshold"] = self.null_threshold
        return metrics

    @staticmethod
    def _tuned_threshold(predictions: dict[str, SpanPrediction], references: dict[str, list[str]]) -> float:
        span_f1 = {qid: best_scores(p.best_span, references[qid])[1] for qid, p in predictions.items()}
        null_f1 = {qid: best_scores("", references[qid])[1] for qid in predictions}
        diffs = {qid: p.null_score_diff for qid, p in predictions.items()}
        return best_null_threshold(span_f1, null_f1, diffs)[1]

    def export_info(self) -> dict:
        return {**self.window, **self.decoding, "version_2": self.version_2, "null_threshold": self.null_threshold}

    def results(self) -> dict:
        return {"version_2": self.version_2, "windows": self.stats}

    def report(self, workdir: Path, results: dict) -> None:
        for name in ("dev", "test"):
            if name in self.last_predictions:
                write_json(workdir / f"predictions_{name}.json",
                           {qid: p.text for qid, p in self.last_predictions[name].items()})
        plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png")
        dev, test = results["dev"], results["test"]
        log.info("test EM %.4f F1 %.4f (dev EM %.4f F1 %.4f) after %d steps, %.0f s of training",
                 test.get("exact_match", float("nan")), test.get("f1", float("nan")),
                 dev.get("exact_match", float("nan")), dev.get("f1", float("nan")), results["steps"],
                 results["train_seconds"])


# ---------------------------------------------------------------------------------------------- the run

def prepare(config) -> QASplits:
    data = config.data
    if data.train_file == PACKAGED_TWEETS_NER and not data.hf_dataset:
        raise ConfigError("question answering needs SQuAD-format data: set data.train_file to a SQuAD .json file")
    if data.packing:
        raise ConfigError("data.packing is not supported for question answering (windows are padded by length "
                          "buckets); set data.packing=False")
    return read_splits(data)


def model_options(config, splits: QASplits) -> dict:
    return {"ignore_mismatched_sizes": True}


def build(config, tokenizer, model, splits: QASplits) -> QATask:
    data, qa = config.data, config.qa
    task = QATask(tokenizer, splits, max_length=data.max_length, doc_stride=qa.doc_stride,
                  max_query_length=qa.max_query_length, max_answer_length=qa.max_answer_length,
                  n_best_size=qa.n_best_size, null_threshold=qa.null_score_diff_threshold,
                  tune_null_threshold=qa.tune_null_threshold)
    log.info("data: %d train / %d dev / %d test questions (SQuAD %s); windows: %s", len(splits.train),
             len(splits.dev), len(splits.test), "v2, with unanswerable questions" if task.version_2 else "v1",
             ", ".join(f"{name} {s['windows']}" for name, s in task.stats.items()))
    for name, stats in task.stats.items():
        if stats["questions_cut"] or stats["answers_outside_every_window"]:
            log.info("%s: %d questions cut to qa.max_query_length; %d answers in no window (trained as no answer)",
                     name, stats["questions_cut"], stats["answers_outside_every_window"])
    return task


# ---------------------------------------------------------------------------------------------- predict

class QuestionAnswerer(Predictor):
    """Questions + contexts -> answer spans with scores, from an exported folder (or an ensemble sharing one
    tokenizer: start and end logits averaged); compiled once per (batch size, length bucket)."""

    task = QUESTION_ANSWERING
    default_max_length = DEFAULT_MAX_LENGTH
    item_kind = "question"

    def configure(self, models):
        info, max_length = self.info, self.max_length
        self.window = dict(max_length=max_length, doc_stride=int(info.get("doc_stride", min(128, max_length // 4))),
                           max_query_length=int(info.get("max_query_length", 64)))
        self.decoding = dict(n_best_size=int(info.get("n_best_size", 20)),
                             max_answer_length=int(info.get("max_answer_length", 30)))
        self.version_2 = bool(info.get("version_2", False))
        self.null_threshold = float(info.get("null_threshold", 0.0))
        return span_logits, _mean_spans, {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0}

    def predict(self, examples: Sequence[QAExample], top_k: int = 5) -> list[dict]:
        features, _ = encode_windows(self.tokenizer, examples, **self.window)
        rows = [feature_row(f, labels=False) for f in features]
        for row in rows:
            row.setdefault("token_type_ids", np.zeros_like(row["input_ids"]))
        outputs = self.run_rows(rows)
        results = []
        for example, group in zip(examples, group_features(features, len(examples))):
            p = decode_example(example, [features[i] for i in group], [outputs[i] for i in group],
                               version_2=self.version_2, null_threshold=self.null_threshold, **self.decoding)
            results.append({"id": example.id, "question": example.question, "answer": p.text, "start": p.start,
                            "end": p.end, "score": p.score,
                            "n_best": [{k: e[k] for k in ("text", "start", "end", "score")} for e in p.n_best[:top_k]]})
        return results

    def predict_items(self, items: list) -> list[dict]:
        """{"question", "context"[, "id"]} objects."""
        return self.predict([QAExample(str(item.get("id", i)), item["question"], item["context"], [], True,
                                       f"request:{i}") for i, item in enumerate(items)])


def _mean_spans(outputs: list):
    return tuple(jnp.mean(jnp.stack([output[k] for output in outputs]), axis=0) for k in (0, 1))


def read_inputs(answerer: QuestionAnswerer, input_path: str | None, input_format: str = "text") -> list[dict]:
    """Questions from a SQuAD .json or .jsonl file, or JSON lines of {"question", "context"[, "id"]} on stdin."""
    if input_path in (None, "-"):
        rows = [json.loads(line) for line in sys.stdin if line.strip()]
        examples = [_stdin_example(i, row) for i, row in enumerate(rows)]
    else:
        examples = read_squad(input_path)
    return [{"id": e.id, "question": e.question, "context": e.context} for e in examples]


def _stdin_example(index: int, row) -> QAExample:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
        raise DataError("<stdin>", 'each line must be a JSON object {"question": ..., "context": ...}', index + 1)
    return QAExample(str(row.get("id", index)), row["question"], row["context"], [], True, f"<stdin>:{index + 1}")


SPEC = TaskSpec(
    name=QUESTION_ANSWERING, summary="extractive question answering (SQuAD v1.1 / v2.0, EM and F1)",
    config_group="qa", default_max_length=DEFAULT_MAX_LENGTH, prepare=prepare, model_options=model_options,
    build=build, predictor=QuestionAnswerer, read_inputs=read_inputs)
