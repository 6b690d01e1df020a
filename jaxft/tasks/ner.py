"""Named-entity recognition (task "token-classification"): data splits, label set, encoding, loss,
evaluation, the predictor, and the task's spec.

Training rows carry a label on each word's first sub-token; sentences longer than data.max_length become
overlapping windows in which each word is trained once (data.ner_encoding), so nothing is truncated.
Dev/test/prediction use windows that never drop a word, and word-level tags are scored with seqeval.

Options (config group `ner`):
- crf: a linear-chain CRF (models.crf) over the word-level tag logits (each word's first sub-token): the
  negative log-likelihood by the forward algorithm in the train step, IOB2-constrained Viterbi decoding in
  the predict step; each row's chain holds its words (a window of a longer sentence: its words, with no
  start/end potentials at the cuts, so every window is decoded exactly and each word is read from the
  window where it has the most context; where two windows' paths meet, an I- tag that does not continue an
  entity is written as B-). The CRF lives in the model as `crf` while training; the export is a plain
  token-classification folder plus crf.safetensors (the learned potentials), which predict, serve and
  explain read back. A word's score is the CRF marginal probability of its tag.
- context_tokens (FLERT): sentences are fed with up to that many sub-tokens of the neighbouring sentences
  of their document on both sides (CoNLL -DOCSTART- documents, or ner.document_column); loss and
  predictions only on the sentence's own words; the same at dev/test time and for `predict --format conll`.
- class_weights / train.label_smoothing: the token loss (softmax models), as in classification.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxft.config import PACKAGED_TWEETS_NER, TOKEN_CLASSIFICATION, ConfigError
from jaxft.data.augment import augment_train
from jaxft.data.batching import IGNORE_INDEX
from jaxft.data.ner_encoding import (AGGREGATIONS, CHAIN_WORD, OPEN_AFTER, OPEN_BEFORE, Encoded, TruncationReport,
                                     chain_flags, encode_for_prediction, encode_for_training,
                                     encode_texts_for_prediction, gather_word_predictions)
from jaxft.data.ner_readers import Sentence, read_conll, read_hf_dataset, read_sentences, sentences_to_bio
from jaxft.data.readers import hf_data_files, packaged_tweets_ner_path, train_dev_test
from jaxft.data.tags import bio_label_list, entity_types
from jaxft.files import as_path, write_folder
from jaxft.evaluate.ner_metrics import decode_entities, ner_metrics, word_char_offsets
from jaxft.evaluate.reports import plot_training_curves, print_results_table
from jaxft.models import ModelLoadError
from jaxft.models.crf import (ARRAY_KEYS, CRF, marginals, negative_log_likelihood, select_steps, transition_arrays,
                              viterbi_decode)
from jaxft.models.encoder import model_inputs
from jaxft.models.paths import dotted
from jaxft.tasks.base import TaskSpec, TrainingTask
from jaxft.tasks.losses import smoothed_cross_entropy
from jaxft.tasks.predictor import Predictor, as_folder_list, read_task_file
from jaxft.train.state import split_model
from jaxft.train.step import token_cross_entropy

log = logging.getLogger("jaxft.ner")
DEFAULT_MAX_LENGTH = 128
CRF_FILE = "crf.safetensors"  # next to a CRF export's HF files: the learned potentials, labels in the metadata
CRF_MODULE = "crf"            # the CRF's attribute on the token-classification model while it trains


@dataclasses.dataclass
class NerSplits:
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    scheme: str          # tag scheme read from the data (converted to IOB2)
    repaired: int        # I- tags that started an entity, read as B-


def read_splits(data, tag_scheme: str = "auto", document_column: str = "") -> NerSplits:
    """Train/dev/test sentences from files or a hub dataset; a lone train file is split 70/15/15."""
    train, dev, test = _read_raw_splits(data, document_column)
    converted = sentences_to_bio(train, tag_scheme)
    scheme = converted.scheme
    dev_bio = sentences_to_bio(dev, scheme) if dev else None
    test_bio = sentences_to_bio(test, scheme) if test else None
    repaired = converted.repaired + sum(x.repaired for x in (dev_bio, test_bio) if x)
    return NerSplits(converted.sentences, dev_bio.sentences if dev_bio else [],
                     test_bio.sentences if test_bio else [], scheme, repaired)


def _read_raw_splits(data, document_column: str) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
    if data.hf_dataset:
        return tuple(_read_hf_split(data, split, document_column)
                     for split in (data.train_split, data.validation_split, data.test_split))
    train_path = packaged_tweets_ner_path() if data.train_file == PACKAGED_TWEETS_NER else data.train_file
    train = _read_file(train_path, data, document_column)
    dev = _read_file(data.validation_file, data, document_column) if data.validation_file else []
    test = _read_file(data.test_file, data, document_column) if data.test_file else []
    return train_dev_test(train, dev, test)


def _read_file(path, data, document_column: str = "") -> list[Sentence]:
    return read_sentences(path, token_column=data.conll_token_column, tag_column=data.conll_tag_column,
                          tokens_column=data.tokens_column, tags_column=data.tags_column,
                          document_column=document_column or None)


def _read_hf_split(data, split: str, document_column: str = "") -> list[Sentence]:
    if not split:
        return []
    kwargs = {}
    if data.train_file and data.train_file != PACKAGED_TWEETS_NER:  # a builder such as "json" with files
        kwargs["data_files"] = hf_data_files(data)
    return read_hf_dataset(data.hf_dataset, data.hf_config_name or None, split, data.tokens_column,
                           data.tags_column, document_column=document_column or None, **kwargs)


def label_list(splits: NerSplits) -> list[str]:
    """O, then B-/I- per entity type seen in any split (sorted), so no dev/test tag is unknown."""
    tags = (tag for sentences in (splits.train, splits.dev, splits.test) for s in sentences for tag in s.tags)
    return bio_label_list(entity_types(tags))


# ---------------------------------------------------------------------------------------------- losses

def token_loss(logits, labels, label_smoothing: float = 0.0, class_weights=None):
    """(sum, count) of the token cross-entropy over labels >= 0, with label smoothing and class weights as
    tasks.losses.smoothed_cross_entropy (ignored positions take no part, as in HF Trainer's LabelSmoother)."""
    if not label_smoothing and class_weights is None:
        return token_cross_entropy(logits, labels)
    valid = labels >= 0
    losses = smoothed_cross_entropy(logits, jnp.where(valid, labels, 0), label_smoothing, class_weights)
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid, dtype=jnp.int32)


