"""Raw-text NER as the Hugging Face pipeline does it: words from the tokenizer's pre-tokenizer with character
offsets into the text (punctuation is its own word), and sub-token scores aggregated per word (first,
average, max) - checked against transformers.pipeline("token-classification") on the same export."""

import numpy as np
import pytest

from jaxft.data.ner_encoding import NO_WORD, encode_texts_for_prediction, gather_word_predictions
from jaxft.tasks.ner import TokenClassifier
from tiny_exports import NER_LABELS, make_export

TEXTS = [
    "John lives in Paris.",
    "Hello, world! Mr. Smith's dog (Rex) ran to New-York on 3/4/2021...",
    "Tokenization of unbelievably long words: antidisestablishmentarianism, Washington!",
    "Zoë met Zürich's naïve café owner",
    "  leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_bert_no_dropout):
    return make_export(tmp_path_factory.mktemp("ner-text") / "ner", tiny_bert_no_dropout, "token-classification",
                       NER_LABELS, seed=5, head_scale=1.0)


@pytest.fixture(scope="module")
def classifier(export):
    return TokenClassifier(export, max_length=128)


def test_words_come_from_the_pre_tokenizer_with_offsets(classifier):
    texts = ["John lives in Paris.", "", "a 😀 b😀 (c)"]
    windows, spans = encode_texts_for_prediction(classifier.tokenizer, texts, 128)
    assert [texts[0][a:b] for a, b in spans[0]] == ["John", "lives", "in", "Paris", "."]
    assert spans[0][3] == (14, 19)
    assert spans[1] == [] and len(windows) == 3
    # a word the vocabulary cannot spell is one [UNK] sub-token: a word of its own, as in the HF pipeline
    assert [texts[2][a:b] for a, b in spans[2]] == ["a", "😀", "b😀", "(", "c", ")"]
    for window, text_spans in zip(windows, spans):
        assert sorted(set(window.word_ids[window.word_ids != NO_WORD].tolist())) == list(range(len(text_spans)))


def test_long_texts_are_windowed_and_every_word_is_read_once(classifier):
    text = " ".join(["Alice visited Rome, then Tokyo."] * 40)
    windows, (spans,) = encode_texts_for_prediction(classifier.tokenizer, [text], 32)
    assert len(windows) > 10 and all(len(w.input_ids) <= 32 for w in windows)
    scores = [np.where(w.word_ids == NO_WORD, -1, w.word_ids).astype(np.float32)[:, None] for w in windows]
    (gathered,) = gather_word_predictions(windows, scores, [len(spans)])
    assert gathered[:, 0].tolist() == list(range(len(spans))) and len(spans) == 40 * 7


def test_aggregations_of_sub_token_scores():
    # one window, two words: word 0 has sub-tokens at positions 1-3, word 1 at position 4
    from jaxft.data.ner_encoding import Encoded

    window = Encoded(np.arange(6, dtype=np.int32), np.full(6, -100), np.array([-1, 0, 0, 0, 1, -1]), 0, 0, 2)
    probs = np.array([[.9, .05, .05], [.5, .4, .1], [.1, .8, .1], [.3, .3, .4], [.2, .2, .6], [.9, .05, .05]])
    scores = [np.log(probs).astype(np.float32)]
    first, average, best = (gather_word_predictions([window], scores, [2], how)[0] for how in ("first", "average",
                                                                                               "max"))
    np.testing.assert_allclose(np.exp(first), probs[[1, 4]], rtol=1e-6)
    np.testing.assert_allclose(np.exp(average[0]), probs[1:4].mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.exp(best[0]), probs[2], rtol=1e-6)  # 0.8 is the highest sub-token probability
    np.testing.assert_allclose(np.exp(average[1]), probs[4], rtol=1e-6)
    with pytest.raises(ValueError, match="aggregation must be one of first, average, max"):
        gather_word_predictions([window], scores, [2], "mean")


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_entities_match_the_transformers_pipeline(export, classifier, aggregation):
    import transformers

    reference = transformers.pipeline("token-classification", model=str(export), aggregation_strategy=aggregation,
                                      device="cpu")
    ours = classifier.predict_texts(TEXTS, aggregation=aggregation)
    found = 0
    for text, result, expected in zip(TEXTS, ours, reference(TEXTS)):
        assert result["text"] == text
        got = [(e["type"], e["start"], e["end"]) for e in result["entities"]]
        want = [(e["entity_group"], int(e["start"]), int(e["end"])) for e in expected]
        assert got == want, text
        assert [e["score"] for e in result["entities"]] == pytest.approx([float(e["score"]) for e in expected],
                                                                         abs=1e-5)
        assert all(e["text"] == text[e["start"]:e["end"]] for e in result["entities"])
        found += len(got)
    assert found >= 5  # the decisive random head tags entities: the comparison is not between empty lists


def test_unknown_aggregation_is_refused(classifier):
    with pytest.raises(ValueError, match="aggregation must be one of first, average, max; got 'simple'"):
        classifier.predict_texts(["a"], aggregation="simple")
