"""Attributions per input token and word: integrated gradients (IG) and gradient x input.

    python -m jaxft.main explain --model runs/sentiment/export --text "a gripping, funny film" [--html out.html]
    python -m jaxft.main explain --model runs/ner/export --text "Barack Obama visited Paris" --method gxi

What is attributed
    Classification: one scalar, the logit of the target label (the predicted label unless `target` names
    one; regression: the value). NER: one scalar per predicted entity, the sum over the entity's words of
    the logit of each word's predicted tag (B-x, I-x, ...) at the word's first sub-token, the position
    whose logits decide the word's tag (as `predict` reads them). `target` restricts NER to one entity type.
    An export trained with a CRF (crf.safetensors) predicts its tags by Viterbi decoding as `predict` does
    (scores: the CRF's marginal probabilities); the attributed scalar is the same sum of emission logits,
    because the transition scores of the path do not depend on the input (their gradient is zero).
    Extractive QA (`text` the question, `text_pair` the context): the score of the predicted answer span,
    start logit at its first sub-token + end logit at its last, the span chosen as `predict` chooses it
    (n-best within max_answer_length; with SQuAD v2 models the null answer, start + end logit at [CLS],
    when its score beats the best span by more than the tuned threshold). One window only: a context
    longer than max_length sub-tokens is truncated (counted in "words_without_tokens"; raise --max-length).

Where the path runs
    The model is driven from its word embeddings (`inputs_embeds`, the hook in jaxft/models/encoder.py);
    position and token-type embeddings stay the input's at every point. The baseline keeps the special
    tokens ([CLS], [SEP], <s>, ...) and replaces the word embedding of every other token by the [PAD]
    token's (baseline "pad", the default: the input with its words blanked out, at the same positions and
    segments) or by zeros (baseline "zero"). Since the baseline differs from the input only in word
    embeddings, the straight path between the two summed word+position+type embeddings is the same path.

Methods
    ig   IG_i = (x_i - x'_i) . integral_0^1 grad F(x' + a (x - x')) da, summed over the embedding
         width for each token i. The integral is a quadrature over `steps` points: the midpoint Riemann
         sum (rule "riemann", the default) or Gauss-Legendre (rule "gauss-legendre": exact for polynomials
         of degree 2 * steps - 1). Gauss-Legendre wins on smooth integrands, but along a fine-tuned
         model's path the target can turn sharply, and there its sparse mid-path nodes do worse: on the
         exported NER model, 50 points leave a relative gap of up to 2.7e-2 with Gauss-Legendre and 2.5e-3
         with the midpoint rule (the sentiment model: 1.1e-5 and 1.6e-4).
         Completeness: the attributions add up to F(x) - F(x'); each explanation reports the gap
         |sum - (F(x) - F(x'))|, the gap relative to |F(x) - F(x')|, and a warning when that exceeds
         1e-2 (raise `steps`). The steps are evaluated as one batch through a jit-compiled gradient (in
         chunks of `step_batch` rows, one compilation per input length and chunk size).
    gxi  gradient x input: x_i . grad F(x) at the input, summed over the width (no baseline; its sum is
         not F(x) - F(x') and no gap is reported).

Words
    Sub-token attributions are summed into the words of the input (NER: the words `predict` tags, found by
    the tokenizer's pre-tokenizer; classification: the whitespace-separated words of the text, and of the pair
    text, found by character offsets). Special tokens belong to no word. Sums keep completeness at the word level.

Output: `explain()` returns a JSON-ready dict; `render_html()` turns it into one self-contained HTML page
(inline CSS, no scripts or external assets, every text escaped).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.config import QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from jaxft.data.ner_encoding import encode_texts_for_prediction
from jaxft.data.text_readers import QAExample
from jaxft.errors import USER_ERRORS
from jaxft.evaluate.ner_metrics import decode_entities
from jaxft.models import from_pretrained, load_tokenizer
from jaxft.models.heads import word_embeddings
from jaxft.tasks import ner, registry
from jaxft.tasks.predictor import read_task_file
from jaxft.tasks.qa import NO_OFFSET, decode_example
from jaxft.train.state import split_model

METHODS = ("ig", "gxi")
RULES = ("riemann", "gauss-legendre")
GAP_WARNING = 1e-2  # relative completeness gap above which an explanation carries a warning
BASELINES = ("pad", "zero")


# ---------------------------------------------------------------------------------------------- quadrature

def path_points(steps: int, rule: str = "riemann") -> tuple[np.ndarray, np.ndarray]:
    """(alphas in (0, 1), weights summing to 1) for integrating over the path with `steps` points."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if rule == "riemann":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")


