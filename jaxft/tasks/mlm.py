"""Continued masked-LM pretraining (task "masked-lm"): text lines in, an HF *ForMaskedLM folder out; and the
fill-mask predictor for such exports.

Text: a plain-text file (one document or sentence a line; blank lines skipped), the text column of a
CSV/TSV/JSON/JSONL/parquet file or a hub dataset (`data.text_column`), the packaged Rotten Tomatoes
reviews, or the tokens of a CoNLL file joined by spaces. `mlm.source_split=train` keeps only the first 70%
of the lines (the train part of the fixed split the fine-tuning recipes use). Held-out lines for perplexity:
`data.validation_file`, else the last `mlm.heldout_fraction` of the lines (at most `mlm.max_heldout_lines`),
which are then not trained on.

Each line becomes [CLS] line [SEP] (lines longer than data.max_length are cut into several such pieces, not
truncated); `data.packing=True` packs them into full rows of data.max_length with block-diagonal attention
(data/batching.py). Masking is dynamic (data/masking.py): drawn inside the train step from an RNG stream
that is part of the checkpointed state, so every epoch sees new masks and a resumed run sees the same ones.
The held-out lines are masked once (mlm.eval_seed); dev "perplexity" is exp(mean cross-entropy over their
masked tokens), measured before the first step and at every evaluation; the best checkpoint is the one
with the lowest perplexity (main metric "neg_perplexity", since the loop keeps the highest).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxft.config import MASKED_LM, PACKAGED_ROTTEN_TOMATOES, PACKAGED_TWEETS_NER, ConfigError
from jaxft.data import masking
from jaxft.data.batching import IGNORE_INDEX
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import read_sentences
from jaxft.data.readers import packaged_tweets_ner_path, read_text, split_fixed
from jaxft.data.text_readers import (TEXT_EXTENSIONS, read_hf_text_dataset, read_packaged_rotten_tomatoes,
                                     read_text_examples, table_suffix)
from jaxft.evaluate.reports import plot_training_curves
from jaxft.files import write_json
from jaxft.models import ModelLoadError
from jaxft.models.encoder import model_inputs
from jaxft.tasks.base import TaskSpec, TrainingTask
from jaxft.tasks.predictor import Predictor
from jaxft.train.step import token_cross_entropy

log = logging.getLogger("jaxft.mlm")
CONLL_SUFFIXES = (".conll", ".iob", ".bio")
BEFORE_FILE = "perplexity_before.json"
MASKING_STREAM = "mlm_masking"  # attribute of the model holding the masking RNG (checkpointed with dropout's)


# ---------------------------------------------------------------------------------------------- text

def read_lines(path: str, data) -> list[str]:
    """Non-blank text lines of one source (see module docstring)."""
    if path == PACKAGED_ROTTEN_TOMATOES:
        texts = [e.text for e in read_packaged_rotten_tomatoes()]
    elif path == PACKAGED_TWEETS_NER or table_suffix(path) in CONLL_SUFFIXES:
        source = packaged_tweets_ner_path() if path == PACKAGED_TWEETS_NER else path
        texts = [" ".join(s.tokens) for s in read_sentences(source, token_column=data.conll_token_column,
                                                             tag_column=None)]
    elif path.startswith("packaged:"):
        raise ConfigError(f"data.train_file {path!r} is not a packaged text source (use {PACKAGED_ROTTEN_TOMATOES!r},"
                          f" {PACKAGED_TWEETS_NER!r} or a file)")
    elif table_suffix(path) in TEXT_EXTENSIONS:
        texts = [e.text for e in read_text_examples(path, data.text_column, "", None)]
    else:
        texts = read_text(path, "utf-8").splitlines()
    lines = [t.strip() for t in texts if t and t.strip()]
    if not lines:
        raise DataError(path, "no text lines found")
    return lines


def read_corpus(data, mlm) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines)."""
    if data.hf_dataset:
        kwargs = {"data_files": {"train": data.train_file}} if data.train_file and \
            not data.train_file.startswith("packaged:") else {}
        examples, _ = read_hf_text_dataset(data.hf_dataset, data.hf_config_name or None, data.train_split,
                                           data.text_column, "", None, **kwargs)
        lines = [e.text.strip() for e in examples if e.text and e.text.strip()]
    else:
        lines = read_lines(data.train_file, data)
    if mlm.source_split == "train":
        lines = split_fixed(lines)[0]
    if data.validation_file:
        return lines, read_lines(data.validation_file, data)
    held = min(mlm.max_heldout_lines, max(1, int(mlm.heldout_fraction * len(lines))))
    if held >= len(lines):
        raise DataError(data.train_file, f"{len(lines)} lines are too few to hold {held} out for perplexity")
    return lines[:-held], lines[-held:]