def ner_class_weights(spec: str, labels: Sequence[str], label_ids: np.ndarray) -> np.ndarray | None:
    """ner.class_weights: none | balanced (n / (labels x count) over the trained words' tags) |
    "label:weight,..." (others 1)."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec == "balanced":
        counts = np.bincount(label_ids, minlength=len(labels)).astype(np.float64)
        return (len(label_ids) / (len(labels) * np.maximum(counts, 1))).astype(np.float32)
    weights = np.ones(len(labels), np.float32)
    index = {label: i for i, label in enumerate(labels)}
    for part in spec.split(","):
        name, sep, value = part.rpartition(":")
        if not sep or name.strip() not in index:
            raise ConfigError(f"ner.class_weights: {part!r} is not 'label:weight' with a label among "
                              f"{', '.join(map(repr, labels))} (or use 'none' / 'balanced')")
        try:
            weights[index[name.strip()]] = float(value)
        except ValueError:
            raise ConfigError(f"ner.class_weights: weight {value!r} of {name!r} is not a number") from None
    return weights


# ---------------------------------------------------------------------------------------------- CRF steps

def _chain(logits, flags):
    """The rows' CRF chains (ner_encoding.chain_flags): (word emissions [B, T, L] read at each chain word's
    first sub-token, in order, then padding; their prefix mask [B, T]; the token position of each [B, T])."""
    order, mask = select_steps((flags & CHAIN_WORD) > 0)
    emissions = jnp.take_along_axis(logits, order[..., None], axis=1)
    return emissions, mask, order


def chain_potentials(crf: CRF, flags):
    """(transitions, start [B, L], end [B, L]): the IOB2-constrained potentials, with zero start (end) scores
    for a row whose chain continues before (after) it."""
    transitions, start, end = crf.potentials()
    open_before = jnp.any((flags & OPEN_BEFORE) > 0, axis=1)[:, None]
    open_after = jnp.any((flags & OPEN_AFTER) > 0, axis=1)[:, None]
    return transitions, jnp.where(open_before, 0.0, start[None]), jnp.where(open_after, 0.0, end[None])


def crf_loss(crf: CRF, logits, labels, flags):
    """(summed NLL of the rows' gold chains, number of chain words)."""
    emissions, mask, order = _chain(logits, flags)
    tags = jnp.take_along_axis(labels, order, axis=1)
    nll = negative_log_likelihood(emissions, tags, mask, *chain_potentials(crf, flags))
    return jnp.sum(nll), jnp.sum(mask, dtype=jnp.int32)


def crf_decode(logits, flags, transitions, start, end):
    """Viterbi tags and their marginal probabilities at each chain word's first sub-token: float32 [B, T, 2]
    (tag id, probability); (-1, 0) elsewhere."""
    emissions, mask, order = _chain(logits, flags)
    tags, _ = viterbi_decode(emissions, mask, transitions, start, end)
    probabilities = marginals(emissions, mask, transitions, start, end)
    tag_probability = jnp.take_along_axis(probabilities, tags[..., None], axis=-1)[..., 0]
    values = jnp.stack([jnp.where(mask, tags, -1).astype(jnp.float32), jnp.where(mask, tag_probability, 0.0)], -1)
    rows = jnp.arange(logits.shape[0])[:, None]
    return jnp.zeros(logits.shape[:2] + (2,), jnp.float32).at[rows, order].set(values)


def crf_tags(model, batch):
    """model (with its `crf`), batch -> crf_decode's [B, T, 2]."""
    flags = batch["word_flags"]
    return crf_decode(model(**model_inputs(batch)), flags, *chain_potentials(getattr(model, CRF_MODULE), flags))


def crf_parts(model, batch):
    """An ensemble member's share: its logits and its row boundaries (averaged by average_crf_parts)."""
    flags = batch["word_flags"]
    return model(**model_inputs(batch)), chain_potentials(getattr(model, CRF_MODULE), flags), flags


def average_crf_parts(outputs: list):
    """Ensemble of CRF models: the mean of the members' path scores is a CRF whose emissions and potentials
    are the members' means (a log-linear pool of their distributions); decoded as one."""
    logits = jnp.mean(jnp.stack([logits for logits, _, _ in outputs]), axis=0)
    potentials = [jnp.mean(jnp.stack([parts[i] for _, parts, _ in outputs]), axis=0) for i in range(3)]
    return crf_decode(logits, outputs[0][2], *potentials)


def repair_iob2(tags: list[str]) -> list[str]:
    """An I- tag that does not continue an entity of its type becomes B- (where windows' paths meet)."""
    repaired, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


# ---------------------------------------------------------------------------------------------- the task

class NerTask(TrainingTask):
    """The NER side of the training loop (see train.loop.Task)."""

    main_metric = "f1"

    def __init__(self, tokenizer, splits: NerSplits, labels: Sequence[str], max_length: int,
                 label_all_subtokens: bool = False, *, crf: bool = False, crf_lr_ratio: float = 1.0,
                 context_tokens: int = 0, label_smoothing: float = 0.0, class_weights: str = "none"):
        self.scheme = splits.scheme
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.crf, self.crf_lr_ratio, self.context_tokens = crf, crf_lr_ratio, context_tokens
        self.crf_arrays: dict[str, np.ndarray] | None = None  # the trained potentials, set by before_export
        self.splits = {"train": splits.train, "dev": splits.dev, "test": splits.test}
        encoded, self.truncation = encode_for_training(tokenizer, splits.train, self.label2id, max_length,
                                                       label_all_subtokens, context_tokens=context_tokens)
        self.train_rows = [self._row(e, trained_only=True) for e in encoded]
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "labels": IGNORE_INDEX}
        if crf:
            self.pad_values["word_flags"] = 0
        self.label_smoothing = float(label_smoothing)
        trained = np.concatenate([e.labels[e.labels >= 0] for e in encoded]) if encoded else np.zeros(0, int)
        weights = ner_class_weights(class_weights, self.labels, trained)
        self.class_weights = None if weights is None else jnp.asarray(weights)
        if weights is not None:
            log.info("class weights: %s", ", ".join(f"{l}={w:.3g}" for l, w in zip(self.labels, weights)))
        self._windows = {name: encode_for_prediction(tokenizer, [s.tokens for s in sentences], max_length,
                                                     documents=[s.document for s in sentences],
                                                     context_tokens=context_tokens)
                         for name, sentences in self.splits.items() if name != "train"}

    def _row(self, encoded: Encoded, trained_only: bool) -> dict:
        row = {"input_ids": encoded.input_ids, "labels": encoded.labels}
        if self.crf:
            row["word_flags"] = chain_flags(encoded, trained_only)
        return row

    def loss(self, model, batch):
        logits = model(**model_inputs(batch))
        if self.crf:
            return crf_loss(getattr(model, CRF_MODULE), logits, batch["labels"], batch["word_flags"])
        return token_loss(logits, batch["labels"], self.label_smoothing, self.class_weights)

    def predict(self, model, batch):
        if self.crf:
            return crf_tags(model, batch)
        return jax.nn.log_softmax(model(**model_inputs(batch)), axis=-1)

    def word_log_probs(self, windows: list[Encoded], sentences_tokens, predict_batches: Callable) -> list[np.ndarray]:
        """Per-word outputs of predict (log-probabilities; CRF: [tag id, probability]) of every sentence."""
        rows = [self._row(w, trained_only=False) for w in windows]
        token_scores = predict_batches(rows)
        return gather_word_predictions(windows, token_scores, [len(tokens) for tokens in sentences_tokens])

    def evaluate(self, split: str, predict_batches: Callable) -> dict:
        sentences = self.splits[split]
        if not sentences:
            return {"f1": float("nan"), "sentences": 0}
        word_scores = self.word_log_probs(self._windows[split], [s.tokens for s in sentences], predict_batches)
        if self.crf:
            predicted = [repair_iob2([self.labels[int(i)] for i in scores[:, 0]]) for scores in word_scores]
        else:
            predicted = [[self.labels[i] for i in scores.argmax(-1)] for scores in word_scores]
        metrics = ner_metrics([s.tags for s in sentences], predicted)
        metrics["sentences"] = len(sentences)
        return metrics

    def before_export(self, model, result):
        """CRF: its trained potentials are kept for crf.safetensors and the CRF leaves the model, so that the
        export is a plain token-classification folder."""
        if not self.crf:
            return result
        values = {**result.frozen, **result.params}
        self.crf_arrays = transition_arrays(_stored_crf(self.labels, values, self.crf_lr_ratio))
        delattr(model, CRF_MODULE)
        trainable = {key for key in result.params if not key.startswith(f"{CRF_MODULE}.")}
        parts = split_model(model, lambda path, _: dotted(path) in trainable)[0]
        keep = lambda flat: {k: v for k, v in flat.items() if not k.startswith(f"{CRF_MODULE}.")}  # noqa: E731
        return dataclasses.replace(result, parts=parts, params=keep(result.params), frozen=keep(result.frozen))

    def export_info(self) -> dict:
        return {"crf": self.crf, "context_tokens": self.context_tokens}

    def write_export_files(self, folder) -> None:
        path = as_path(folder) / CRF_FILE
        if self.crf_arrays is not None:
            write_crf_file(path, self.labels, self.crf_arrays)
        elif path.exists():  # left by an earlier CRF run in this workdir; jaxft_task.json now says crf: false
            path.unlink()

    def results(self) -> dict:
        return {"truncation": dataclasses.asdict(self.truncation), "tag_scheme": self.scheme}

    def report(self, workdir: Path, results: dict) -> None:
        plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png")
        print_results_table({"dev": results["dev"], "test": results["test"]})
        log.info("test F1 %.4f (dev %.4f) after %d steps, %.0f s of training at %.0f tokens/s; compiled %s",
                 results["test"].get("f1", float("nan")), results["dev"].get("f1", float("nan")), results["steps"],
                 results["train_seconds"], results["tokens_per_sec"], results["compilations"])


