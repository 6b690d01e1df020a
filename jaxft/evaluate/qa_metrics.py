"""SQuAD exact match and F1 with the official normalisation (v1.1 and v2.0 evaluation scripts).

Answers are lower-cased, stripped of punctuation and of the articles a/an/the, and whitespace is collapsed.
A question scores the best over its gold answers. Unanswerable questions (SQuAD v2) have the gold answer "":
only an empty prediction scores 1. Scores are fractions in [0, 1] (the official scripts print percentages).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The v2 script's rule: answers that normalise to nothing are dropped; none left means unanswerable."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def best_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    golds = gold_answers(answers)
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """EM and F1 (fractions) over `references` (question id -> gold answer texts; [] when unanswerable).

    With unanswerable questions present, also the scores on answerable ("has_ans_*") and unanswerable
    ("no_ans_*") questions. A question without a prediction scores 0.
    """
    if not references:
        return {"exact_match": float("nan"), "f1": float("nan"), "questions": 0}
    em, f = {}, {}
    for qid, answers in references.items():
        em[qid], f[qid] = best_scores(predictions[qid], answers) if qid in predictions else (0.0, 0.0)
    result = {"exact_match": float(np.mean(list(em.values()))), "f1": float(np.mean(list(f.values()))),
              "questions": len(references)}
    has_answer = [qid for qid, answers in references.items() if any(normalize_answer(a) for a in answers)]
    answerable = set(has_answer)
    no_answer = [qid for qid in references if qid not in answerable]
    if no_answer:
        for name, ids in (("has_ans", has_answer), ("no_ans", no_answer)):
            result[f"{name}_exact_match"] = float(np.mean([em[q] for q in ids])) if ids else float("nan")
            result[f"{name}_f1"] = float(np.mean([f[q] for q in ids])) if ids else float("nan")
            result[f"{name}_questions"] = len(ids)
    return result


def best_null_threshold(answer_scores: Mapping[str, float], null_scores: Mapping[str, float],
                        score_diffs: Mapping[str, float]) -> tuple[float, float]:
    """The SQuAD v2 script's threshold search.

    answer_scores: per question, the score (EM or F1) of its best non-empty span; null_scores: the score of
    answering "" (1 for unanswerable questions, else 0); score_diffs: null score minus best span score, where
    a question is answered "" when its diff > threshold. Returns (best mean score, threshold).
    """
    ids = list(answer_scores)
    if not ids:
        return float("nan"), 0.0
    diffs = np.array([score_diffs[q] for q in ids], dtype=np.float64)
    order = np.argsort(diffs, kind="stable")
    gain = np.array([answer_scores[q] - null_scores[q] for q in ids])[order]
    base = sum(null_scores[q] for q in ids)  # threshold below every diff: every answer is ""
    totals = base + np.cumsum(gain)
    sorted_diffs = diffs[order]
    reachable = np.append(sorted_diffs[1:] != sorted_diffs[:-1], True)  # a threshold answers all tied diffs
    totals = np.where(reachable, totals, -np.inf)
    best = int(np.argmax(totals))
    if totals[best] <= base:
        return base / len(ids), float(diffs[order[0]] - 1.0)
    return float(totals[best] / len(ids)), float(diffs[order[best]])