# ---------------------------------------------------------------------------------------------- inputs

@dataclasses.dataclass
class EncodedInput:
    input_ids: np.ndarray          # int32 [T]
    token_type_ids: np.ndarray     # int32 [T]
    tokens: list[str]              # sub-token strings
    token_words: np.ndarray        # int [T]: index into `words`, -1 for special tokens
    special: np.ndarray            # bool [T]: kept in the baseline
    words: list[dict]              # {"text", "start", "end"} (+ "segment" 1 for the pair text)
    offsets: np.ndarray | None = None  # int [T, 2]: characters in the segment's text (QA), (0, 0) for specials
    segments: np.ndarray | None = None  # int [T]: 0 text, 1 pair text, -1 special token


def _whitespace_words(text: str, segment: int | None = None) -> list[dict]:
    words = []
    for match in re.finditer(r"\S+", text):
        word = {"text": match.group(), "start": match.start(), "end": match.end()}
        if segment is not None:
            word["segment"] = segment
        words.append(word)
    return words


def encode_text_input(tokenizer, text: str, text_pair: str | None, max_length: int,
                      truncation: bool | str = True) -> EncodedInput:
    """Classification input as training encoded it (special tokens, truncation to max_length), with each
    sub-token mapped to a whitespace word by its character offsets. QA passes truncation="only_second"."""
    encoding = tokenizer(text, text_pair, truncation=truncation, max_length=max_length, padding=False,
                         return_offsets_mapping=True, return_token_type_ids=True, return_attention_mask=False,
                         verbose=False)
    ids = np.asarray(encoding["input_ids"], np.int32)
    types = encoding.get("token_type_ids")
    types = np.zeros_like(ids) if types is None else np.asarray(types, np.int32)
    sequence_ids = encoding.sequence_ids()
    offsets = encoding["offset_mapping"]
    segments = [_whitespace_words(text, 0 if text_pair is not None else None)]
    if text_pair is not None:
        segments.append(_whitespace_words(text_pair, 1))
    words = [w for segment in segments for w in segment]
    first_index = [0, len(segments[0])]
    token_words = np.full(len(ids), -1, np.int64)
    for position, (sequence, (start, end)) in enumerate(zip(sequence_ids, offsets)):
        if sequence is None or end <= start:
            continue
        for j, word in enumerate(segments[sequence]):
            if word["start"] <= start < word["end"]:
                token_words[position] = first_index[sequence] + j
                break
    special = np.array([s is None for s in sequence_ids], bool)
    return EncodedInput(ids, types, tokenizer.convert_ids_to_tokens(ids.tolist()), token_words, special, words,
                        np.asarray(offsets, np.int64).reshape(-1, 2),
                        np.array([-1 if s is None else s for s in sequence_ids], np.int64))


def encode_word_input(tokenizer, text: str, max_length: int) -> EncodedInput:
    """NER input as `predict` encodes raw text: the tokenizer's pre-tokenizer finds the words (punctuation
    is its own word) with their character spans; one window (an error when it needs more)."""
    windows, (spans,) = encode_texts_for_prediction(tokenizer, [text], max_length)
    if not spans:
        raise ValueError("the text has no words to explain")
    if len(windows) > 1:
        raise ValueError(f"the text needs more than max_length={max_length} sub-tokens; explain a shorter text "
                         "or raise --max-length")
    window = windows[0]
    ids = window.input_ids.astype(np.int32)
    return EncodedInput(ids, np.zeros_like(ids), tokenizer.convert_ids_to_tokens(ids.tolist()),
                        window.word_ids.astype(np.int64), window.word_ids < 0,
                        [{"text": text[start:end], "start": start, "end": end} for start, end in spans])


# ---------------------------------------------------------------------------------------------- the jitted core

