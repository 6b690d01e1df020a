"""Named-entity recognition: data splits, label set, encoding, loss, evaluation and prediction.

Training rows carry a label on each word's first sub-token. Dev/test/prediction use windows that never
drop a word (long sentences are split, see data.tokenize), and word-level tags are scored with seqeval.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from jaxft.config import PACKAGED_TWEETS_NER
from jaxft.data.augment import augment_train
from jaxft.data.errors import DataError
from jaxft.data.readers import (Sentence, packaged_tweets_ner_path, read_hf_dataset, read_sentences,
                                sentences_to_bio, split_fixed)
from jaxft.data.tags import bio_label_list, entity_types
from jaxft.data.tokenize import (Encoded, TruncationReport, encode_for_prediction, encode_for_training,
                                 gather_word_predictions)
from jaxft.evaluate.metrics import ner_metrics
from jaxft.models.encoder import model_inputs
from jaxft.tasks.common import export_and_summarise, fit, is_writer, resolve_model_path, write_json
from jaxft.train.step import token_cross_entropy

log = logging.getLogger("jaxft.ner")
IGNORE = -100


@dataclasses.dataclass
class NerSplits:
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    scheme: str          # tag scheme read from the data (converted to IOB2)
    repaired: int        # I- tags that started an entity, read as B-


def read_splits(data) -> NerSplits:
    """Train/dev/test sentences from files or a hub dataset; a lone train file is split 70/15/15."""
    train, dev, test = _read_raw_splits(data)
    converted = sentences_to_bio(train, data.tag_scheme)
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
    if not dev and not test:
        return split_fixed(train)
    if not dev:
        train, dev = split_fixed(train, (0.85, 0.15))
    return train, dev, test


def _read_file(path, data) -> list[Sentence]:
    return read_sentences(path, token_column=data.conll_token_column, tag_column=data.conll_tag_column,
                          tokens_column=data.tokens_column, tags_column=data.tags_column)


def _read_hf_split(data, split: str) -> list[Sentence]:
    if not split:
        return []
    kwargs = {}
    if data.train_file and data.train_file != PACKAGED_TWEETS_NER:  # a builder such as "json" with files
        kwargs["data_files"] = {name: path for name, path in (("train", data.train_file),
                                                               ("validation", data.validation_file),
                                                               ("test", data.test_file)) if path}
    return read_hf_dataset(data.hf_dataset, data.hf_config_name or None, split, data.tokens_column,
                           data.tags_column, **kwargs)


def label_list(splits: NerSplits) -> list[str]:
    """O, then B-/I- per entity type seen in any split (sorted), so no dev/test tag is unknown."""
    tags = (tag for sentences in (splits.train, splits.dev, splits.test) for s in sentences for tag in s.tags)
    return bio_label_list(entity_types(tags))


class NerTask:
    """The NER side of the training loop (see train.loop.Task)."""

    main_metric = "f1"

    def __init__(self, tokenizer, splits: NerSplits, labels: Sequence[str], max_length: int,
                 label_all_subtokens: bool = False):
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.splits = {"train": splits.train, "dev": splits.dev, "test": splits.test}
        encoded, self.truncation = encode_for_training(tokenizer, splits.train, self.label2id, max_length,
                                                       label_all_subtokens)
        self.train_rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "labels": IGNORE}
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


def truncation_summary(report: TruncationReport) -> str:
    return (f"{report.truncated_sentences} of {report.sentences} training sentences truncated "
            f"({report.dropped_words} labelled words beyond max_length not trained on; "
            f"{report.empty_words} words with no sub-token)")


def check_labels_known(splits: NerSplits, labels: Sequence[str], model_source: str) -> None:
    """With a model that already has a head (e.g. re-training an export), every tag must be in it."""
    known = set(labels)
    for sentences in (splits.train, splits.dev, splits.test):
        for sentence in sentences:
            for tag in sentence.tags:
                if tag not in known:
                    raise DataError(sentence.source, f"tag {tag!r} is not among the labels of {model_source}")


# ---------------------------------------------------------------------------------------------- the run

def train_and_evaluate(config, workdir: Path) -> dict:
    """data -> model -> train (resuming if the workdir has checkpoints) -> test -> export."""
    from jaxft.models import TOKEN_CLASSIFICATION, from_pretrained, load_tokenizer
    splits = read_splits(config.data)
    splits.train = augment_train(splits.train, config)  # train only; a no-op unless augment.methods
    labels = label_list(splits)
    log.info("data: %d train / %d dev / %d test sentences, scheme %s, %d labels%s", len(splits.train),
             len(splits.dev), len(splits.test), splits.scheme, len(labels),
             f", {splits.repaired} I- tags starting an entity read as B-" if splits.repaired else "")
    model_path = resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(model_path)
    model, report = from_pretrained(model_path, task=TOKEN_CLASSIFICATION, id2label=labels,
                                    dtype=config.model.dtype, seed=config.train.seed, remat=config.model.remat,
                                    ignore_mismatched_sizes=True, output_loading_info=True)
    task = NerTask(tokenizer, splits, labels, config.data.max_length, config.data.label_all_subtokens)
    log.info("tokenized: %s", truncation_summary(task.truncation))
    trainer, result = fit(config, workdir, model, task, model_path)
    if not result.finished:
        trainer.close()
        return {"stopped_at_step": result.steps}
    test = task.evaluate("test", result.predict_batches)
    dev = task.evaluate("dev", result.predict_batches)
    # export/ (merged LoRA when PEFT is on) and, for LoRA/DoRA, export_adapter/ in peft's format
    _, results = export_and_summarise(config, workdir, model, trainer, result, model_path, tokenizer, dev, test,
                                      report)
    results.update({"truncation": dataclasses.asdict(task.truncation), "tag_scheme": splits.scheme})
    if is_writer():
        write_json(workdir / "results.json", results)
        _report(workdir, results)
    return results


def _report(workdir: Path, results: dict) -> None:
    from jaxft.evaluate.reports import plot_training_curves, print_results_table
    plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png")
    print_results_table({"dev": results["dev"], "test": results["test"]})
    log.info("test F1 %.4f (dev %.4f) after %d steps, %.0f s of training at %.0f tokens/s; compiled %s",
             results["test"].get("f1", float("nan")), results["dev"].get("f1", float("nan")), results["steps"],
             results["train_seconds"], results["tokens_per_sec"], results["compilations"])
