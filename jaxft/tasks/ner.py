"""Named-entity recognition (task "token-classification"): data splits, label set, encoding, loss,
evaluation, the predictor, and the task's spec.

Training rows carry a label on each word's first sub-token. Dev/test/prediction use windows that never
drop a word (long sentences are split, see data.ner_encoding), and word-level tags are scored with seqeval.
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

from jaxft.config import PACKAGED_TWEETS_NER, TOKEN_CLASSIFICATION
from jaxft.data.augment import augment_train
from jaxft.data.batching import IGNORE_INDEX
from jaxft.data.ner_encoding import (Encoded, TruncationReport, encode_for_prediction, encode_for_training,
                                     gather_word_predictions)
from jaxft.data.ner_readers import Sentence, read_conll, read_hf_dataset, read_sentences, sentences_to_bio
from jaxft.data.readers import hf_data_files, packaged_tweets_ner_path, train_dev_test
from jaxft.data.tags import bio_label_list, entity_types
from jaxft.evaluate.ner_metrics import decode_entities, ner_metrics, word_char_offsets
from jaxft.evaluate.reports import plot_training_curves, print_results_table
from jaxft.models.encoder import model_inputs
from jaxft.tasks.base import TaskSpec, TrainingTask
from jaxft.tasks.predictor import Predictor
from jaxft.train.step import token_cross_entropy

log = logging.getLogger("jaxft.ner")
DEFAULT_MAX_LENGTH = 128


@dataclasses.dataclass
class NerSplits:
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    scheme: str          # tag scheme read from the data (converted to IOB2)
    repaired: int        # I- tags that started an entity, read as B-


def read_splits(data, tag_scheme: str = "auto") -> NerSplits:
    """Train/dev/test sentences from files or a hub dataset; a lone train file is split 70/15/15."""
    train, dev, test = _read_raw_splits(data)
    converted = sentences_to_bio(train, tag_scheme)
    scheme = converted.scheme
    dev_bio = sentences_to_bio(dev, scheme) if dev else None
    test_bio = sentences_to_bio(test, scheme) if test else None
    repaired = converted.repaired + sum(x.repaired for x in (dev_bio, test_bio) if x)
    return NerSplits(converted.sentences, dev_bio.sentences if dev_bio else [],
                     test_bio.sentences if test_bio else [], scheme, repaired)


def _read_raw_splits(data) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
    if data.hf_dataset:
        return tuple(_read_hf_split(data, split) for split in (data.train_split, data.validation_split,
                                                                  data.test_split))
    train_path = packaged_tweets_ner_path() if data.train_file == PACKAGED_TWEETS_NER else data.train_file
    train = _read_file(train_path, data)
    dev = _read_file(data.validation_file, data) if data.validation_file else []
    test = _read_file(data.test_file, data) if data.test_file else []
    return train_dev_test(train, dev, test)


def _read_file(path, data) -> list[Sentence]:
    return read_sentences(path, token_column=data.conll_token_column, tag_column=data.conll_tag_column,
                          tokens_column=data.tokens_column, tags_column=data.tags_column)


def _read_hf_split(data, split: str) -> list[Sentence]:
    if not split:
        return []
    kwargs = {}
    if data.train_file and data.train_file != PACKAGED_TWEETS_NER:  # a builder such as "json" with files
        kwargs["data_files"] = hf_data_files(data)
    return read_hf_dataset(data.hf_dataset, data.hf_config_name or None, split, data.tokens_column,
                           data.tags_column, **kwargs)


def label_list(splits: NerSplits) -> list[str]:
    """O, then B-/I- per entity type seen in any split (sorted), so no dev/test tag is unknown."""
    tags = (tag for sentences in (splits.train, splits.dev, splits.test) for s in sentences for tag in s.tags)
    return bio_label_list(entity_types(tags))


class NerTask(TrainingTask):
    """The NER side of the training loop (see train.loop.Task)."""

    main_metric = "f1"

    def __init__(self, tokenizer, splits: NerSplits, labels: Sequence[str], max_length: int,
                 label_all_subtokens: bool = False):
        self.scheme = splits.scheme
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.splits = {"train": splits.train, "dev": splits.dev, "test": splits.test}
        encoded, self.truncation = encode_for_training(tokenizer, splits.train, self.label2id, max_length,
                                                       label_all_subtokens)
        self.train_rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "labels": IGNORE_INDEX}
        self._windows = {name: encode_for_prediction(tokenizer, [s.tokens for s in sentences], max_length)
                         for name, sentences in self.splits.items() if name != "train"}

    def loss(self, model, batch):
        return token_cross_entropy(model(**model_inputs(batch)), batch["labels"])

    def predict(self, model, batch):
        return jax.nn.log_softmax(model(**model_inputs(batch)), axis=-1)

    def word_log_probs(self, windows: list[Encoded], sentences_tokens, predict_batches: Callable) -> list[np.ndarray]:
        rows = [{"input_ids": w.input_ids, "labels": w.labels} for w in windows]
        token_scores = predict_batches(rows)
        return gather_word_predictions(windows, token_scores, [len(tokens) for tokens in sentences_tokens])

    def evaluate(self, split: str, predict_batches: Callable) -> dict:
        sentences = self.splits[split]
        if not sentences:
            return {"f1": float("nan"), "sentences": 0}
        word_scores = self.word_log_probs(self._windows[split], [s.tokens for s in sentences], predict_batches)
        predicted = [[self.labels[i] for i in scores.argmax(-1)] for scores in word_scores]
        metrics = ner_metrics([s.tags for s in sentences], predicted)
        metrics["sentences"] = len(sentences)
        return metrics

    def results(self) -> dict:
        return {"truncation": dataclasses.asdict(self.truncation), "tag_scheme": self.scheme}

    def report(self, workdir: Path, results: dict) -> None:
        plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png")
        print_results_table({"dev": results["dev"], "test": results["test"]})
        log.info("test F1 %.4f (dev %.4f) after %d steps, %.0f s of training at %.0f tokens/s; compiled %s",
                 results["test"].get("f1", float("nan")), results["dev"].get("f1", float("nan")), results["steps"],
                 results["train_seconds"], results["tokens_per_sec"], results["compilations"])


def truncation_summary(report: TruncationReport) -> str:
    return (f"{report.truncated_sentences} of {report.sentences} training sentences truncated "
            f"({report.dropped_words} labelled words beyond max_length not trained on; "
            f"{report.empty_words} words with no sub-token)")


# ---------------------------------------------------------------------------------------------- the run

def prepare(config) -> NerSplits:
    """Sentences of the three splits (train augmented when augment.methods asks) and the label set."""
    splits = read_splits(config.data, config.ner.tag_scheme)
    splits.train = augment_train(splits.train, config)  # train only; a no-op unless augment.methods
    log.info("data: %d train / %d dev / %d test sentences, scheme %s, %d labels%s", len(splits.train),
             len(splits.dev), len(splits.test), splits.scheme, len(label_list(splits)),
             f", {splits.repaired} I- tags starting an entity read as B-" if splits.repaired else "")
    return splits


def model_options(config, splits: NerSplits) -> dict:
    return {"id2label": label_list(splits), "ignore_mismatched_sizes": True}


def build(config, tokenizer, model, splits: NerSplits) -> NerTask:
    task = NerTask(tokenizer, splits, model.labels, config.data.max_length, config.ner.label_all_subtokens)
    log.info("tokenized: %s", truncation_summary(task.truncation))
    return task


# ---------------------------------------------------------------------------------------------- predict

@dataclasses.dataclass
class TokenPrediction:
    words: list[str]
    tags: list[str]
    scores: list[float]  # probability of each word's predicted tag


def token_log_probs(model, batch):
    return jax.nn.log_softmax(model(batch["input_ids"], batch["attention_mask"]), axis=-1)


def average_log_probs(outputs: list):
    """log of the mean of the members' probabilities."""
    return jax.nn.logsumexp(jnp.stack(outputs), axis=0) - jnp.log(len(outputs))


