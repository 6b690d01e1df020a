"""Ensembles: `predict --model A --model B` averages the members' probabilities (NER word probabilities,
classification class probabilities), and members of another task, label set or tokenizer are refused with
the folder named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxft.models import ModelLoadError
from jaxft.predict import load_predictor
from jaxft.tasks.ner import TokenClassifier
from jaxft.tasks.classification import SequenceClassifier
from tiny_exports import CLS_LABELS, NER_LABELS, TEXTS, make_export

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert_no_dropout):
    root = tmp_path_factory.mktemp("ensemble")
    base = tiny_bert_no_dropout
    return {
        "ner_a": make_export(root / "ner_a", base, "token-classification", NER_LABELS, seed=1),
        "ner_b": make_export(root / "ner_b", base, "token-classification", NER_LABELS, seed=2),
        "ner_other_labels": make_export(root / "ner_c", base, "token-classification", ["O", "B-ORG", "I-ORG"]),
        "cls_a": make_export(root / "cls_a", base, "sequence-classification", CLS_LABELS, seed=3),
        "cls_b": make_export(root / "cls_b", base, "sequence-classification", CLS_LABELS, seed=4),
    }


def test_ner_ensemble_averages_token_probabilities(exports):
    members = [TokenClassifier(exports[k], max_length=32) for k in ("ner_a", "ner_b")]
    ensemble = TokenClassifier([exports["ner_a"], exports["ner_b"]], max_length=32)
    assert ensemble.members == 2
    from jaxft.data.ner_encoding import encode_for_prediction
    windows = encode_for_prediction(ensemble.tokenizer, [t.split() for t in TEXTS], 32)
    rows = [{"input_ids": w.input_ids, "labels": w.labels} for w in windows]
    pa, pb = (m.run_rows(rows) for m in members)
    pe = ensemble.run_rows(rows)
    assert len(pe) == len(rows) > len(TEXTS)  # the long text has two windows
    for a, b, e in zip(pa, pb, pe):
        np.testing.assert_allclose(np.exp(e), (np.exp(a) + np.exp(b)) / 2, atol=1e-6)
    # the members disagree somewhere, and the ensemble's tags follow the averaged probabilities
    tags = [m.predict_words([t.split() for t in TEXTS]) for m in members]
    assert any(x.tags != y.tags for x, y in zip(*tags))


def test_classification_ensemble_averages_probabilities(exports):
    members = [SequenceClassifier(exports[k]) for k in ("cls_a", "cls_b")]
    ensemble = load_predictor([exports["cls_a"], exports["cls_b"]])
    assert isinstance(ensemble, SequenceClassifier) and ensemble.members == 2
    outputs = [m.predict(TEXTS) for m in (*members, ensemble)]
    for a, b, e in zip(*outputs):
        mean = {label: (a["probabilities"][label] + b["probabilities"][label]) / 2 for label in CLS_LABELS}
        assert e["probabilities"] == pytest.approx(mean, abs=1e-6)
        assert e["label"] == max(mean, key=mean.get)
    # the members' probabilities differ, so the average is a real test
    assert max(abs(a["probabilities"][l] - b["probabilities"][l]) for a, b in zip(*outputs[:2]) for l in CLS_LABELS) > 0.05


def run_predict_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxft.main", "predict", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_predict_cli_ensemble_and_its_errors(exports, tmp_path):
    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    done = run_predict_cli("--model", str(exports["cls_a"]), "--model", str(exports["cls_b"]), "--input", str(lines))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = load_predictor([exports["cls_a"], exports["cls_b"]]).predict(TEXTS)
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)
    done = run_predict_cli("--model", str(exports["ner_a"]), "--model", str(exports["ner_other_labels"]),
                           "--input", str(lines))
    assert done.returncode == 2
    assert str(exports["ner_other_labels"]) in done.stderr and "labels" in done.stderr


def test_members_must_match(exports, tmp_path, minilm_path):
    with pytest.raises(ModelLoadError, match=r"ner_c has labels \['O', 'B-ORG', 'I-ORG'\]"):
        TokenClassifier([exports["ner_a"], exports["ner_other_labels"]])
    with pytest.raises(ModelLoadError, match="cls_a is a sequence-classification model"):
        TokenClassifier([exports["ner_a"], exports["cls_a"]])
    # another vocabulary: a copy of ner_b whose tokenizer has one token renamed
    other = tmp_path / "other_vocab"
    other.mkdir()
    for item in exports["ner_b"].iterdir():
        (other / item.name).write_bytes(item.read_bytes())
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["zzzunusedtoken"] = vocab.pop("[unused0]")
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelLoadError, match="other_vocab has another tokenizer vocabulary"):
        TokenClassifier([exports["ner_a"], other])