def _make_functions(parts):
    """(forward, attribute): both jit-compiled pure functions over the split model's arrays."""

    def embeddings(model, ids, keep, pad_id, fill_scale):
        table = word_embeddings(model.backbone).embedding[...]
        x = table[ids]                                        # [T, H]
        fill = table[pad_id] * fill_scale                     # [PAD]'s row, or zeros
        return x, jnp.where(keep[:, None], x, fill[None, :])

    def run(model, ids, types, embeds):
        rows = embeds.shape[0]
        ids_b = jnp.broadcast_to(ids, (rows, ids.shape[0]))
        types_b = jnp.broadcast_to(types, (rows, ids.shape[0]))
        out = model(ids_b, jnp.ones_like(ids_b), types_b, inputs_embeds=embeds)
        return jnp.stack(out, axis=-1) if isinstance(out, tuple) else out  # QA: (start, end) -> [rows, T, 2]

    def forward(params, frozen, rng, ids, types, keep, pad_id, fill_scale):
        """Logits at the baseline and at the input: [2, ...]."""
        model = parts.merge(params, frozen, rng, train=False)
        x, base = embeddings(model, ids, keep, pad_id, fill_scale)
        return run(model, ids, types, jnp.stack([base, x]))

    def attribute(params, frozen, rng, ids, types, keep, pad_id, fill_scale, weights, alphas, coefficients):
        """Summed coefficient-weighted gradients of the target over a chunk of path points -> (grad [T, H],
        input embeddings [T, H], baseline embeddings [T, H])."""
        model = parts.merge(params, frozen, rng, train=False)
        x, base = embeddings(model, ids, keep, pad_id, fill_scale)

        def total(path):
            logits = run(model, ids, types, path)
            per_point = jnp.sum(logits * weights, axis=tuple(range(1, logits.ndim)))
            return jnp.sum(per_point * coefficients)

        path = base[None] + alphas[:, None, None] * (x - base)[None]
        return jax.grad(total)(path).sum(0), x, base

    return jax.jit(forward), jax.jit(attribute)


# ---------------------------------------------------------------------------------------------- explainer

