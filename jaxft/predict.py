"""Prediction with an exported model folder: sentences in, entities with character offsets out."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import jax
import numpy as np

from jaxft.data.batching import bucket_lengths, map_batches
from jaxft.data.tokenize import encode_for_prediction, gather_word_predictions
from jaxft.evaluate.metrics import decode_entities, word_char_offsets
from jaxft.models import TOKEN_CLASSIFICATION, from_pretrained, load_tokenizer
from jaxft.train.state import split_model
from jaxft.train.step import make_predict_step

IGNORE = -100


@dataclasses.dataclass
class TokenPrediction:
    words: list[str]
    tags: list[str]
    scores: list[float]  # probability of each word's predicted tag


class TokenClassifier:
    """A jit-compiled NER predictor over length buckets (compiled once per bucket shape)."""

    def __init__(self, model_dir: str | Path, *, max_length: int = 128, batch_size: int = 32,
                 bucket_multiple: int = 16, dtype: str = "float32"):
        self.model = from_pretrained(model_dir, task=TOKEN_CLASSIFICATION, dtype=dtype)
        self.tokenizer = load_tokenizer(model_dir)
        self.labels = list(self.model.labels)
        self.max_length = max_length
        self.batch_size = batch_size
        self.buckets = bucket_lengths(max_length, bucket_multiple)
        self.pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "labels": IGNORE}
        parts, params, frozen, rng = split_model(self.model)
        step = make_predict_step(parts, lambda model, batch: jax.nn.log_softmax(
            model(batch["input_ids"], batch["attention_mask"]), axis=-1))
        self._run = lambda batch: step(params, frozen, rng, batch)

    def predict_words(self, sentences: list[list[str]]) -> list[TokenPrediction]:
        windows = encode_for_prediction(self.tokenizer, sentences, self.max_length)
        rows = [{"input_ids": w.input_ids, "labels": w.labels} for w in windows]
        token_scores = map_batches(self._run, rows, self.batch_size, self.buckets, self.pad_values)
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


def _public_entity(entity: dict) -> dict:
    return {key: entity[key] for key in ("type", "text", "start", "end", "score") if key in entity}


def read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def run_predict(model_dir: str, input_path: str | None, output: TextIO = sys.stdout, *,
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