def _stored_crf(labels: Sequence[str], values: dict, lr_ratio: float) -> CRF:
    """The CRF whose stored params are the trained values (`values` of the flat "crf.*" keys)."""
    crf = CRF(labels, lr_ratio=lr_ratio)
    for key in ARRAY_KEYS:
        getattr(crf, key)[...] = jnp.asarray(values[f"{CRF_MODULE}.{key}"], jnp.float32)
    return crf


def truncation_summary(report: TruncationReport) -> str:
    text = (f"{report.sentences} training sentences, {report.windowed_sentences} longer than max_length split "
            f"into {report.windows} overlapping windows (each word trained once), {report.truncated_sentences} "
            f"with a word longer than a window (cut), {report.empty_words} words with no sub-token")
    if report.context_sentences:
        text += f"; {report.context_sentences} fed with document context"
    return text


def write_crf_file(path, labels: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
    """The potentials as safetensors (float32), the labels in the metadata; written atomically (locally or to
    a remote export folder: files.write_folder)."""
    def write(tmp: Path) -> None:
        save_file({key: np.ascontiguousarray(arrays[key], np.float32) for key in ARRAY_KEYS}, str(tmp / CRF_FILE),
                  metadata={"format": "jaxft-crf", "labels": "\n".join(labels)})

    write_folder(as_path(path).parent, write)


def read_crf_file(folder: str | Path, labels: Sequence[str]) -> CRF:
    """The CRF of an export folder (crf.safetensors), checked against the model's labels."""
    path = Path(folder) / CRF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder}: jaxft_task.json says the model was trained with a CRF, but {CRF_FILE} "
                             "is missing (copy it along with the model files)")
    with safe_open(str(path), framework="numpy") as stored:
        saved_labels = (stored.metadata() or {}).get("labels", "").split("\n")
        arrays = {key: stored.get_tensor(key) for key in stored.keys()}
    if saved_labels != list(labels):
        raise ModelLoadError(f"{path}: written for the labels {saved_labels}, but the model has {list(labels)}")
    try:
        return CRF.from_arrays(labels, arrays)
    except ValueError as err:
        raise ModelLoadError(f"{path}: {err}") from None


