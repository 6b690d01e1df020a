"""ner.crf=True: the CRF steps against the maths of models/crf.py on word positions, decoding across the
windows of a long sentence, and a tiny model trained end to end whose export (plain token-classification
folder + crf.safetensors) gives valid IOB2 tags through predict, serve, an ensemble and explain."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import tiny_ner_config
from jaxft.data.ner_encoding import (CHAIN_WORD, OPEN_AFTER, OPEN_BEFORE, chain_flags, encode_for_prediction,
                                     gather_word_predictions)
from jaxft.evaluate.ner_metrics import ner_metrics
from jaxft.models import crf as crf_maths
from jaxft.tasks import ner
from ner_synthetic import LABELS, is_valid_iob2, write_corpus

TOL = 1e-5


def random_crf(seed: int, labels=LABELS, scale: float = 1.0) -> crf_maths.CRF:
    rng = np.random.default_rng(seed)
    num = len(labels)
    return crf_maths.CRF.from_arrays(labels, {
        "transitions": (scale * rng.normal(size=(num, num))).astype(np.float32),
        "start_transitions": (scale * rng.normal(size=num)).astype(np.float32),
        "end_transitions": (scale * rng.normal(size=num)).astype(np.float32)})


# ---------------------------------------------------------------------------------------------- the steps

def test_loss_and_decode_read_the_chain_words_only():
    """crf_loss / crf_decode on token rows equal the CRF maths on the words' first sub-tokens gathered by
    hand, with zero start (end) potentials where a row's chain continues before (after) it."""
    rng = np.random.default_rng(0)
    model = random_crf(1)
    batch, steps, num = 3, 9, len(LABELS)
    logits = rng.normal(size=(batch, steps, num)).astype(np.float32)
    flags = np.zeros((batch, steps), np.int32)
    chains = [[1, 2, 5, 6], [2, 3, 4, 7], []]
    flags[0, chains[0]] = CHAIN_WORD
    flags[1, chains[1]] = CHAIN_WORD
    flags[1, 2] |= OPEN_BEFORE
    flags[1, 7] |= OPEN_AFTER
    labels = np.full((batch, steps), -100, np.int32)
    labels[0, chains[0]] = [LABELS.index(t) for t in ("B-PER", "I-PER", "O", "B-LOC")]
    labels[1, chains[1]] = [LABELS.index(t) for t in ("I-ORG", "O", "B-LOC", "I-LOC")]
    loss_sum, count = jax.jit(ner.crf_loss)(model, logits, labels, flags)
    decoded = np.asarray(jax.jit(ner.crf_decode)(logits, flags, *ner.chain_potentials(model, flags)))
    transitions, start, end = model.potentials()
    want_loss = 0.0
    for row, positions in enumerate(chains):
        if not positions:
            assert (decoded[row, :, 0] == -1).all() and not decoded[row, :, 1].any()
            continue
        emissions = logits[row, positions][None]
        mask = np.ones((1, len(positions)), bool)
        row_start = jnp.zeros_like(start) if row == 1 else start
        row_end = jnp.zeros_like(end) if row == 1 else end
        want_loss += float(crf_maths.negative_log_likelihood(emissions, labels[row, positions][None], mask,
                                                             transitions, row_start, row_end)[0])
        tags, _ = crf_maths.viterbi_decode(emissions, mask, transitions, row_start, row_end)
        probabilities = crf_maths.marginals(emissions, mask, transitions, row_start, row_end)[0]
        tags = np.asarray(tags[0])
        assert decoded[row, positions, 0].tolist() == tags.tolist()
        np.testing.assert_allclose(decoded[row, positions, 1], np.asarray(probabilities)[np.arange(len(tags)), tags],
                                   rtol=0, atol=TOL)
        others = np.setdiff1d(np.arange(steps), positions)
        assert (decoded[row, others, 0] == -1).all()
    assert int(count) == 8
    np.testing.assert_allclose(float(loss_sum), want_loss, rtol=1e-5)
    # the open row may start inside an entity (I-ORG after the cut): a finite loss, no IOB2 start penalty
    assert float(loss_sum) < 1e3


