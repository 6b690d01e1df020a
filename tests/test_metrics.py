"""NER metrics against hand-computed values, and IOB2 -> entity decoding."""

import json
import warnings

import pytest

from jaxft.evaluate.ner_metrics import decode_entities, ner_metrics, word_char_offsets


def assert_scores(scores, precision, recall, f1, support=None):
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(f1)
    if support is not None:
        assert scores["support"] == support


# ----------------------------------------------------------------------------- ner_metrics

def test_micro_and_per_type_scores_by_hand():
    # true: PER(0-1), LOC(3)            -> 2 entities
    # pred: PER(0-1), ORG(2), PER(3)    -> 3 entities, 1 correct (PER 0-1)
    # micro P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    # PER: 1 true, 2 predicted, 1 correct -> P 1/2, R 1, F1 2/3, support 1
    # LOC: 1 true, 0 predicted -> 0, 0, 0, support 1; ORG: 0 true, 1 predicted -> 0, 0, 0, support 0
    # token accuracy: tokens 0,1 right, 2,3 wrong -> 2/4
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "B-ORG", "B-PER"]]
    result = ner_metrics(true, pred)
    assert_scores(result, 1 / 3, 1 / 2, 0.4)
    assert result["accuracy"] == pytest.approx(0.5)
    assert set(result["per_type"]) == {"PER", "LOC", "ORG"}
    assert_scores(result["per_type"]["PER"], 1 / 2, 1.0, 2 / 3, support=1)
    assert_scores(result["per_type"]["LOC"], 0.0, 0.0, 0.0, support=1)
    assert_scores(result["per_type"]["ORG"], 0.0, 0.0, 0.0, support=0)


def test_boundary_error_counts_as_wrong_over_several_sentences():
    # true: LOC(0-1) | PER(0), PER(2) -> 3;  pred: LOC(0) | PER(0), PER(2) -> 3; 2 correct (the PERs)
    # micro P = R = F1 = 2/3; LOC all 0 (support 1); PER all 1 (support 2); accuracy 5/6
    true = [["B-LOC", "I-LOC", "O"], ["B-PER", "O", "B-PER"]]
    pred = [["B-LOC", "O", "O"], ["B-PER", "O", "B-PER"]]
    result = ner_metrics(true, pred)
    assert_scores(result, 2 / 3, 2 / 3, 2 / 3)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert_scores(result["per_type"]["LOC"], 0.0, 0.0, 0.0, support=1)
    assert_scores(result["per_type"]["PER"], 1.0, 1.0, 1.0, support=2)


def test_entities_do_not_run_across_sentences():
    # The I-PER opening sentence 2 starts its own entity: 2 PER entities, not 1.
    tags = [["O", "B-PER"], ["I-PER", "O"]]
    result = ner_metrics(tags, tags)
    assert result["per_type"]["PER"]["support"] == 2
    assert result["f1"] == 1.0