def has_crf(folder: str | Path) -> bool:
    return bool(read_task_file(folder).get("crf"))


def decode_sentence(crf: CRF, word_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One whole sentence's word logits [W, L] -> (Viterbi tag ids [W], their marginal probabilities [W])."""
    if not len(word_logits):
        return np.zeros(0, np.int64), np.zeros(0)
    emissions = jnp.asarray(word_logits, jnp.float32)[None]
    mask = jnp.ones(emissions.shape[:2], bool)
    potentials = crf.potentials()
    tags, _ = viterbi_decode(emissions, mask, *potentials)
    probabilities = marginals(emissions, mask, *potentials)[0]
    tags = np.asarray(tags[0])
    return tags.astype(np.int64), np.asarray(probabilities)[np.arange(len(tags)), tags].astype(np.float64)


# ---------------------------------------------------------------------------------------------- the run

def prepare(config) -> NerSplits:
    """Sentences of the three splits (train augmented when augment.methods asks) and the label set."""
    splits = read_splits(config.data, config.ner.tag_scheme, config.ner.document_column)
    splits.train = augment_train(splits.train, config)  # train only; a no-op unless augment.methods
    log.info("data: %d train / %d dev / %d test sentences, scheme %s, %d labels%s", len(splits.train),
             len(splits.dev), len(splits.test), splits.scheme, len(label_list(splits)),
             f", {splits.repaired} I- tags starting an entity read as B-" if splits.repaired else "")
    if config.ner.context_tokens and not any(s.document is not None for s in splits.train):
        log.warning("ner.context_tokens=%d, but the training data has no document structure (no -DOCSTART- "
                    "lines, no ner.document_column): sentences are fed without context", config.ner.context_tokens)
    return splits


def model_options(config, splits: NerSplits) -> dict:
    return {"id2label": label_list(splits), "ignore_mismatched_sizes": True}


def build(config, tokenizer, model, splits: NerSplits) -> NerTask:
    ner = config.ner
    task = NerTask(tokenizer, splits, model.labels, config.data.max_length, ner.label_all_subtokens,
                   crf=ner.crf, crf_lr_ratio=ner.crf_lr_ratio, context_tokens=ner.context_tokens,
                   label_smoothing=config.train.label_smoothing, class_weights=ner.class_weights)
    if ner.crf:  # before PEFT is applied: the CRF counts as part of the task head
        setattr(model, CRF_MODULE, CRF(model.labels, lr_ratio=ner.crf_lr_ratio))
        log.info("CRF over %d tags (IOB2-constrained), learning %gx faster than the encoder", len(model.labels),
                 ner.crf_lr_ratio)
    log.info("tokenized: %s", truncation_summary(task.truncation))
    return task


# ---------------------------------------------------------------------------------------------- predict

@dataclasses.dataclass
class TokenPrediction:
    words: list[str]
    tags: list[str]
    scores: list[float]  # probability of each word's predicted tag (CRF: its marginal probability)


@dataclasses.dataclass
class WordsItem:
    """A sentence given as words (CoNLL input), with the words of its document around it for context."""

    words: list[str]
    left: list[str] = dataclasses.field(default_factory=list)
    right: list[str] = dataclasses.field(default_factory=list)


def token_log_probs(model, batch):
    return jax.nn.log_softmax(model(batch["input_ids"], batch["attention_mask"]), axis=-1)


def average_log_probs(outputs: list):
    """log of the mean of the members' probabilities."""
    return jax.nn.logsumexp(jnp.stack(outputs), axis=0) - jnp.log(len(outputs))


class TokenClassifier(Predictor):
    """A jit-compiled NER predictor over fixed shapes (batch sizes x length buckets), one model or an
    ensemble (word probabilities averaged over the members; CRF members: one CRF of the averaged emissions
    and potentials). Raw text is split into words as the Hugging Face pipeline does (the tokenizer's
    pre-tokenizer, punctuation on its own); a word's scores come from its first sub-token, or with
    aggregation "average" / "max" from all of them, as the pipeline's aggregation_strategy."""

    task = TOKEN_CLASSIFICATION
    default_max_length = DEFAULT_MAX_LENGTH

    def __init__(self, model_dir, **options):
        self.folders = as_folder_list(model_dir)
        super().__init__(model_dir, **options)

    def configure(self, models):
        self.labels = list(self.model.labels)
        self.context_tokens = int(self.info.get("context_tokens") or 0)
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "labels": IGNORE_INDEX}
        with_crf = [has_crf(folder) for folder in self.folders]
        if any(with_crf) and not all(with_crf):
            raise ModelLoadError(f"ensemble: {self.folders[with_crf.index(True)]} was trained with a CRF, but "
                                 f"{self.folders[with_crf.index(False)]} without; members must decode alike")
        self.crf = all(with_crf)
        if not self.crf:
            return token_log_probs, average_log_probs, pad_values
        for folder, model in zip(self.folders, models):
            setattr(model, CRF_MODULE, read_crf_file(folder, self.labels))
        return (crf_tags if len(models) == 1 else crf_parts), average_crf_parts, {**pad_values, "word_flags": 0}

    def _rows(self, windows: list[Encoded]) -> list[dict]:
        rows = [{"input_ids": w.input_ids, "labels": w.labels} for w in windows]
        if self.crf:
            for row, window in zip(rows, windows):
                row["word_flags"] = chain_flags(window, trained_only=False)
        return rows

    def _check_aggregation(self, aggregation: str) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {aggregation!r}")
        if self.crf and aggregation != "first":
            raise ValueError(f"aggregation {aggregation!r} combines sub-token probabilities; this model decodes "
                             "whole sentences with a CRF from each word's first sub-token: use 'first'")

    def _predictions(self, windows: list[Encoded], sentences: list[list[str]], aggregation: str
                     ) -> list[TokenPrediction]:
        token_scores = self.run_rows(self._rows(windows))
        word_scores = gather_word_predictions(windows, token_scores, [len(s) for s in sentences], aggregation)
        predictions = []
        for words, scores in zip(sentences, word_scores):
            if self.crf:
                tags = repair_iob2([self.labels[int(i)] for i in scores[:, 0]])
                probs = scores[:, 1]
            else:
                best = scores.argmax(-1) if len(words) else np.zeros(0, int)
                tags = [self.labels[i] for i in best]
                probs = np.exp(scores[np.arange(len(words)), best]) if len(words) else np.zeros(0)
            predictions.append(TokenPrediction(list(words), tags, [float(p) for p in probs]))
        return predictions

    def predict_words(self, sentences: list[list[str]], *, documents: Sequence | None = None,
                      contexts: Sequence[tuple[list[str], list[str]]] | None = None,
                      aggregation: str = "first") -> list[TokenPrediction]:
        """Sentences given as words. A model trained with document context gets it from `documents` (a
        document id per sentence, None for none: the neighbours in the list with the same id) or `contexts`
        (the words left and right of each sentence)."""
        self._check_aggregation(aggregation)
        windows = encode_for_prediction(self.tokenizer, sentences, self.max_length, documents=documents,
                                        context_tokens=self.context_tokens, contexts=contexts)
        return self._predictions(windows, sentences, aggregation)

    def predict_texts(self, texts: list[str], aggregation: str = "first") -> list[dict]:
        """Raw texts -> {"text", "entities": [{type, text, start, end, score}]}: words and character offsets
        from the tokenizer's pre-tokenizer (as the Hugging Face pipeline), entity text the slice of the input."""
        self._check_aggregation(aggregation)
        windows, spans = encode_texts_for_prediction(self.tokenizer, texts, self.max_length)
        words = [[text[a:b] for a, b in text_spans] for text, text_spans in zip(texts, spans)]
        results = []
        for text, text_spans, prediction in zip(texts, spans, self._predictions(windows, words, aggregation)):
            entities = decode_entities(prediction.words, prediction.tags, prediction.scores, text_spans, text=text)
            results.append({"text": text, "entities": [_public_entity(e) for e in entities]})
        return results

    def predict_word_items(self, items: list[WordsItem]) -> list[dict]:
        """Sentences given as words (the text is the words joined by single spaces), each with its own context."""
        predictions = self.predict_words([item.words for item in items],
                                         contexts=[(item.left, item.right) for item in items])
        results = []
        for item, prediction in zip(items, predictions):
            text = " ".join(item.words)
            offsets = word_char_offsets(text, prediction.words)
            entities = decode_entities(prediction.words, prediction.tags, prediction.scores, offsets, text=text)
            results.append({"text": text, "entities": [_public_entity(e) for e in entities]})
        return results

    def predict_items(self, items: list) -> list[dict]:
        """Texts (strings) and WordsItem sentences, in any mix; one result each, in order."""
        results: list = [None] * len(items)
        for wanted, predict in ((str, self.predict_texts), (WordsItem, self.predict_word_items)):
            indices = [i for i, item in enumerate(items) if isinstance(item, wanted)]
            if indices:
                for i, result in zip(indices, predict([items[i] for i in indices])):
                    results[i] = result
        return results