def test_long_sentences_decode_window_by_window_into_valid_iob2(tmp_path):
    """Each window is decoded exactly over its words (open at the cuts); every word is read from the window
    with the most context; where two windows' paths meet an I- tag that would not continue is read as B-."""
    from jaxft.models import load_tokenizer
    from jaxft.data.readers import packaged_minilm_path

    tokenizer = load_tokenizer(packaged_minilm_path())
    rng = np.random.default_rng(2)
    sentences = [[f"w{i % 50}" for i in range(n)] for n in (5, 150, 300)]
    windows = encode_for_prediction(tokenizer, sentences, 32)
    assert len(windows) > 20
    model = random_crf(3, scale=2.0)
    word_emissions = [rng.normal(scale=3.0, size=(len(s), len(LABELS))).astype(np.float32) for s in sentences]
    decode = jax.jit(lambda logits, flags: ner.crf_decode(logits, flags, *ner.chain_potentials(model, flags)))
    logits = np.zeros((len(windows), 32, len(LABELS)), np.float32)  # each word's emissions at its sub-tokens
    flags = np.zeros((len(windows), 32), np.int32)
    for row, window in enumerate(windows):
        inside = np.flatnonzero(window.word_ids >= 0)
        logits[row, inside] = word_emissions[window.sentence_index][window.word_ids[inside]]
        flags[row, :len(window.input_ids)] = chain_flags(window, trained_only=False)
    outputs = list(np.asarray(decode(logits, flags)))
    gathered = gather_word_predictions(windows, outputs, [len(s) for s in sentences])
    full = [np.asarray(crf_maths.viterbi_decode(e[None], np.ones((1, len(e)), bool), *model.potentials())[0][0])
            for e in word_emissions]
    for tags, best in zip(gathered, full):
        names = ner.repair_iob2([LABELS[int(t)] for t in tags[:, 0]])
        assert is_valid_iob2(names)
        assert (tags[:, 1] > 0).all() and (tags[:, 1] <= 1 + 1e-6).all()
    assert gathered[0][:, 0].astype(int).tolist() == full[0].tolist()  # one window: the exact Viterbi path
    agreement = np.mean(np.concatenate([g[:, 0].astype(int) == f for g, f in zip(gathered[1:], full[1:])]))
    assert agreement > 0.9, agreement  # windows see most of each word's context


def test_config_refuses_what_a_crf_cannot_train():
    from jaxft.config import ConfigError, base_config, validate

    for key, value, words in (("data.packing", True, "data.packing"),
                              ("ner.label_all_subtokens", True, "ner.label_all_subtokens"),
                              ("train.label_smoothing", 0.1, "train.label_smoothing"),
                              ("ner.class_weights", "balanced", "ner.class_weights")):
        config = base_config()
        config.ner.crf = True
        group, name = key.split(".")
        config[group][name] = value
        with pytest.raises(ConfigError, match=f"ner.crf=True does not go with {words}"):
            validate(config)
    config = base_config()
    config.ner.crf_lr_ratio = 0.0
    with pytest.raises(ConfigError, match="'ner.crf_lr_ratio' must be > 0"):
        validate(config)


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    from jaxft.tasks.run import run

    root = tmp_path_factory.mktemp("ner-crf")
    data = write_corpus(root / "synthetic.conll", 300)
    config = tiny_ner_config(tiny_bert, data, **{"ner.crf": True, "data.packing": False, "train.num_epochs": 4,
                                                 "data.max_length": 32, "optim.learning_rate": 3e-3})
    results = run(config, root / "run")
    return root / "run", results, config


def test_export_is_a_plain_token_classification_folder_plus_the_crf(trained):
    import transformers

    workdir, _, _ = trained
    export = workdir / "export"
    assert json.loads((export / "jaxft_task.json").read_text())["crf"] is True
    assert not [key for key in load_file(export / "model.safetensors") if "crf" in key]
    model, info = transformers.AutoModelForTokenClassification.from_pretrained(export, output_loading_info=True)
    assert type(model).__name__ == "BertForTokenClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    arrays = load_file(export / "crf.safetensors")
    assert {k: v.shape for k, v in arrays.items()} == {"transitions": (7, 7), "start_transitions": (7,),
                                                      "end_transitions": (7,)}
    assert np.abs(arrays["transitions"]).max() > 0.1  # learned, not the zero initialisation
    crf = ner.read_crf_file(export, LABELS)
    for key, value in crf_maths.transition_arrays(crf).items():
        np.testing.assert_array_equal(value, arrays[key])
    with pytest.raises(Exception, match="written for the labels"):
        ner.read_crf_file(export, list(reversed(LABELS)))


