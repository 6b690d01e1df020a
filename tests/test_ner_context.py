"""Documents and long sentences: -DOCSTART- / document-id columns, FLERT context (ner.context_tokens) in
training rows, evaluation and `predict --format conll`, and training windows for sentences longer than
max_length (each word trained exactly once, nothing truncated).

No PyPI package found here ships a labelled NER corpus with document structure (the tweets data has none),
so context is tested for correctness only, on a synthetic corpus."""

import io
import json

import numpy as np
import pytest

from conftest import tiny_ner_config
from jaxft.data.errors import DataError
from jaxft.data.ner_encoding import (CHAIN_WORD, IGNORE_INDEX, OPEN_AFTER, OPEN_BEFORE, chain_flags,
                                     encode_for_prediction, encode_for_training)
from jaxft.data.ner_readers import Sentence, read_conll, read_table
from jaxft.evaluate.ner_metrics import ner_metrics
from ner_synthetic import LABELS, write_corpus

L2I = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from jaxft.models import load_tokenizer
    return load_tokenizer(minilm_path)


def pieces(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_conll_documents_and_document_columns(tmp_path):
    path = tmp_path / "docs.conll"
    path.write_text("-DOCSTART- -X- O O\n\na\tO\n\nb\tO\n\n-DOCSTART- -X- O O\n\n-DOCSTART- -X- O O\n\nc\tO\n"
                    "\nd\tB-PER\n")
    assert [(s.tokens, s.document) for s in read_conll(path)] == [(["a"], 0), (["b"], 0), (["c"], 1), (["d"], 1)]
    plain = tmp_path / "plain.conll"
    plain.write_text("a\tO\n\nb\tO\n")
    assert [s.document for s in read_conll(plain)] == [None, None]
    table = tmp_path / "t.jsonl"
    table.write_text("\n".join(json.dumps(row) for row in [
        {"tokens": ["a"], "tags": ["O"], "doc": "x"}, {"tokens": ["b"], "tags": ["O"], "doc": "x"},
        {"tokens": ["c"], "tags": ["O"], "doc": 7}]) + "\n")
    assert [s.document for s in read_table(table, document_column="doc")] == ["x", "x", 7]
    assert [s.document for s in read_table(table)] == [None, None, None]
    table.write_text(json.dumps({"tokens": ["a"], "tags": ["O"], "doc": [1]}) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:1: document id in column 'doc' must be a string or an int"):
        read_table(table, document_column="doc")


def document(*sentences, document_id=0):
    return [Sentence(words.split(), ["O"] * len(words.split()), f"mem:{i}", document_id)
            for i, words in enumerate(sentences)]


def test_context_rows_hold_neighbours_as_context_only(tokenizer):
    sentences = document("one two three", "tokenization in washington", "four five", "six seven eight nine") + \
        document("other doc", document_id=1)
    sentences[1].tags = ["B-ORG", "O", "B-LOC"]
    rows, report = encode_for_training(tokenizer, sentences, L2I, max_length=32, context_tokens=4)
    middle = rows[1]
    # 4 sub-tokens on each side, whole words only, nearest first; the document's end stops the right side
    assert pieces(tokenizer, middle.input_ids) == ["[CLS]", "one", "two", "three", "token", "##ization", "in",
                                                   "washington", "four", "five", "six", "seven", "[SEP]"]
    assert middle.word_ids.tolist() == [-1, -1, -1, -1, 0, 0, 1, 2, -1, -1, -1, -1, -1]
    assert middle.labels.tolist() == [IGNORE_INDEX] * 4 + [L2I["B-ORG"], IGNORE_INDEX, L2I["O"], L2I["B-LOC"]] + \
        [IGNORE_INDEX] * 5
    assert pieces(tokenizer, rows[3].input_ids) == ["[CLS]", "in", "washington", "four", "five", "six", "seven",
                                                    "eight", "nine", "[SEP]"]  # nothing from document 1
    assert pieces(tokenizer, rows[4].input_ids) == ["[CLS]", "other", "doc", "[SEP]"]
    assert report.context_sentences == 4
    # the labels are those of the sentence alone: context adds tokens, never labels
    alone, _ = encode_for_training(tokenizer, sentences, L2I, max_length=32)
    for with_context, without in zip(rows, alone):
        assert with_context.labels[with_context.labels != IGNORE_INDEX].tolist() == \
               without.labels[without.labels != IGNORE_INDEX].tolist()
    # prediction builds the same rows from the same documents, or from explicit (left, right) words
    predicted = encode_for_prediction(tokenizer, [s.tokens for s in sentences], 32,
                                      documents=[s.document for s in sentences], context_tokens=4)
    words = [s.tokens for s in sentences]
    explicit = encode_for_prediction(tokenizer, words, 32, context_tokens=4, contexts=[  # all the words around
        ([], words[1] + words[2] + words[3]), (words[0], words[2] + words[3]), (words[0] + words[1], words[3]),
        (words[0] + words[1] + words[2], []), ([], [])])
    for a, b, c in zip(rows, predicted, explicit):
        assert a.input_ids.tolist() == b.input_ids.tolist() == c.input_ids.tolist()
        assert a.word_ids.tolist() == b.word_ids.tolist() == c.word_ids.tolist()


def test_context_fits_max_length(tokenizer):
    sentences = document(" ".join(["x"] * 20), "a b c d e f", " ".join(["y"] * 20))
    rows, _ = encode_for_training(tokenizer, sentences, L2I, max_length=12, context_tokens=16)
    (middle,) = [row for row in rows if row.sentence_index == 1]  # the long neighbours are windows
    assert len(middle.input_ids) == 12  # 6 own words + 4 of context, shared between the sides
    assert pieces(tokenizer, middle.input_ids) == ["[CLS]", "x", "x", "a", "b", "c", "d", "e", "f", "y", "y",
                                                   "[SEP]"]
    full = document(" ".join(["a"] * 10), "b c")
    rows, report = encode_for_training(tokenizer, full, L2I, 12, context_tokens=16)
    assert len(rows) == 2 and len(rows[0].input_ids) == 12 and report.context_sentences == 1  # no room left


def test_training_windows_train_each_word_once_and_chain_flags(tokenizer):
    words = [f"w{i}" if i % 7 else "tokenization" for i in range(300)]
    tags = [LABELS[(i // 3) % len(LABELS)] for i in range(300)]
    rows, report = encode_for_training(tokenizer, [Sentence(words, tags, "m")], L2I, max_length=32)
    assert report.windowed_sentences == 1 and report.windows == len(rows) > 10
    assert report.truncated_sentences == 0 and report.empty_words == 0
    trained = []
    for row in rows:
        assert len(row.input_ids) <= 32
        labelled = np.flatnonzero(row.labels != IGNORE_INDEX)
        own = row.word_ids[labelled]
        assert (np.diff(own) == 1).all()  # one contiguous block of words per window
        trained.extend(own.tolist())
        assert [LABELS[row.labels[p]] for p in labelled] == [tags[w] for w in own]
        flags = chain_flags(row, trained_only=True)
        chain = np.flatnonzero(flags & CHAIN_WORD)
        assert chain.tolist() == labelled.tolist()
        assert bool(flags[chain[0]] & OPEN_BEFORE) == (own[0] > 0)
        assert bool(flags[chain[-1]] & OPEN_AFTER) == (own[-1] < 299)
    assert trained == list(range(300))  # every word once, in order


@pytest.fixture(scope="module")
def context_run(tmp_path_factory, tiny_bert):
    from jaxft.tasks.run import run

    root = tmp_path_factory.mktemp("ner-context")
    data = write_corpus(root / "synthetic.conll", 200, seed=1, per_document=4, long_sentences=6)
    config = tiny_ner_config(tiny_bert, data, **{"ner.context_tokens": 8, "train.num_epochs": 3,
                                                 "data.max_length": 48, "optim.learning_rate": 3e-3})
    return root, run(config, root / "run"), config


def test_context_run_scores_as_predict_with_conll_documents(context_run):
    """A run with context and long training sentences: its test F1 is what `predict --format conll` on the
    test sentences (in their documents) scores."""
    from jaxft.predict import run_predict
    from jaxft.tasks import ner

    root, results, config = context_run
    export = root / "run" / "export"
    assert json.loads((export / "jaxft_task.json").read_text())["context_tokens"] == 8
    truncation = results["truncation"]
    assert truncation["context_sentences"] > 100
    # six training sentences of 60-80 words are longer than max_length=48: windows, nothing truncated
    assert truncation["windowed_sentences"] == 6 and truncation["windows"] >= 12
    assert truncation["truncated_sentences"] == 0
    test = ner.read_splits(config.data).test
    lines, previous = [], object()
    for sentence in test:
        if sentence.document != previous:
            lines += ["-DOCSTART- O", ""]
            previous = sentence.document
        lines += sentence.tokens + [""]
    path = root / "test.conll"
    path.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    assert run_predict([export], str(path), out, input_format="conll") == len(test)
    predicted = []
    for sentence, line in zip(test, out.getvalue().splitlines()):
        result = json.loads(line)
        tags = ["O"] * len(sentence.tokens)
        starts = np.cumsum([0] + [len(w) + 1 for w in sentence.tokens])
        for entity in result["entities"]:
            first, last = int(np.searchsorted(starts, entity["start"])), int(np.searchsorted(starts, entity["end"]))
            tags[first:last] = ["B-" + entity["type"]] + ["I-" + entity["type"]] * (last - first - 1)
        predicted.append(tags)
    f1 = ner_metrics([s.tags for s in test], predicted)["f1"]
    assert f1 == pytest.approx(results["test"]["f1"], abs=1e-12)  # the same context as the run's test split
    assert f1 > 0.5