class TokenClassifier(Predictor):
    """A jit-compiled NER predictor over fixed shapes (batch sizes x length buckets), one model or an
    ensemble (word probabilities averaged over the members)."""

    task = TOKEN_CLASSIFICATION
    default_max_length = DEFAULT_MAX_LENGTH

    def configure(self, models):
        self.labels = list(self.model.labels)
        return token_log_probs, average_log_probs, {"input_ids": self.tokenizer.pad_token_id or 0,
                                                    "labels": IGNORE_INDEX}

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


def _public_entity(entity: dict) -> dict:
    return {key: entity[key] for key in ("type", "text", "start", "end", "score") if key in entity}


def read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def read_inputs(predictor: TokenClassifier, input_path: str | None, input_format: str = "text") -> Iterator[str]:
    """One sentence a line (stdin when no path; read as it streams), or the sentences of a CoNLL file (first
    column; words joined by single spaces for the offsets)."""
    if input_format == "conll":
        if input_path in (None, "-"):
            raise ValueError("--format conll needs --input FILE")
        yield from (" ".join(sentence.tokens) for sentence in read_conll(input_path, tag_column=None))
    elif input_path in (None, "-"):
        yield from read_lines(sys.stdin)
    else:
        with open(input_path, encoding="utf-8") as stream:
            yield from read_lines(stream)


SPEC = TaskSpec(
    name=TOKEN_CLASSIFICATION, summary="named-entity recognition: a tag for every word (seqeval F1)",
    config_group="ner", default_max_length=DEFAULT_MAX_LENGTH, prepare=prepare, model_options=model_options,
    build=build, predictor=TokenClassifier, read_inputs=read_inputs, input_formats=("text", "conll"))