def encode_lines(tokenizer, lines: Sequence[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """[CLS] piece [SEP] rows with `special_mask`, `word_start` (see data.masking) and `labels` (-100); a line
    longer than max_length continues in further pieces (the fast tokenizer's overflow), none is dropped."""
    encoded = tokenizer(list(lines), truncation=True, max_length=max_length, return_overflowing_tokens=True,
                        return_special_tokens_mask=True, verbose=False)
    rows = []
    for i, ids in enumerate(encoded["input_ids"]):
        special = np.asarray(encoded["special_tokens_mask"][i], np.int32)
        words = encoded.word_ids(i)
        word_start = np.ones(len(ids), np.int32)
        for t in range(1, len(ids)):
            if not special[t] and not special[t - 1] and words[t] is not None and words[t] == words[t - 1]:
                word_start[t] = 0
        rows.append({"input_ids": np.asarray(ids, np.int32), "special_mask": special, "word_start": word_start,
                     "labels": np.full(len(ids), IGNORE_INDEX, np.int32)})
    return rows


# ---------------------------------------------------------------------------------------------- task

class MaskedLmTask(TrainingTask):
    """The masked-LM side of the training loop (see train.loop.Task)."""

    main_metric = "neg_perplexity"

    def __init__(self, tokenizer, train_lines: Sequence[str], heldout: dict[str, Sequence[str]], *,
                 max_length: int, vocab_size: int, mlm):
        if tokenizer.mask_token_id is None:
            raise ConfigError("the tokenizer has no mask token: masked-LM training needs one")
        self.probability = float(mlm.probability)
        self.options = dict(mask_id=int(tokenizer.mask_token_id), probability=self.probability,
                            mask_fraction=float(mlm.mask_fraction), random_fraction=float(mlm.random_fraction),
                            whole_word=bool(mlm.whole_word))
        self.replacement_ids = masking.replacement_vocabulary(tokenizer, vocab_size)
        self.train_rows = encode_lines(tokenizer, train_lines, max_length)
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "special_mask": 1, "word_start": 1,
                           "labels": IGNORE_INDEX}
        self.eval_rows = {name: self.mask_once(encode_lines(tokenizer, lines, max_length), mlm.eval_seed)
                          for name, lines in heldout.items() if lines}
        self.line_counts = {"train": len(train_lines), "dev": len(heldout.get("dev", ()))}
        self.masking_summary = _MaskingSummary.of(mlm)
        self.before: dict = {}  # held-out metrics of the starting weights (before_training)
        self.after: dict = {}   # ... of the best weights (final_metrics)

    def mask_once(self, rows: list[dict], seed: int) -> list[dict]:
        """Fixed masks for evaluation rows (one key for the whole set), capped as the predict step expects."""
        if not rows:
            return rows
        lengths = np.array([len(r["input_ids"]) for r in rows])
        width = int(lengths.max())
        arrays = {k: np.full((len(rows), width), self.pad_values[k], np.int32) for k in ("input_ids", "special_mask",
                                                                                      "word_start")}
        for i, row in enumerate(rows):
            for key in arrays:
                arrays[key][i, :lengths[i]] = row[key]
        caps = np.array([masking.max_predictions(int(n), self.probability) for n in lengths])[:, None]
        masked = masking.mask_tokens(jax.random.key(seed), jnp.asarray(arrays["input_ids"]),
                                     jnp.asarray(arrays["special_mask"]), jnp.asarray(arrays["word_start"]),
                                     replacement_ids=jnp.asarray(self.replacement_ids), cap=jnp.asarray(caps),
                                     **self.options)
        ids, labels = np.asarray(masked.input_ids), np.asarray(masked.labels)
        return [{**row, "input_ids": ids[i, :lengths[i]], "labels": labels[i, :lengths[i]]}
                for i, row in enumerate(rows)]

    # ------------------------------------------------------------------ traced

    def loss(self, model, batch):
        key = getattr(model, MASKING_STREAM).masking()  # advances the checkpointed counter
        slots = masking.max_predictions(batch["input_ids"].shape[-1], self.probability)
        masked = masking.mask_tokens(key, batch["input_ids"], batch["special_mask"], batch["word_start"],
                                     replacement_ids=jnp.asarray(self.replacement_ids), cap=slots, **self.options)
        positions, targets = masking.prediction_slots(masked.labels, slots)
        logits = model(**model_inputs({**batch, "input_ids": masked.input_ids}), masked_positions=positions)
        return token_cross_entropy(logits, targets)

    def predict(self, model, batch):
        """Per token: [log-probability of the original token (0 where not masked), 1 where it was scored]."""
        labels = batch["labels"]
        positions, targets = masking.prediction_slots(labels, masking.max_predictions(labels.shape[-1],
                                                                                      self.probability))
        logits = model(**model_inputs(batch), masked_positions=positions)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
        scored = targets >= 0
        rows = jnp.arange(labels.shape[0])[:, None]
        out = jnp.zeros(labels.shape + (2,), jnp.float32)
        out = out.at[rows, positions, 0].set(jnp.where(scored, picked, 0.0))
        return out.at[rows, positions, 1].set(scored.astype(jnp.float32))

    # ------------------------------------------------------------------ host

    def evaluate(self, split: str, predict_batches: Callable) -> dict:
        rows = self.eval_rows.get(split)
        if not rows:
            return {"neg_perplexity": float("nan"), "perplexity": float("nan"), "masked_tokens": 0}
        outputs = predict_batches(rows)
        total = sum(float(o[:, 0].sum()) for o in outputs)
        scored = sum(int(o[:, 1].sum()) for o in outputs)
        expected = sum(int((r["labels"] >= 0).sum()) for r in rows)
        if scored != expected:  # more masked tokens in one packed row than the predict step has slots
            log.warning("%s: %d of %d masked tokens scored (prediction slots full)", split, scored, expected)
        loss = -total / max(scored, 1)
        perplexity = math.exp(min(loss, 700.0))
        return {"neg_perplexity": -perplexity, "perplexity": perplexity, "loss": loss, "masked_tokens": scored,
                "lines": len(rows)}


    # ------------------------------------------------------------------ the run's other parts

    def before_training(self, trainer, resumed: bool, workdir: Path) -> None:
        """The held-out perplexity of the starting weights, measured once per workdir (kept in
        perplexity_before.json, so a resumed run reports it too)."""
        path = workdir / BEFORE_FILE
        if path.exists():
            self.before = json.loads(path.read_text())
            return
        if resumed:
            return
        self.before = self.evaluate("dev", trainer.predict_batches)
        log.info("before training: held-out perplexity %.3f over %d masked tokens", self.before["perplexity"],
                 self.before["masked_tokens"])
        if trainer.is_writer:
            write_json(path, self.before)
            trainer.metrics.write(0, "dev", self.before)

    def final_metrics(self, predict_batches: Callable) -> tuple[dict, dict]:
        self.after = self.evaluate("dev", predict_batches)
        return self.after, self.evaluate("test", predict_batches) if self.eval_rows.get("test") else {}

    def results(self) -> dict:
        return {"main_metric": "perplexity", "perplexity_before": self.before.get("perplexity"),
                "perplexity_after": self.after.get("perplexity"), "train_lines": self.line_counts["train"],
                "heldout_lines": self.line_counts["dev"], "train_pieces": len(self.train_rows),
                "masking": dataclasses.asdict(self.masking_summary)}

    def report(self, workdir: Path, results: dict) -> None:
        plot_training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png", "perplexity")
        log.info("held-out perplexity %.3f -> %.3f (best step %d of %d); %.0f s of training at %.0f tokens/s",
                 results["perplexity_before"] or float("nan"), results["perplexity_after"], results["best_step"],
                 results["steps"], results["train_seconds"], results["tokens_per_sec"])
        print(f"held-out perplexity: {results['perplexity_before'] or float('nan'):.3f} before, "
              f"{results['perplexity_after']:.3f} after; export: {workdir / 'export'}")


@dataclasses.dataclass
class MlmCorpus:
    train: list[str]
    heldout: list[str]
    test: list[str]


def prepare(config) -> MlmCorpus:
    data = config.data
    train_lines, heldout_lines = read_corpus(data, config.mlm)
    test_lines = read_lines(data.test_file, data) if data.test_file else []
    log.info("text: %d training lines, %d held out for perplexity%s", len(train_lines), len(heldout_lines),
             f", {len(test_lines)} test lines" if test_lines else "")
    return MlmCorpus(train_lines, heldout_lines, test_lines)


def model_options(config, corpus: MlmCorpus) -> dict:
    return {}


def build(config, tokenizer, model, corpus: MlmCorpus) -> MaskedLmTask:
    setattr(model, MASKING_STREAM, nnx.Rngs(masking=config.train.seed + 2))
    task = MaskedLmTask(tokenizer, corpus.train, {"dev": corpus.heldout, "test": corpus.test},
                        max_length=config.data.max_length, vocab_size=model.config.vocab_size, mlm=config.mlm)
    tokens = sum(len(r["input_ids"]) for r in task.train_rows)
    log.info("tokenized: %d training pieces, %d tokens (%.1f a piece); masking %.0f%%%s", len(task.train_rows),
             tokens, tokens / max(len(task.train_rows), 1), 100 * config.mlm.probability,
             " of whole words" if config.mlm.whole_word else "")
    return task


@dataclasses.dataclass
class _MaskingSummary:
    probability: float
    mask_fraction: float
    random_fraction: float
    whole_word: bool

    @classmethod
    def of(cls, mlm) -> "_MaskingSummary":
        return cls(mlm.probability, mlm.mask_fraction, mlm.random_fraction, mlm.whole_word)


# ---------------------------------------------------------------------------------------------- predict

DEFAULT_MAX_LENGTH = 128
TOP_K = 5


def top_tokens(model, batch):
    """Per position: the TOP_K most likely tokens and their probabilities (on device: no [T, vocab] fetch)."""
    probs = jax.nn.softmax(model(batch["input_ids"], batch["attention_mask"]), axis=-1)
    return jax.lax.top_k(probs, TOP_K)


class FillMask(Predictor):
    """Texts with the tokenizer's mask token ([MASK], <mask>) -> the most likely tokens at each mask, as
    transformers' fill-mask pipeline gives them (score, token, token_str, sequence)."""

    task = MASKED_LM
    default_max_length = DEFAULT_MAX_LENGTH

    def configure(self, models):
        if len(models) > 1:
            raise ModelLoadError("fill-mask predicts with one masked-LM export, not an ensemble")
        if self.tokenizer.mask_token_id is None:
            raise ConfigError("the tokenizer has no mask token: fill-mask needs one")
        return top_tokens, None, {"input_ids": self.tokenizer.pad_token_id or 0}

    def predict_items(self, items: list) -> list[dict]:
        mask = self.tokenizer.mask_token_id
        encoded = self.tokenizer(list(items), truncation=True, max_length=self.max_length, verbose=False)
        rows = [{"input_ids": np.asarray(ids, np.int32)} for ids in encoded["input_ids"]]
        outputs = self.run_rows(rows)
        results = []
        for text, row, (scores, token_ids) in zip(items, rows, outputs):
            positions = np.flatnonzero(row["input_ids"] == mask)
            if not len(positions):
                raise DataError("<input>", f"{text[:60]!r} has no {self.tokenizer.mask_token} token to fill")
            results.append({"text": text, "predictions": [self._candidates(row["input_ids"], p, scores[p],
                                                                            token_ids[p]) for p in positions]})
        return results

    def _candidates(self, ids: np.ndarray, position: int, scores, token_ids) -> list[dict]:
        candidates = []
        for score, token in zip(scores, token_ids):
            filled = ids.copy()
            filled[position] = token
            candidates.append({"score": float(score), "token": int(token),
                               "token_str": self.tokenizer.decode([int(token)]).strip(),
                               "sequence": self.tokenizer.decode(filled, skip_special_tokens=True)})
        return candidates


def read_inputs(predictor: FillMask, input_path: str | None, input_format: str = "text") -> list[str]:
    """One text a line (stdin when no path), each with the mask token where a word is to be filled in."""
    stream = sys.stdin if input_path in (None, "-") else open(input_path, encoding="utf-8")
    with stream:
        return [line.rstrip("\r\n") for line in stream if line.strip()]


SPEC = TaskSpec(
    name=MASKED_LM, summary="masked-LM continued pretraining on domain text (fill-mask predictions)",
    config_group="mlm", default_max_length=DEFAULT_MAX_LENGTH, prepare=prepare, model_options=model_options,
    build=build, predictor=FillMask, read_inputs=read_inputs)