def _public_entity(entity: dict) -> dict:
    return {key: entity[key] for key in ("type", "text", "start", "end", "score") if key in entity}


def read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def conll_items(path: str, context_tokens: int) -> Iterator[WordsItem]:
    """The sentences of a CoNLL file (first column), each with up to `context_tokens` words of the sentences
    of its document on either side (-DOCSTART- documents; no context without them). Words are at least one
    sub-token each, so that many words hold all the context sub-tokens the model can take."""
    sentences = read_conll(path, tag_column=None)
    for index, sentence in enumerate(sentences):
        left: list[str] = []
        right: list[str] = []
        if context_tokens and sentence.document is not None:
            other = index - 1
            while other >= 0 and sentences[other].document == sentence.document and len(left) < context_tokens:
                left = sentences[other].tokens + left
                other -= 1
            other = index + 1
            while (other < len(sentences) and sentences[other].document == sentence.document
                   and len(right) < context_tokens):
                right = right + sentences[other].tokens
                other += 1
        yield WordsItem(list(sentence.tokens), left[-context_tokens:] if left else [], right[:context_tokens])


def read_inputs(predictor: TokenClassifier, input_path: str | None, input_format: str = "text") -> Iterator:
    """One text a line (stdin when no path; read as it streams), or the sentences of a CoNLL file (first
    column; its words are the words, joined by single spaces for the offsets; documents give context to
    models trained with it)."""
    if input_format == "conll":
        if input_path in (None, "-"):
            raise ValueError("--format conll needs --input FILE")
        yield from conll_items(input_path, getattr(predictor, "context_tokens", 0))
    elif input_path in (None, "-"):
        yield from read_lines(sys.stdin)
    else:
        with open(input_path, encoding="utf-8") as stream:
            yield from read_lines(stream)


SPEC = TaskSpec(
    name=TOKEN_CLASSIFICATION, summary="named-entity recognition: a tag for every word (seqeval F1)",
    config_group="ner", default_max_length=DEFAULT_MAX_LENGTH, prepare=prepare, model_options=model_options,
    build=build, predictor=TokenClassifier, read_inputs=read_inputs, input_formats=("text", "conll"),
    sidecars=("jaxft_task.json", CRF_FILE))