class Explainer:
    """IG / gradient x input for a token-classification, sequence-classification or extractive-QA model
    (from an exported folder, or a model object and its tokenizer). `qa` holds QA decoding settings
    (max_answer_length, version_2, null_threshold; an export's jaxft_task.json supplies them)."""

    def __init__(self, model, tokenizer, *, max_length: int = 128, problem_type: str | None = None,
                 step_batch: int = 64, qa: dict | None = None, crf=None):
        if model.task not in (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING):
            raise ValueError(f"explain supports classification, NER and QA models, not {model.task!r}")
        self.task = model.task
        self.qa = {"max_answer_length": 30, "version_2": False, "null_threshold": 0.0, **(qa or {})}
        self.labels = list(model.labels)
        self.problem_type = problem_type or getattr(model, "problem_type", None)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.step_batch = step_batch
        self.crf = crf  # NER trained with a CRF: tags by Viterbi decoding (tasks.ner.decode_sentence)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        parts, *self._arrays = split_model(model)
        self._forward, self._attribute = _make_functions(parts)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, max_length: int | None = None, step_batch: int = 64):
        spec = registry.for_folder(model_dir)
        info = read_task_file(model_dir)
        model = from_pretrained(model_dir, task=spec.name)
        qa = {k: info[k] for k in ("max_answer_length", "version_2", "null_threshold") if k in info}
        max_length = int(max_length or info.get("max_length") or spec.default_max_length)
        with_crf = spec.name == TOKEN_CLASSIFICATION and info.get("crf")
        crf = ner.read_crf_file(model_dir, model.labels) if with_crf else None
        return cls(model, load_tokenizer(model_dir), max_length=max_length, problem_type=info.get("problem_type"),
                   step_batch=step_batch, qa=qa, crf=crf)

    @property
    def entity_types(self) -> list[str]:
        return sorted({label.split("-", 1)[1] for label in self.labels if "-" in label})

    # ------------------------------------------------------------------ public

    def explain(self, text: str, *, text_pair: str | None = None, method: str = "ig", steps: int = 50,
                rule: str = "riemann", baseline: str = "pad", target: str | None = None) -> dict:
        """Attributions for one input; see the module docstring for targets, path, methods and output."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")
        alphas, coefficients = path_points(steps, rule) if method == "ig" else (np.ones(1), np.ones(1))
        token_task = self.task == "token-classification"
        qa_task = self.task == "question-answering"
        if qa_task:
            if not text_pair:
                raise ValueError("a QA model explains a question (text) about a context (text_pair); the context "
                                 "is missing")
            if target is not None:
                raise ValueError("QA explains the predicted answer; there is no target to choose")
            encoded = encode_text_input(self.tokenizer, text, text_pair, self.max_length, truncation="only_second")
        elif token_task:
            if text_pair is not None:
                raise ValueError("NER models take one text, not a pair")
            if target is not None and target not in self.entity_types:
                raise ValueError(f"unknown target entity type {target!r}; this model's types: "
                                 f"{', '.join(self.entity_types)}")
            encoded = encode_word_input(self.tokenizer, text, self.max_length)
        else:
            if target is not None and target not in self.labels:
                raise ValueError(f"unknown target label {target!r}; this model's labels: {', '.join(self.labels)}")
            encoded = encode_text_input(self.tokenizer, text, text_pair, self.max_length)
        inputs = (jnp.asarray(encoded.input_ids), jnp.asarray(encoded.token_type_ids),
                  jnp.asarray(encoded.special), jnp.int32(self.pad_id),
                  jnp.float32(1.0 if baseline == "pad" else 0.0))
        logits = np.asarray(self._forward(*self._arrays, *inputs), np.float64)  # [2, K] or [2, T, K]
        if qa_task:
            prediction, targets = self._span_targets(text_pair, encoded, logits[1])
        elif token_task:
            prediction, targets = self._entity_targets(text, encoded, logits[1], target)
        else:
            prediction, targets = self._label_targets(logits[1], target)
        result: dict[str, Any] = {
            "task": self.task, "text": text, "method": method, "baseline": baseline if method == "ig" else None,
            "steps": int(steps) if method == "ig" else None, "rule": rule if method == "ig" else None,
            "tokens": encoded.tokens, "token_words": encoded.token_words.tolist(), "words": encoded.words,
            "prediction": prediction, "explanations": [],
            # words past max_length (classification truncates) have no sub-token and attribution 0
            "words_without_tokens": len(encoded.words) - len(set(encoded.token_words[encoded.token_words >= 0].tolist()))}
        if text_pair is not None:
            result["text_pair"] = text_pair
        for description, weights in targets:
            token_attr = self._token_attributions(inputs, weights, alphas, coefficients, method)
            result["explanations"].append(self._explanation(description, weights, logits, token_attr, encoded,
                                                            method))
        return result

    # ------------------------------------------------------------------ targets

    def _label_targets(self, logits: np.ndarray, target: str | None):
        index = self.labels.index(target) if target is not None else int(np.argmax(logits))
        prediction: dict[str, Any] = {"logits": {l: float(v) for l, v in zip(self.labels, logits)}}
        if self.problem_type == "regression":
            prediction["value"] = float(logits[0])
        elif self.problem_type == "multi_label_classification":
            prediction["probabilities"] = {l: float(p) for l, p in zip(self.labels, 1 / (1 + np.exp(-logits)))}
        else:
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = int(np.argmax(logits))
            prediction.update(label=self.labels[best], score=float(probs[best]),
                              probabilities={l: float(p) for l, p in zip(self.labels, probs)})
        weights = np.zeros(len(self.labels), np.float32)
        weights[index] = 1.0
        return prediction, [({"label": self.labels[index], "given": target is not None}, weights)]

    def _entity_targets(self, text: str, encoded: EncodedInput, logits: np.ndarray, entity_type: str | None):
        previous = np.concatenate([[-1], encoded.token_words[:-1]])
        first_positions = np.flatnonzero((encoded.token_words >= 0) & (encoded.token_words != previous))
        word_position = np.empty(len(encoded.words), np.int64)
        word_position[encoded.token_words[first_positions]] = first_positions
        word_logits = logits[word_position]                              # [words, K]
        if self.crf is not None:
            tag_ids, scores = ner.decode_sentence(self.crf, word_logits)
        else:
            tag_ids = word_logits.argmax(-1)
            probs = np.exp(word_logits - word_logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            scores = probs[np.arange(len(tag_ids)), tag_ids]
        tags = [self.labels[i] for i in tag_ids]
        words = [w["text"] for w in encoded.words]
        offsets = [(w["start"], w["end"]) for w in encoded.words]
        entities = decode_entities(words, tags, [float(s) for s in scores], offsets, text=text)
        public = [{k: e[k] for k in ("type", "text", "start", "end", "start_word", "end_word", "score")}
                  for e in entities]
        targets = []
        for entity in public:
            if entity_type is not None and entity["type"] != entity_type:
                continue
            weights = np.zeros(logits.shape, np.float32)                 # [T, K]
            for word in range(entity["start_word"], entity["end_word"]):
                weights[word_position[word], tag_ids[word]] = 1.0
            description = {"entity": entity, "tags": tags[entity["start_word"]:entity["end_word"]]}
            targets.append((description, weights))
        return {"tags": tags, "entities": public}, targets

    def _span_targets(self, context: str, encoded: EncodedInput, logits: np.ndarray):
        """The answer `predict` gives for this window, and its score as the target (logits: [T, 2])."""
        offsets = np.where((encoded.segments == 1)[:, None], encoded.offsets, NO_OFFSET)
        example = QAExample("explain", "", context, [], False, "explain")
        span = decode_example(example, [SimpleNamespace(offsets=offsets)], [(logits[:, 0], logits[:, 1])],
                              n_best_size=20, max_answer_length=int(self.qa["max_answer_length"]),
                              version_2=bool(self.qa["version_2"]), null_threshold=float(self.qa["null_threshold"]))
        weights = np.zeros(logits.shape, np.float32)
        if span.text:
            in_context = offsets[:, 0] != NO_OFFSET
            first = int(np.flatnonzero(in_context & (offsets[:, 0] == span.start))[0])
            last = int(np.flatnonzero(in_context & (offsets[:, 1] == span.end))[-1])
            weights[first, 0] = weights[last, 1] = 1.0
            description = {"answer": span.text, "start": span.start, "end": span.end,
                           "start_token": first, "end_token": last}
        else:
            weights[0, 0] = weights[0, 1] = 1.0                           # the null answer's [CLS] score
            description = {"answer": "", "start": -1, "end": -1, "start_token": 0, "end_token": 0}
        prediction = {"answer": span.text, "start": span.start, "end": span.end, "score": span.score}
        return prediction, [(description, weights)]

    # ------------------------------------------------------------------ attributions

    def _token_attributions(self, inputs, weights, alphas, coefficients, method) -> np.ndarray:
        chunk = max(1, min(self.step_batch, len(alphas)))
        padded = -(-len(alphas) // chunk) * chunk                          # same chunk shape every call
        alphas = np.concatenate([alphas, np.zeros(padded - len(alphas))]).astype(np.float32)
        coefficients = np.concatenate([coefficients, np.zeros(padded - len(coefficients))]).astype(np.float32)
        weights = jnp.asarray(weights)
        grad = None
        for start in range(0, padded, chunk):
            g, x, base = self._attribute(*self._arrays, *inputs, weights, jnp.asarray(alphas[start:start + chunk]),
                                         jnp.asarray(coefficients[start:start + chunk]))
            g = np.asarray(g, np.float64)
            grad = g if grad is None else grad + g
        x, base = np.asarray(x, np.float64), np.asarray(base, np.float64)
        difference = x - base if method == "ig" else x
        return (difference * grad).sum(-1)

    def _explanation(self, description, weights, logits, token_attr, encoded, method) -> dict:
        values = (logits * weights).reshape(2, -1).sum(-1)               # F(baseline), F(input)
        word_attr = np.zeros(len(encoded.words))
        inside = encoded.token_words >= 0
        np.add.at(word_attr, encoded.token_words[inside], token_attr[inside])
        explanation = {"target": description, "value": float(values[1]),
                       "attribution_sum": float(token_attr.sum()),
                       "token_attributions": [float(a) for a in token_attr],
                       "word_attributions": [float(a) for a in word_attr]}
        if method == "ig":
            delta = values[1] - values[0]
            gap = abs(token_attr.sum() - delta)
            relative = float(gap / abs(delta)) if delta else None
            explanation.update(baseline_value=float(values[0]), completeness_gap=float(gap), relative_gap=relative)
            if relative is not None and relative > GAP_WARNING:
                explanation["warning"] = (f"attributions miss F(input) - F(baseline) by {relative:.1%}; raise the "
                                          "number of steps")
        return explanation


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
.text { line-height: 2.2em; font-size: 1.1em; }
.w, .t { padding: 0.15em 0.3em; margin: 0 0.1em; border-radius: 0.25em; }
.t { font-family: monospace; font-size: 0.85em; }
.pair { border-left: 3px solid #888; padding-left: 0.5em; }
.legend span { padding: 0.1em 0.5em; }
"""


