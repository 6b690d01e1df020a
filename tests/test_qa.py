"""Extractive QA: SQuAD readers, windows and offsets (unicode, answers cut by a window), n-best decoding,
EM/F1 on hand-made cases, and a tiny model that learns a generated SQuAD file (v1 and v2) and predicts."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import recipe_config
from jaxft.data.errors import DataError
from jaxft.data.text_readers import QAExample, read_squad
from jaxft.evaluate.qa_metrics import best_null_threshold, exact_match, f1, normalize_answer, squad_metrics
from jaxft.tasks.run import run
from jaxft.models import load_tokenizer
from jaxft.tasks.qa import (NO_OFFSET, QAFeature, answer_token_span, decode_example, encode_windows,
                            split_by_context)

REPO = Path(__file__).parent.parent

ANSWERS = ["crème brûlée", "naïve café", "zürich station", "señor garcía", "smörgåsbord", "tokyo 東京 tower",
           "rocket 🚀 fuel", "blue whale", "old oak tree", "silver coin", "deep ocean trench", "piano sonata"]
FILLER = "it was a quiet day in the small town and nobody expected anything unusual to happen there".split()


def make_squad(path: Path, n: int, seed: int = 0, impossible_every: int = 0) -> Path:
    """SQuAD v1 (or v2 with every k-th question unanswerable): filler sentences around "they found the X here.",
    X a phrase with accents, CJK or an emoji; contexts are longer than one 48-token window."""
    rng = random.Random(seed)
    articles = []
    for p in range(n):
        sentences = [" ".join(rng.sample(FILLER, rng.randint(3, 10))) + "." for _ in range(rng.randint(2, 5))]
        answer = rng.choice(ANSWERS)
        impossible = bool(impossible_every) and p % impossible_every == 0
        if not impossible:
            sentences.insert(rng.randint(0, len(sentences)), f"they found the {answer} here.")
        context = " ".join(sentences)
        qa = {"id": f"q{p}", "question": "what did they find?", "answers": []}
        if impossible:
            qa["is_impossible"] = True
        else:
            qa["answers"] = [{"text": answer, "answer_start": context.index(f"the {answer} here") + 4}]
        articles.append({"title": f"t{p}", "paragraphs": [{"context": context, "qas": [qa]}]})
    path.write_text(json.dumps({"version": "test", "data": articles}, ensure_ascii=False), encoding="utf-8")
    return path


def qa_config(model, train_file, **overrides):
    defaults = {"data.max_length": 48, "qa.doc_stride": 16, "qa.max_query_length": 16, "train.batch_size": 16,
                "train.num_epochs": 5, "optim.learning_rate": 2e-3}
    return recipe_config("qa", model, train_file, **{**defaults, **overrides})


# ---------------------------------------------------------------------------------------------- metrics

def test_squad_normalisation_em_and_f1_by_hand():
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel tower") == 0.0
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)   # P 2/2, R 2/3
    assert f1("a b c d", "c d e") == pytest.approx(2 / 3)  # the article "a" is dropped: P = R = 2/3
    assert f1("dog", "cat") == 0.0
    assert f1("", "") == 1.0 and f1("x", "") == 0.0 and f1("", "x") == 0.0
    metrics = squad_metrics({"a": "Denver Broncos", "b": "the cat sat", "c": "", "d": "something"},
                            {"a": ["Broncos", "Denver Broncos"], "b": ["cat sat down"], "c": [], "d": []})
    assert metrics["exact_match"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert metrics["f1"] == pytest.approx((1 + 0.8 + 1 + 0) / 4)
    assert (metrics["has_ans_f1"], metrics["no_ans_f1"]) == (pytest.approx(0.9), pytest.approx(0.5))
    assert metrics["has_ans_questions"] == 2 and metrics["no_ans_questions"] == 2
    assert squad_metrics({}, {"x": ["y"]})["f1"] == 0.0  # unanswered counts as wrong


def test_null_threshold_search_by_hand():
    # answering q1 (F1 1) and q2 (F1 0.5) helps; answering q3 (unanswerable, null scores 1) hurts
    span = {"q1": 1.0, "q2": 0.5, "q3": 0.0}
    null = {"q1": 0.0, "q2": 0.0, "q3": 1.0}
    diffs = {"q1": -2.0, "q2": 0.5, "q3": 3.0}
    score, threshold = best_null_threshold(span, null, diffs)
    assert threshold == 0.5 and score == pytest.approx((1 + 0.5 + 1) / 3)
    # ties: a threshold answers every question with that diff
    score, threshold = best_null_threshold({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0})
    assert score == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- readers

def test_nested_and_flat_squad_read_the_same(tmp_path):
    nested = make_squad(tmp_path / "n.json", 5, impossible_every=2)
    examples = read_squad(nested)
    flat = tmp_path / "f.jsonl"
    flat.write_text("".join(json.dumps({"id": e.id, "question": e.question, "context": e.context,
                                        "answers": {"text": e.answer_texts,
                                                    "answer_start": [s for _, s in e.answers]}},
                                       ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    again = read_squad(flat)
    assert [(e.id, e.context, e.answers, e.is_impossible) for e in again] == \
        [(e.id, e.context, e.answers, e.is_impossible) for e in examples]
    assert [e.is_impossible for e in examples] == [True, False, True, False, True]


def test_answer_start_is_checked(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "alpha beta gamma", "qas": [
        {"id": "q7", "question": "?", "answers": [{"text": "gamma", "answer_start": 3}]}]}]}]}))
    with pytest.raises(DataError) as error:
        read_squad(path)
    assert str(error.value) == (f"{path}: question q7: answer 'gamma' is not at answer_start 3 of the context "
                                f"(the context has 'ha be' there)")


def test_split_keeps_a_context_in_one_split():
    examples = [QAExample(f"{c}-{q}", "?", f"context {c}", [], True, "mem") for c in range(10) for q in range(c % 3 + 1)]
    train, dev, test = split_by_context(examples)
    assert {e.context for e in train} == {f"context {c}" for c in range(7)}
    assert {e.context for e in dev} == {"context 7"} and {e.context for e in test} == {"context 8", "context 9"}


# ---------------------------------------------------------------------------------------------- windows, offsets

UNICODE_CASES = [
    ("Where is the café?", "We met at the Café Mérida in Zürich, not in 東京.", "Café Mérida"),
    ("What city?", "We met at the Café Mérida in Zürich, not in 東京.", "東京"),
    ("Which fuel?", "The rocket 🚀 fuel burned; naïve coöperation followed.", "rocket 🚀 fuel"),
    ("What followed?", "The rocket 🚀 fuel burned; naïve coöperation followed.", "naïve coöperation"),
    ("Combining accent?", "A plain word, then cafe\u0301 au lait, then more.", "cafe\u0301 au lait"),
]


@pytest.mark.parametrize("question,context,answer", UNICODE_CASES)
def test_offsets_round_trip_unicode(minilm_path, question, context, answer):
    tokenizer = load_tokenizer(minilm_path)
    start = context.index(answer)
    example = QAExample("x", question, context, [(answer, start)], False, "mem")
    features, stats = encode_windows(tokenizer, [example], max_length=64, doc_stride=16, max_query_length=16)
    assert stats["windows"] == 1 and features[0].has_answer
    f = features[0]
    assert context[f.offsets[f.start_position, 0]:f.offsets[f.end_position, 1]] == answer
    # every context token's offsets point into the context; question and special tokens have none
    context_tokens = f.offsets[:, 0] != NO_OFFSET
    assert (f.offsets[context_tokens, 1] <= len(context)).all()
    assert f.token_type_ids is not None and set(f.token_type_ids[context_tokens]) == {1}


def test_windows_overlap_by_the_stride_and_cut_answers_are_labelled_no_answer(minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    words = [f"w{i}" for i in range(60)]
    answer = "the golden treasure chest"
    cut = 0
    for prefix in range(24, 36):  # slide the answer over the window boundaries
        context = " ".join(words[:prefix]) + f" {answer} " + " ".join(words[prefix:])
        start = context.index(answer)
        example = QAExample("x", "what?", context, [(answer, start)], False, "mem")
        features, stats = encode_windows(tokenizer, [example], max_length=32, doc_stride=8, max_query_length=8)
        assert stats["windows"] > 3 and stats["answers_outside_every_window"] == 0
        answer_chars = {i for i in range(start, start + len(answer)) if not context[i].isspace()}
        full = 0
        for f in features:
            covered = {c for a, b in f.offsets if a != NO_OFFSET for c in range(a, b)}
            if answer_chars <= covered:
                full += 1
                assert context[f.offsets[f.start_position, 0]:f.offsets[f.end_position, 1]] == answer
            elif answer_chars & covered:
                cut += 1
                assert (f.start_position, f.end_position) == (0, 0)  # part of the answer only: "no answer here"
            else:
                assert not f.has_answer
        assert full >= 1
        # consecutive windows share exactly doc_stride context tokens, and together cover every context character
        spans = [[tuple(o) for o in f.offsets if o[0] != NO_OFFSET] for f in features]
        for left, right in zip(spans, spans[1:]):
            assert left[-8:] == right[:8]
        covered = {c for span in spans for a, b in span for c in range(a, b)}
        assert covered == {i for i, ch in enumerate(context) if not ch.isspace()}
    assert cut >= 3


def test_answer_token_span_edges():
    offsets = np.array([[NO_OFFSET, NO_OFFSET], [0, 3], [4, 9], [10, 12], [NO_OFFSET, NO_OFFSET]])
    assert answer_token_span(offsets, 4, 12) == (2, 3)
    assert answer_token_span(offsets, 5, 8) == (2, 2)      # inside one token: that token
    assert answer_token_span(offsets, 10, 14) == (0, 0)    # runs past the window
    assert answer_token_span(offsets, 0, 3) == (1, 1)


# ---------------------------------------------------------------------------------------------- decoding

def feature(offsets):
    return QAFeature(np.zeros(len(offsets), np.int32), None, np.array(offsets, np.int32), 0)


def test_n_best_decoding_by_hand():
    context = "alpha beta gamma delta"
    example = QAExample("q", "?", context, [], False, "mem")
    f = feature([[NO_OFFSET] * 2, [NO_OFFSET] * 2, [0, 5], [6, 10], [11, 16], [17, 22], [NO_OFFSET] * 2])
    start = np.array([0.0, 9.0, 1.0, 3.0, 0.5, 0.2, 9.0])   # the question and [SEP] (9.0) are never chosen
    end = np.array([0.0, 9.0, 0.1, 0.2, 2.5, 0.3, 9.0])
    p = decode_example(example, [f], [(start, end)], n_best_size=4, max_answer_length=30)
    assert (p.text, p.start, p.end) == ("beta gamma", 6, 16) and p.logit == pytest.approx(5.5)
    assert p.n_best[0]["text"] == "beta gamma" and sum(e["score"] for e in p.n_best) == pytest.approx(1.0)
    assert all(e["end"] >= e["start"] for e in p.n_best)
    short = decode_example(example, [f], [(start, end)], n_best_size=4, max_answer_length=1)
    assert short.text == "beta"  # 3.0 + 0.2 beats gamma's 0.5 + 2.5
    # SQuAD v2: "" when the null score beats the best span by more than the threshold
    start[0], end[0] = 4.0, 2.0   # null 6.0, best span 5.5
    assert decode_example(example, [f], [(start, end)], version_2=True, null_threshold=0.0).text == ""
    kept = decode_example(example, [f], [(start, end)], version_2=True, null_threshold=1.0)
    assert kept.text == "beta gamma" and kept.null_score_diff == pytest.approx(0.5)


def test_decoding_takes_the_best_window():
    context = "one two three four"
    example = QAExample("q", "?", context, [], False, "mem")
    first = feature([[NO_OFFSET] * 2, [0, 3], [4, 7], [8, 13], [NO_OFFSET] * 2])
    second = feature([[NO_OFFSET] * 2, [8, 13], [14, 18], [NO_OFFSET] * 2])
    outputs = [(np.array([0, 1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0, 0])),
               (np.array([0, 0, 4.0, 0]), np.array([0, 0, 4.0, 0]))]
    assert decode_example(example, [first, second], outputs).text == "four"


# ---------------------------------------------------------------------------------------------- learning

def test_tiny_model_learns_squad_v1_and_predicts(tmp_path, tiny_bert_no_dropout):
    data = make_squad(tmp_path / "train.json", 300)
    results = run(qa_config(tiny_bert_no_dropout, data), tmp_path / "run")
    assert results["version_2"] is False and results["windows"]["train"]["windows"] > 210  # some contexts span windows
    assert results["test"]["exact_match"] >= 0.95 and results["test"]["f1"] >= 0.95, results["test"]
    predictions = json.loads((tmp_path / "run" / "predictions_test.json").read_text())
    assert sum(p in ANSWERS for p in predictions.values()) >= 0.95 * len(predictions)
    assert set("東京🚀") & set("".join(predictions.values()))  # unicode answers come back character-exact

    # predict: JSON lines on stdin -> spans with scores and character offsets into each context
    contexts = ["nobody expected it. they found the smörgåsbord here. a quiet day.",
                "they found the rocket 🚀 fuel here. it was small."]
    stdin = "".join(json.dumps({"id": f"p{i}", "question": "what did they find?", "context": c},
                               ensure_ascii=False) + "\n" for i, c in enumerate(contexts))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxft.main", "predict", "--model", str(tmp_path / "run" / "export")],
                          input=stdin, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["answer"] for o in outputs] == ["smörgåsbord", "rocket 🚀 fuel"]
    for o, c in zip(outputs, contexts):
        assert c[o["start"]:o["end"]] == o["answer"] and 0 < o["score"] <= 1
        assert o["n_best"][0]["text"] == o["answer"]


def test_tiny_model_learns_squad_v2_unanswerable(tmp_path, tiny_bert_no_dropout):
    data = make_squad(tmp_path / "train.json", 300, seed=1, impossible_every=3)
    results = run(qa_config(tiny_bert_no_dropout, data), tmp_path / "run")
    test = results["test"]
    assert results["version_2"] is True and test["no_ans_questions"] > 10 and test["has_ans_questions"] > 20
    assert test["f1"] >= 0.85 and test["no_ans_f1"] >= 0.8 and test["has_ans_f1"] >= 0.8, test
    assert test["null_threshold"] == results["dev"]["null_threshold"]
    task_file = json.loads((tmp_path / "run" / "export" / "jaxft_task.json").read_text())
    assert task_file["version_2"] is True and task_file["null_threshold"] == test["null_threshold"]
