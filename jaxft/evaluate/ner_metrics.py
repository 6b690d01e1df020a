"""Entity-level NER metrics (seqeval, conlleval reading) and IOB2 decoding into entities."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from seqeval.metrics import accuracy_score, classification_report
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.exceptions import UndefinedMetricWarning  # what seqeval warns with

# Keys of seqeval's dict report that are averages, not entity types.
_AVERAGE_KEYS = ("micro avg", "macro avg", "weighted avg")


def _plain_scores(seqeval_row: dict) -> dict:
    """seqeval's numpy-typed row -> plain floats/int, with 'f1-score' renamed 'f1'."""
    return {
        "precision": float(seqeval_row["precision"]),
        "recall": float(seqeval_row["recall"]),
        "f1": float(seqeval_row["f1-score"]),
        "support": int(seqeval_row["support"]),
    }


def _token_accuracy(true_tags: list[list[str]], pred_tags: list[list[str]]) -> float:
    if not any(true_tags):
        return 0.0
    return float(accuracy_score(true_tags, pred_tags))


def _check_same_shape(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sequences but {len(pred_tags)} predicted sequences")
    for index, (true_seq, pred_seq) in enumerate(zip(true_tags, pred_tags)):
        if len(true_seq) != len(pred_seq):
            raise ValueError(
                f"sequence {index}: {len(true_seq)} true tags but {len(pred_seq)} predicted tags"
            )


def ner_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Micro precision/recall/F1 over entities, token accuracy, and per-type scores.

    Entities are read as seqeval's default mode (conlleval) reads them. Values are plain
    Python floats/ints. With no entities at all (true or predicted) scores are 0.0.
    """
    true_tags = [list(seq) for seq in true_tags]
    pred_tags = [list(seq) for seq in pred_tags]
    _check_same_shape(true_tags, pred_tags)
    result = {"precision": 0.0, "recall": 0.0, "f1": 0.0,
              "accuracy": _token_accuracy(true_tags, pred_tags), "per_type": {}}
    if not get_entities(true_tags) and not get_entities(pred_tags):
        return result  # seqeval would average over an empty set of types
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    micro = _plain_scores(report["micro avg"])
    result.update(precision=micro["precision"], recall=micro["recall"], f1=micro["f1"])
    result["per_type"] = {
        entity_type: _plain_scores(row)
        for entity_type, row in report.items()
        if entity_type not in _AVERAGE_KEYS
    }
    return result


def word_char_offsets(text: str, words: list[str]) -> list[tuple[int, int]]:
    """(start, end) character offsets of each word in `text`, searching left to right."""
    offsets = []
    search_from = 0
    for index, word in enumerate(words):
        start = text.find(word, search_from)
        if not word or start < 0:
            raise ValueError(
                f"word {index} {word!r} not found in the text after character {search_from}"
            )
        end = start + len(word)
        offsets.append((start, end))
        search_from = end
    return offsets


def _entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start_word, end_word exclusive), read the way seqeval's default mode reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "X seems not to be NE tag"
        chunks = get_entities(list(tags))
    return [(entity_type, first, last + 1) for entity_type, first, last in chunks]


def decode_entities(
    words: list[str],
    tags: list[str],
    scores: list[float] | None = None,
    char_offsets: list[tuple[int, int]] | None = None,
    text: str | None = None,
) -> list[dict]:
    """IOB2 word tags -> entity dicts.

    Each entity has "type", "text", "start_word", "end_word" (exclusive); "start"/"end"
    (character offsets) when `char_offsets` are given; "score" (mean word score) when
    `scores` are given. "text" is the slice of `text` when both `text` and `char_offsets`
    are given, else the words joined by a single space.
    An I- tag that does not continue an entity of its type starts a new entity.
    """
    for name, values in (("tags", tags), ("scores", scores), ("char_offsets", char_offsets)):
        if values is not None and len(values) != len(words):
            raise ValueError(f"{len(words)} words but {len(values)} {name}")
    entities = []
    for entity_type, start_word, end_word in _entity_spans(tags):
        entity = {"type": entity_type, "start_word": start_word, "end_word": end_word}
        if char_offsets is not None:
            entity["start"] = int(char_offsets[start_word][0])
            entity["end"] = int(char_offsets[end_word - 1][1])
        if text is not None and char_offsets is not None:
            entity["text"] = text[entity["start"]:entity["end"]]
        else:
            entity["text"] = " ".join(words[start_word:end_word])
        if scores is not None:
            word_scores = scores[start_word:end_word]
            entity["score"] = float(sum(word_scores) / len(word_scores))
        entities.append(entity)
    return entities