def test_predictions_are_valid_iob2_and_score_as_the_run(trained):
    from jaxft.predict import load_predictor

    workdir, results, config = trained
    assert results["test"]["f1"] >= 0.9 and results["dev"]["f1"] >= 0.9
    assert results["truncation"]["truncated_sentences"] == 0
    predictor = load_predictor(workdir / "export")
    assert predictor.crf
    test = ner.read_splits(config.data).test
    predictions = predictor.predict_words([s.tokens for s in test])
    assert all(is_valid_iob2(p.tags) for p in predictions)
    assert all(0 < score <= 1 + 1e-6 for p in predictions for score in p.scores)
    f1 = ner_metrics([s.tags for s in test], [p.tags for p in predictions])["f1"]
    assert f1 == pytest.approx(results["test"]["f1"], abs=1e-12)  # the export decodes as the run did
    with pytest.raises(ValueError, match="decodes whole sentences with a CRF"):
        predictor.predict_texts(["john visited paris"], aggregation="average")


def test_predict_command_and_serve_give_valid_iob2_entities(trained, tmp_path):
    import io

    from starlette.testclient import TestClient

    from jaxft.predict import load_predictor, run_predict
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits

    workdir, _, _ = trained
    export = workdir / "export"
    texts = ["john smith visited new york today", "the office of stark industries now",
             "we met anna garcia in buenos aires"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    out = io.StringIO()
    assert run_predict([export], str(tmp_path / "in.txt"), out) == 3
    predicted = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [[(e["type"], e["text"]) for e in p["entities"]] for p in predicted] == [
        [("PER", "john smith"), ("LOC", "new york")], [("ORG", "stark industries")],
        [("PER", "anna garcia"), ("LOC", "buenos aires")]]
    conll = tmp_path / "in.conll"
    conll.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(t.split()) for t in texts) + "\n")
    out = io.StringIO()
    assert run_predict([export], str(conll), out, input_format="conll") == 3
    assert [json.loads(line)["entities"] for line in out.getvalue().splitlines()] == [p["entities"] for p in predicted]

    predictor = load_predictor([export], batch_sizes=[1, 4], length_buckets=[16, 32])
    state = ServeState(predictor, limits=Limits())
    with TestClient(build_app(state)) as client:
        state.ready.wait(120)
        answer = client.post("/predict", json={"texts": texts})
    assert answer.status_code == 200
    served = answer.json()["predictions"]
    assert [[(e["type"], e["start"], e["end"]) for e in p["entities"]] for p in served] == \
           [[(e["type"], e["start"], e["end"]) for e in p["entities"]] for p in predicted]
    words = [p.tags for p in predictor.predict_words([t.split() for t in texts])]
    assert all(is_valid_iob2(tags) for tags in words)


def test_ensemble_and_explain_decode_with_the_crf(trained):
    from jaxft.explain import Explainer
    from jaxft.predict import load_predictor

    workdir, _, _ = trained
    export = workdir / "export"
    sentences = [["john", "smith", "works", "for", "umbrella", "corp", "in", "paris"], ["omar", "visited", "rome"]]
    single = load_predictor(export).predict_words(sentences)
    double = load_predictor([export, export]).predict_words(sentences)  # the mean of two equal CRFs is that CRF
    assert [p.tags for p in double] == [p.tags for p in single]
    np.testing.assert_allclose([s for p in double for s in p.scores], [s for p in single for s in p.scores],
                               atol=1e-5)
    explained = Explainer.from_pretrained(export).explain(" ".join(sentences[0]), method="gxi")
    assert explained["prediction"]["tags"] == single[0].tags
    assert [e["target"]["entity"]["type"] for e in explained["explanations"]] == ["PER", "ORG", "LOC"]


def test_the_crf_recipe_keeps_length_buckets_where_the_ner_default_packs():
    import jaxft
    from jaxft.config import ConfigError, validate

    assert jaxft.recipe("ner").data.packing and not jaxft.recipe("ner_crf").data.packing
    validate(jaxft.recipe("ner_crf"))
    with pytest.raises(ConfigError, match="configs/ner_crf.py sets data.packing=False"):
        validate(jaxft.recipe("ner", {"ner.crf": True}))