def _colour(value: float, scale: float) -> str:
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    rgb = "214, 39, 40" if value > 0 else "31, 119, 180"
    return f"rgba({rgb}, {strength * 0.85:.3f})"


def _spans(items: Sequence[str], values: Sequence[float], css: str) -> str:
    scale = max((abs(v) for v in values), default=0.0)
    return " ".join(f'<span class="{css}" style="background: {_colour(v, scale)}" title="{v:+.4g}">'
                    f"{html.escape(item)}</span>" for item, v in zip(items, values))


def _describe(target: dict) -> str:
    if "answer" in target:
        if not target["answer"]:
            return "no answer (the null score at [CLS])"
        return f'answer "{target["answer"]}" (characters {target["start"]}-{target["end"]} of the context)'
    if "entity" in target:
        entity = target["entity"]
        return (f'entity "{entity["text"]}" ({entity["type"]}, characters {entity["start"]}-{entity["end"]}, '
                f'tags {" ".join(target["tags"])})')
    return f'label "{target["label"]}"' + (" (given)" if target.get("given") else " (predicted)")


def render_html(result: dict) -> str:
    """A self-contained page: one heat map of word attributions per explanation (red: for the target,
    blue: against; each row scaled to its own largest magnitude; hover for the value), plus sub-tokens."""
    esc = html.escape
    method = "integrated gradients" if result["method"] == "ig" else "gradient x input"
    detail = (f'{result["steps"]} steps ({result["rule"]}), baseline {result["baseline"]}'
              if result["method"] == "ig" else "no baseline")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>jaxft explain: {esc(result['text'][:60])}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc(method)}</h1>", f'<p class="meta">{esc(result["task"])}; {esc(detail)}</p>',
             '<p class="legend meta"><span style="background: rgba(214, 39, 40, 0.6)">for the target</span> '
             '<span style="background: rgba(31, 119, 180, 0.6)">against</span></p>']
    prediction = result["prediction"]
    if "label" in prediction:
        parts.append(f'<p>prediction: <b>{esc(prediction["label"])}</b> ({prediction["score"]:.3f})</p>')
    if "answer" in prediction:
        answer = prediction["answer"] or "(no answer)"
        parts.append(f'<p>answer: <b>{esc(answer)}</b> ({prediction["score"]:.3f})</p>')
    if not result["explanations"]:
        parts.append("<p>nothing to explain (no entity predicted"
                     f"{' of that type' if result['task'] == 'token-classification' else ''}).</p>")
    words = [w["text"] for w in result["words"]]
    segments = [w.get("segment", 0) for w in result["words"]]
    for explanation in result["explanations"]:
        parts.append(f"<h2>{esc(_describe(explanation['target']))}</h2>")
        numbers = f'target value {explanation["value"]:.4f}; attributions sum {explanation["attribution_sum"]:.4f}'
        if explanation.get("baseline_value") is not None:
            numbers += (f'; baseline value {explanation["baseline_value"]:.4f}; completeness gap '
                        f'{explanation["completeness_gap"]:.2e}')
        parts.append(f'<p class="meta">{esc(numbers)}</p>')
        values = explanation["word_attributions"]
        for segment in sorted(set(segments)):
            chosen = [i for i, s in enumerate(segments) if s == segment]
            css = "text pair" if segment else "text"
            parts.append(f'<p class="{css}">' + _spans([words[i] for i in chosen], [values[i] for i in chosen], "w")
                         + "</p>")
        parts.append('<p class="meta">sub-tokens: ' + _spans(result["tokens"], explanation["token_attributions"], "t")
                     + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- CLI

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main explain",
        description="Attribute a classification, NER or QA prediction to the input words (integrated gradients "
                    "or gradient x input); prints JSON, optionally writes an HTML heat map.")
    parser.add_argument("--model", required=True, help="exported model folder (e.g. runs/sentiment/export)")
    parser.add_argument("--text", required=True, help="the input text (NER: words as predict finds them; QA: the "
                                                      "question)")
    parser.add_argument("--text-pair", "--context", dest="text_pair", default=None,
                        help="second text of a sentence-pair classifier; QA: the context")
    parser.add_argument("--method", choices=METHODS, default="ig")
    parser.add_argument("--steps", type=int, default=50, help="IG quadrature points (default 50)")
    parser.add_argument("--rule", choices=RULES, default="riemann",
                        help="IG quadrature: midpoint Riemann sum (default) or Gauss-Legendre")
    parser.add_argument("--baseline", choices=BASELINES, default="pad",
                        help="IG baseline word embeddings: [PAD]'s (default) or zeros; special tokens kept")
    parser.add_argument("--target", default=None,
                        help="classification: label to explain (default: the predicted one); NER: only entities "
                             "of this type")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--html", default=None, help="also write a self-contained HTML heat map here")
    parser.add_argument("--output", default=None, help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        explainer = Explainer.from_pretrained(args.model, max_length=args.max_length)
        result = explainer.explain(args.text, text_pair=args.text_pair, method=args.method, steps=args.steps,
                                   rule=args.rule, baseline=args.baseline, target=args.target)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.html:
        Path(args.html).write_text(render_html(result), encoding="utf-8")
    return 0