def test_i_tag_without_b_is_read_as_entity_start():
    # Default (conlleval) reading: I-PER I-PER is the entity PER(0-1), so it matches B-PER I-PER.
    result = ner_metrics([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert_scores(result, 1.0, 1.0, 1.0)
    assert_scores(result["per_type"]["PER"], 1.0, 1.0, 1.0, support=1)


def test_no_entities_anywhere_gives_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ner_metrics([["O", "O"], ["O"]], [["O", "O"], ["O"]])
    assert result == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0,
                      "per_type": {}}


def test_no_predicted_entities_gives_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ner_metrics([["B-PER", "O", "O"]], [["O", "O", "O"]])
    assert_scores(result, 0.0, 0.0, 0.0)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["per_type"] == {"PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                          "support": 1}}


def test_no_true_entities_gives_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ner_metrics([["O", "O"]], [["B-LOC", "O"]])
    assert_scores(result, 0.0, 0.0, 0.0)
    assert result["per_type"]["LOC"]["support"] == 0


def test_empty_input_gives_zeros():
    assert ner_metrics([], []) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "accuracy": 0.0, "per_type": {}}


def test_result_is_plain_python_and_json_serialisable():
    result = ner_metrics([["B-PER", "O"]], [["B-PER", "B-LOC"]])
    for key in ("precision", "recall", "f1", "accuracy"):
        assert type(result[key]) is float
    per = result["per_type"]["PER"]
    assert [type(per[k]) for k in ("precision", "recall", "f1", "support")] == [float, float, float, int]
    assert json.loads(json.dumps(result)) == result


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="sequence 0"):
        ner_metrics([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 true sequences but 2 predicted"):
        ner_metrics([["O"]], [["O"], ["O"]])


# ----------------------------------------------------------------------------- word_char_offsets

# Unicode, a double space, and "Zoë" three times: each must be found after the previous word.
TEXT = "Zoë met  Zoë in São  Paulo and Zoë"
WORDS = TEXT.split()


def test_word_char_offsets_with_unicode_and_repeated_words():
    offsets = word_char_offsets(TEXT, WORDS)
    assert offsets == [(0, 3), (4, 7), (9, 12), (13, 15), (16, 19), (21, 26), (27, 30), (31, 34)]
    assert [TEXT[start:end] for start, end in offsets] == WORDS


def test_word_char_offsets_names_the_missing_word():
    with pytest.raises(ValueError, match="'there'"):
        word_char_offsets("hello world", ["hello", "there"])
    # Words must appear in order: "hello" is not found after "world".
    with pytest.raises(ValueError, match="'hello'"):
        word_char_offsets("hello world", ["world", "hello"])


# ----------------------------------------------------------------------------- decode_entities

def test_decode_entities_with_offsets_text_and_scores():
    tags = ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "O", "I-PER"]
    scores = [0.9, 0.1, 0.8, 0.1, 0.7, 0.5, 0.1, 0.6]
    entities = decode_entities(WORDS, tags, scores=scores,
                               char_offsets=word_char_offsets(TEXT, WORDS), text=TEXT)
    assert entities == [
        {"type": "PER", "text": "Zoë", "start_word": 0, "end_word": 1, "start": 0, "end": 3,
         "score": pytest.approx(0.9)},
        {"type": "PER", "text": "Zoë", "start_word": 2, "end_word": 3, "start": 9, "end": 12,
         "score": pytest.approx(0.8)},
        # The original slice keeps the double space; score is the mean (0.7 + 0.5) / 2.
        {"type": "LOC", "text": "São  Paulo", "start_word": 4, "end_word": 6, "start": 16,
         "end": 26, "score": pytest.approx(0.6)},
        # I-PER after O starts a new entity.
        {"type": "PER", "text": "Zoë", "start_word": 7, "end_word": 8, "start": 31, "end": 34,
         "score": pytest.approx(0.6)},
    ]


def test_decode_entities_without_text_joins_words():
    entities = decode_entities(["in", "New", "York"], ["O", "B-LOC", "I-LOC"])
    assert entities == [{"type": "LOC", "text": "New York", "start_word": 1, "end_word": 3}]


def test_decode_entities_offsets_without_text_keep_offsets():
    entities = decode_entities(WORDS[4:6], ["B-LOC", "I-LOC"], char_offsets=[(16, 19), (21, 26)])
    assert entities == [{"type": "LOC", "text": "São Paulo", "start_word": 0, "end_word": 2,
                         "start": 16, "end": 26}]


def test_decode_entities_type_change_and_repeated_b_split_entities():
    words = ["a", "b", "c", "d", "e"]
    tags = ["B-PER", "I-LOC", "I-LOC", "B-ORG", "B-ORG"]
    spans = [(e["type"], e["start_word"], e["end_word"]) for e in decode_entities(words, tags)]
    # I-LOC after B-PER starts LOC; the second B-ORG starts a second ORG.
    assert spans == [("PER", 0, 1), ("LOC", 1, 3), ("ORG", 3, 4), ("ORG", 4, 5)]


def test_decode_entities_matches_what_ner_metrics_counts():
    tags = ["I-PER", "I-PER", "B-LOC", "I-PER", "O", "I-LOC"]
    entities = decode_entities(list("abcdef"), tags)
    per_type_support = ner_metrics([tags], [tags])["per_type"]
    assert len(entities) == sum(row["support"] for row in per_type_support.values()) == 4


def test_decode_entities_no_entities_and_length_check():
    assert decode_entities(["a", "b"], ["O", "O"]) == []
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        decode_entities(["a", "b"], ["O"])
