"""Attributions (jaxft/explain.py) on tiny random BERTs with the packaged MiniLM tokenizer.

Every parameter is perturbed (N(0, 0.1)) so that the targets depend clearly on the input words: at the
fresh 0.02-std init a logit moves by about 1e-6 between input and baseline, all float32 rounding.
Completeness tolerance: integrated gradients' attributions add up to F(input) - F(baseline) within 1e-3 of
|F(input) - F(baseline)| with 50 points, midpoint Riemann (the default) or Gauss-Legendre (measured here: about
4e-5 and 1e-6); F is recomputed through the model's own `inputs_embeds` call, not taken from the explainer.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxft.models as jm
from jaxft.explain import Explainer, path_points, render_html
from jaxft.main import main

SENTIMENT_LABELS = ["negative", "positive", "neutral"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXT = "The movie was not great , but the cast shone"
NER_TEXT = "Barack Obama visited Paris with Michelle yesterday"


def perturb(model, seed: int, scale: float = 0.1):
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf, key in zip(leaves, keys)]))
    return model


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_no_dropout):
    return jm.load_tokenizer(tiny_bert_no_dropout)


@pytest.fixture(scope="module")
def classifier(tiny_bert_no_dropout):
    model = jm.from_pretrained(tiny_bert_no_dropout, task=jm.SEQUENCE_CLASSIFICATION, id2label=SENTIMENT_LABELS)
    return perturb(model, 1)


@pytest.fixture(scope="module")
def tagger(tiny_bert_no_dropout):
    model = jm.from_pretrained(tiny_bert_no_dropout, task=jm.TOKEN_CLASSIFICATION, id2label=NER_LABELS)
    return perturb(model, 2)


@pytest.fixture(scope="module")
def explain_classifier(classifier, tokenizer):
    return Explainer(classifier, tokenizer)


@pytest.fixture(scope="module")
def explain_tagger(tagger, tokenizer):
    return Explainer(tagger, tokenizer)


def target_values(model, tokenizer, result, weights_fn, baseline="pad"):
    """F(input) and F(baseline) straight from the model (baseline: non-special word embeddings -> [PAD]'s)."""
    ids = jnp.asarray(tokenizer.convert_tokens_to_ids(result["tokens"]))[None]
    table = model.backbone.embeddings.word_embeddings.embedding[...]
    special = jnp.asarray(np.array(result["token_words"]) < 0)
    fill = table[tokenizer.pad_token_id] if baseline == "pad" else jnp.zeros(table.shape[1])
    base = jnp.where(special[:, None], table[ids[0]], fill)[None]
    at_input = np.asarray(model(ids, inputs_embeds=table[ids]), np.float64)[0]
    assert np.array_equal(at_input, np.asarray(model(ids), np.float64)[0])  # the hook changes nothing
    at_baseline = np.asarray(model(ids, inputs_embeds=base), np.float64)[0]
    return weights_fn(at_input), weights_fn(at_baseline)


def label_weights(labels, label):
    return lambda logits: float(logits[labels.index(label)])


# ---------------------------------------------------------------------------------------------- completeness

@pytest.mark.parametrize("rule,steps,tolerance", [("riemann", 50, 1e-3), ("gauss-legendre", 50, 1e-3)])
def test_ig_completeness_classification(explain_classifier, classifier, tokenizer, rule, steps, tolerance):
    result = explain_classifier.explain(TEXT, steps=steps, rule=rule)
    (explanation,) = result["explanations"]
    label = explanation["target"]["label"]
    assert label == result["prediction"]["label"] and explanation["target"]["given"] is False
    value, baseline_value = target_values(classifier, tokenizer, result, label_weights(SENTIMENT_LABELS, label))
    delta = value - baseline_value
    assert abs(delta) > 0.01, "the perturbed model should depend on its input words"
    total = sum(explanation["token_attributions"])
    assert abs(total - delta) <= tolerance * abs(delta)
    assert explanation["relative_gap"] <= tolerance and "warning" not in explanation
    assert explanation["value"] == pytest.approx(value, abs=1e-5)
    assert explanation["baseline_value"] == pytest.approx(baseline_value, abs=1e-5)
    # special tokens are the same in input and baseline: zero attribution; words keep the whole sum
    specials = [a for a, w in zip(explanation["token_attributions"], result["token_words"]) if w < 0]
    assert specials == [0.0, 0.0]
    assert sum(explanation["word_attributions"]) == pytest.approx(total, rel=1e-9, abs=1e-12)


def test_ig_completeness_zero_baseline_and_given_target(explain_classifier, classifier, tokenizer):
    result = explain_classifier.explain(TEXT, steps=50, baseline="zero", target="neutral")
    (explanation,) = result["explanations"]
    assert explanation["target"] == {"label": "neutral", "given": True}
    value, baseline_value = target_values(classifier, tokenizer, result, label_weights(SENTIMENT_LABELS, "neutral"),
                                          baseline="zero")
    assert abs(sum(explanation["token_attributions"]) - (value - baseline_value)) <= 1e-3 * abs(value - baseline_value)


def test_ig_completeness_per_ner_entity(explain_tagger, tagger, tokenizer):
    result = explain_tagger.explain(NER_TEXT, steps=50)
    entities = result["prediction"]["entities"]
    assert entities and len(result["explanations"]) == len(entities)
    tags = result["prediction"]["tags"]
    assert len(tags) == len(NER_TEXT.split())
    token_words = np.array(result["token_words"])
    first = [int(np.flatnonzero(token_words == w)[0]) for w in range(len(tags))]
    for entity, explanation in zip(entities, result["explanations"]):
        assert explanation["target"]["entity"] == entity
        span = range(entity["start_word"], entity["end_word"])
        assert explanation["target"]["tags"] == [tags[w] for w in span]
        assert NER_TEXT[entity["start"]:entity["end"]] == entity["text"]

        def entity_logit(logits, span=span):  # sum over the entity's words of its tag's logit at the first sub-token
            return float(sum(logits[first[w], NER_LABELS.index(tags[w])] for w in span))

        value, baseline_value = target_values(tagger, tokenizer, result, entity_logit)
        delta = value - baseline_value
        assert abs(delta) > 0.01
        assert abs(sum(explanation["token_attributions"]) - delta) <= 1e-3 * abs(delta)
        assert len(explanation["word_attributions"]) == len(tags)


def test_ner_target_type_filters_entities(explain_tagger):
    everything = explain_tagger.explain(NER_TEXT, steps=8)
    types = {e["type"] for e in everything["prediction"]["entities"]}
    chosen = sorted(types)[0]
    only = explain_tagger.explain(NER_TEXT, steps=8, target=chosen)
    assert [e["target"]["entity"]["type"] for e in only["explanations"]] == \
        [e["type"] for e in everything["prediction"]["entities"] if e["type"] == chosen]


# ---------------------------------------------------------------------------------------------- shapes, rules

def test_shapes_and_word_alignment(explain_classifier, tokenizer):
    result = explain_classifier.explain("Unbelievably dull... & <overlong>", steps=4)
    n_tokens = len(result["tokens"])
    assert result["tokens"][0] == "[CLS]" and result["tokens"][-1] == "[SEP]"
    assert len(result["token_words"]) == n_tokens
    assert [w["text"] for w in result["words"]] == "Unbelievably dull... & <overlong>".split()
    for word in result["words"]:
        assert "Unbelievably dull... & <overlong>"[word["start"]:word["end"]] == word["text"]
    assert sorted(set(result["token_words"]) - {-1}) == list(range(len(result["words"])))
    assert result["words_without_tokens"] == 0
    (explanation,) = result["explanations"]
    assert len(explanation["token_attributions"]) == n_tokens
    assert len(explanation["word_attributions"]) == len(result["words"])
    assert result["method"] == "ig" and result["steps"] == 4 and result["rule"] == "riemann"
    json.dumps(result)  # JSON-ready


def test_truncated_words_are_counted_and_get_nothing(classifier, tokenizer):
    result = Explainer(classifier, tokenizer, max_length=8).explain(TEXT, steps=4)
    assert len(result["tokens"]) == 8 and result["words_without_tokens"] == len(TEXT.split()) - 6
    assert result["explanations"][0]["word_attributions"][6:] == [0.0] * (len(TEXT.split()) - 6)


def test_pair_words_carry_their_segment(explain_classifier):
    result = explain_classifier.explain("a fine cast", text_pair="awful plot", steps=4)
    assert [(w["text"], w["segment"]) for w in result["words"]] == [
        ("a", 0), ("fine", 0), ("cast", 0), ("awful", 1), ("plot", 1)]
    assert result["tokens"].count("[SEP]") == 2


def test_path_points():
    for rule in ("gauss-legendre", "riemann"):
        alphas, weights = path_points(7, rule)
        assert alphas.shape == weights.shape == (7,)
        assert np.all((alphas > 0) & (alphas < 1)) and weights.sum() == pytest.approx(1.0)
    alphas, weights = path_points(5, "gauss-legendre")
    assert np.dot(weights, alphas ** 9) == pytest.approx(1 / 10)  # exact up to degree 2n - 1
    with pytest.raises(ValueError):
        path_points(0)


def test_rules_agree_and_chunking_changes_nothing(classifier, tokenizer, explain_classifier):
    gauss = explain_classifier.explain(TEXT, steps=50, rule="gauss-legendre")["explanations"][0]["token_attributions"]
    riemann = explain_classifier.explain(TEXT, steps=200, rule="riemann")["explanations"][0]["token_attributions"]
    scale = max(abs(a) for a in gauss)
    assert np.max(np.abs(np.array(gauss) - np.array(riemann))) <= 1e-2 * scale
    chunked = Explainer(classifier, tokenizer, step_batch=7).explain(TEXT, steps=50, rule="gauss-legendre")
    np.testing.assert_allclose(chunked["explanations"][0]["token_attributions"], gauss, rtol=1e-5, atol=1e-7)


def test_gradient_x_input_matches_direct_gradient(explain_classifier, classifier, tokenizer):
    result = explain_classifier.explain(TEXT, method="gxi")
    assert result["steps"] is None and result["baseline"] is None
    (explanation,) = result["explanations"]
    assert "completeness_gap" not in explanation
    label = SENTIMENT_LABELS.index(explanation["target"]["label"])
    ids = jnp.asarray(tokenizer.convert_tokens_to_ids(result["tokens"]))[None]
    x = classifier.backbone.embeddings.word_embeddings.embedding[...][ids]
    grad = jax.grad(lambda e: classifier(ids, inputs_embeds=e)[0, label])(x)
    np.testing.assert_allclose(explanation["token_attributions"], np.asarray((x * grad).sum(-1))[0],
                               rtol=1e-4, atol=1e-7)


def test_too_few_steps_are_flagged(explain_classifier):
    (explanation,) = explain_classifier.explain(TEXT, steps=1)["explanations"]
    assert explanation["relative_gap"] > 1e-2 and "raise the number of steps" in explanation["warning"]


def test_deterministic(explain_classifier, classifier, tokenizer):
    first = explain_classifier.explain(TEXT, steps=20)
    assert explain_classifier.explain(TEXT, steps=20) == first
    assert Explainer(classifier, tokenizer).explain(TEXT, steps=20) == first


# ---------------------------------------------------------------------------------------------- errors, HTML, CLI

def test_unknown_target_is_an_error(explain_classifier, explain_tagger):
    with pytest.raises(ValueError, match="unknown target label 'joyful'.*negative, positive, neutral"):
        explain_classifier.explain(TEXT, target="joyful")
    with pytest.raises(ValueError, match="unknown target entity type 'ORG'.*LOC, PER"):
        explain_tagger.explain(NER_TEXT, target="ORG")
    with pytest.raises(ValueError, match="method"):
        explain_classifier.explain(TEXT, method="lime")


def test_html_is_escaped_and_self_contained(explain_classifier):
    text = 'Loved it <script>alert("x")</script> & more'
    page = render_html(explain_classifier.explain(text, steps=4))
    assert "<script" not in page and "&lt;script&gt;" in page and "&amp;" in page
    assert "&quot;x&quot;" in page or "&#x27;" in page or "alert(&quot;" in page
    for external in ("src=", "href=", "<link", "url(", "http"):
        assert external not in page
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and page.rstrip().endswith("</html>")


def test_cli_classification_and_ner(tmp_path, classifier, tagger, tokenizer, capsys):
    jm.save_pretrained(classifier, tmp_path / "cls", tokenizer=tokenizer)
    jm.save_pretrained(tagger, tmp_path / "ner", tokenizer=tokenizer)
    html_path = tmp_path / "out.html"
    assert main(["jaxft", "explain", "--model", str(tmp_path / "cls"), "--text", TEXT, "--steps", "16",
                 "--html", str(html_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "sequence-classification" and result["steps"] == 16
    assert result["explanations"][0]["relative_gap"] < 1e-2
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert main(["jaxft", "explain", "--model", str(tmp_path / "ner"), "--text", NER_TEXT, "--method", "gxi",
                 "--output", str(tmp_path / "ner.json")]) == 0
    ner = json.loads((tmp_path / "ner.json").read_text())
    assert len(ner["explanations"]) == len(ner["prediction"]["entities"]) > 0
    capsys.readouterr()
    assert main(["jaxft", "explain", "--model", str(tmp_path / "cls"), "--text", TEXT, "--target", "joyful"]) == 2
    assert "unknown target label 'joyful'" in capsys.readouterr().err


QUESTION = "Where did Barack Obama go yesterday ?"
CONTEXT = "Barack Obama visited Paris with Michelle yesterday and flew home to Chicago on Monday ."


@pytest.fixture(scope="module")
def qa_model(tiny_bert_no_dropout):
    return perturb(jm.from_pretrained(tiny_bert_no_dropout, task=jm.QUESTION_ANSWERING), 3)


def test_ig_completeness_qa_answer_span_and_agreement_with_predict(qa_model, tokenizer, tmp_path, capsys):
    from jaxft.tasks.qa import QuestionAnswerer

    result = Explainer(qa_model, tokenizer, max_length=128).explain(QUESTION, text_pair=CONTEXT, steps=50)
    (explanation,) = result["explanations"]
    target = explanation["target"]
    assert target["answer"] and CONTEXT[target["start"]:target["end"]] == target["answer"]
    assert result["prediction"]["answer"] == target["answer"]
    # the same answer as `predict` on the exported model
    jm.save_pretrained(qa_model, tmp_path / "qa", tokenizer=tokenizer)
    predicted = QuestionAnswerer(tmp_path / "qa", max_length=128).predict_items([{"question": QUESTION,
                                                                                "context": CONTEXT}])[0]
    assert (predicted["answer"], predicted["start"], predicted["end"]) == (target["answer"], target["start"],
                                                                          target["end"])
    capsys.readouterr()
    assert main(["jaxft", "explain", "--model", str(tmp_path / "qa"), "--text", QUESTION, "--context", CONTEXT,
                 "--steps", "8", "--max-length", "128", "--html", str(tmp_path / "qa.html")]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["answer"] == target["answer"]
    assert f"answer: <b>{target['answer']}</b>" in (tmp_path / "qa.html").read_text()
    # F = start logit at the span's first sub-token + end logit at its last, straight from the model
    encoding = tokenizer(QUESTION, CONTEXT, truncation="only_second", max_length=128)
    ids = jnp.asarray(encoding["input_ids"])[None]
    types = jnp.asarray(encoding["token_type_ids"])[None]
    table = qa_model.backbone.embeddings.word_embeddings.embedding[...]
    special = jnp.asarray([s is None for s in encoding.sequence_ids()])
    base = jnp.where(special[:, None], table[ids[0]], table[tokenizer.pad_token_id])[None]

    def score(embeds):
        start, end = qa_model(ids, jnp.ones_like(ids), types, inputs_embeds=embeds)
        return float(start[0, target["start_token"]]) + float(end[0, target["end_token"]])

    value, baseline_value = score(table[ids]), score(base)
    assert explanation["value"] == pytest.approx(value, abs=1e-5)
    delta = value - baseline_value
    assert abs(delta) > 0.01
    assert abs(sum(explanation["token_attributions"]) - delta) <= 1e-3 * abs(delta)
    question_words = [w for w in result["words"] if w["segment"] == 0]
    assert [w["text"] for w in question_words] == QUESTION.split()


def test_qa_null_answer_and_errors(qa_model, tokenizer):
    # a v2 model whose threshold always prefers "no answer": the target is the [CLS] start + end score
    explainer = Explainer(qa_model, tokenizer, max_length=64, qa={"version_2": True, "null_threshold": -1e9})
    result = explainer.explain(QUESTION, text_pair=CONTEXT, steps=8)
    (explanation,) = result["explanations"]
    assert result["prediction"]["answer"] == "" and explanation["target"]["start_token"] == 0
    assert explanation["target"]["end_token"] == 0
    with pytest.raises(ValueError, match="context"):
        explainer.explain(QUESTION)
    with pytest.raises(ValueError, match="no target"):
        explainer.explain(QUESTION, text_pair=CONTEXT, target="Paris")
