"""Sequence classification: readers, labels, pair encoding, metrics, class weights, and the recipe end to end
(single-label pairs through the CLI and predict, multi-label with a tuned threshold, regression) on a tiny model."""

import bz2
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from conftest import recipe_config as conftest_recipe_config
from jaxft.config import ConfigError
from jaxft.data.errors import DataError
from jaxft.data.text_readers import read_packaged_rotten_tomatoes, read_text_examples
from jaxft.evaluate.classification_metrics import (multi_label_metrics, regression_metrics, single_label_metrics,
                                                   tune_threshold)
from jaxft.tasks.run import run
from jaxft.models import load_tokenizer
from jaxft.tasks.classification import (ClassificationTask, TextSplits, class_weight_vector, encode_texts,
                                        label_list)

REPO = Path(__file__).parent.parent
POSITIVE = ["great", "wonderful", "superb", "lovely", "excellent", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "dreadful", "tedious"]
FILLER = "the film had a plot some actors and a long middle part with music".split()


def recipe_config(model, train_file, **overrides):
    """configs/sentiment.py pointed at a tiny model and small files: seconds per run."""
    defaults = {"data.max_length": 32, "train.batch_size": 16, "train.num_epochs": 4, "optim.learning_rate": 2e-3}
    return conftest_recipe_config("sentiment", model, train_file, **{**defaults, **overrides})


def sentence(rng, word):
    words = rng.sample(FILLER, 5)
    words.insert(rng.randint(0, 5), word)
    return " ".join(words)


def write_csv(path, header, rows, delimiter=","):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------- readers

ROWS = [("a fine, sunny film", "pos"), ("two\nlines of text", "neg"), ('she said "hi"', "pos"), ("café ☕ 東京", "neg")]


def test_every_format_reads_the_same_rows(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["text", "label"], ROWS)
    tsv_path = write_csv(tmp_path / "d.tsv", ["label", "text"], [(l, t) for t, l in ROWS], delimiter="\t")
    bz2_path = tmp_path / "d.csv.bz2"
    bz2_path.write_bytes(bz2.compress(csv_path.read_bytes()))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in ROWS))
    (tmp_path / "d.json").write_text(json.dumps([{"text": t, "label": l} for t, l in ROWS]))
    pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]}), tmp_path / "d.parquet")
    for name in ("d.csv", "d.tsv", "d.csv.bz2", "d.jsonl", "d.json", "d.parquet"):
        examples = read_text_examples(tmp_path / name)
        assert [(e.text, e.label) for e in examples] == ROWS, name
    # CSV rows are located by the line they start on: the quoted newline makes row 3 start on line 4
    assert [e.source.rsplit(":", 1)[1] for e in read_text_examples(csv_path)] == ["2", "3", "5", "6"]
    assert [e.source.rsplit(":", 1)[1] for e in read_text_examples(tmp_path / "d.json")] == [
        "row 0", "row 1", "row 2", "row 3"]


def test_reader_errors_name_file_and_line(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["text", "y"], [("a", "1")])
    with pytest.raises(DataError) as error:
        read_text_examples(path)
    assert str(error.value) == f"{path}:1: no column 'label'; the header names: 'text', 'y'"
    path = write_csv(tmp_path / "y.csv", ["text", "label"], [("a", "1"), ("b", "")])
    with pytest.raises(DataError, match=rf"^{path}:3: no label in column 'label'$"):
        read_text_examples(path)
    path = tmp_path / "z.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": 5, "label": 1}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: column 'text' must hold text, got int 5$"):
        read_text_examples(path)
    with pytest.raises(DataError, match=r"unknown file extension '.txt'"):
        read_text_examples(tmp_path / "w.txt")


def test_packaged_reviews_and_fixed_split():
    examples = read_packaged_rotten_tomatoes()
    assert len(examples) == 12808 and {e.label for e in examples} == {"fresh", "rotten"}
    assert sum(e.label == "fresh" for e in examples) == 7403


def test_hf_datasets_builders_and_class_label_names(tmp_path):
    import datasets

    from jaxft.data.text_readers import read_hf_text_dataset

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"sentence": ["bad", "good", "fine"], "label": [0, 1, 1]},
                               features=features).to_parquet(str(tmp_path / "train.parquet"))
    examples, names = read_hf_text_dataset("parquet", None, "train", text_column="sentence",
                                           data_files={"train": str(tmp_path / "train.parquet")},
                                           cache_dir=str(tmp_path / "cache"))
    assert names == ["neg", "pos"] and [(e.text, e.label) for e in examples] == [("bad", "neg"), ("good", "pos"),
                                                                                 ("fine", "pos")]
    assert examples[2].source.endswith("[train]:row 2")
    with pytest.raises(DataError, match="no column 'text'; the dataset has columns: 'sentence', 'label'"):
        read_hf_text_dataset("parquet", None, "train", data_files={"train": str(tmp_path / "train.parquet")},
                             cache_dir=str(tmp_path / "cache"))


def test_labels_as_ints_or_strings(tmp_path):
    ints = tmp_path / "i.jsonl"
    ints.write_text("".join(json.dumps({"text": "t", "label": v}) + "\n" for v in (10, 2, 0, 2, 1)))
    strings = write_csv(tmp_path / "s.csv", ["text", "label"], [("t", v) for v in ("10", "2", "0", "1")])
    for path in (ints, strings):  # the same label keys whether read as numbers or text, in numeric order
        assert label_list(TextSplits(read_text_examples(path), [], []), "single_label_classification") == [
            "0", "1", "2", "10"]
    named = write_csv(tmp_path / "n.csv", ["text", "label"], [("t", "rotten"), ("t", "fresh")])
    assert label_list(TextSplits(read_text_examples(named), [], []), "single_label_classification") == [
        "fresh", "rotten"]
    multi = write_csv(tmp_path / "m.csv", ["text", "label"], [("t", "b,a"), ("t", "c"), ("t", "")])
    examples = read_text_examples(multi, allow_empty_label=True)
    assert label_list(TextSplits(examples, [], []), "multi_label_classification") == ["a", "b", "c"]


def test_unseen_dev_label_is_a_clear_error(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [("good", "pos"), ("bad", "neg")] * 5)
    dev = write_csv(tmp_path / "dev.csv", ["text", "label"], [("good", "pos"), ("meh", "neutral")])
    config = recipe_config(tiny_bert, train, **{"data.validation_file": str(dev)})
    with pytest.raises(DataError) as error:
        run(config, tmp_path / "run")
    assert str(error.value) == (f"{dev}:3: dev label 'neutral' does not occur in the training data, whose 2 labels "
                                f"are 'neg', 'pos'")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


# ---------------------------------------------------------------------------------------------- encoding

def test_pair_encoding_matches_the_tokenizer_and_counts_truncation(minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    texts, pairs = ["a short premise", "another one"], ["the hypothesis here", "word " * 40]
    rows, count = encode_texts(tokenizer, texts, pairs, max_length=24)
    reference = tokenizer(texts[0], pairs[0], padding=False, truncation=False)
    np.testing.assert_array_equal(rows[0]["input_ids"], reference["input_ids"])
    np.testing.assert_array_equal(rows[0]["token_type_ids"], reference["token_type_ids"])
    sep = tokenizer.sep_token_id
    first_sep = list(rows[0]["input_ids"]).index(sep)
    assert set(rows[0]["token_type_ids"][:first_sep + 1]) == {0} and set(rows[0]["token_type_ids"][first_sep + 1:]) == {1}
    assert len(rows[1]["input_ids"]) == 24 and rows[1]["input_ids"][-1] == sep
    full = len(tokenizer(texts[1], pairs[1], padding=False, truncation=False)["input_ids"])
    assert (count.examples, count.truncated, count.dropped_tokens) == (2, 1, full - 24)
    truncated = tokenizer(texts[1], pairs[1], truncation="longest_first", max_length=24)
    np.testing.assert_array_equal(rows[1]["input_ids"], truncated["input_ids"])


# ---------------------------------------------------------------------------------------------- metrics

def test_single_label_metrics_by_hand():
    probs = np.eye(3)[[0, 1, 1, 1, 0]]  # predictions; truth is [0, 0, 1, 1, 2]
    m = single_label_metrics([0, 0, 1, 1, 2], probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6) and m["micro_f1"] == pytest.approx(0.6)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_multi_label_threshold_is_tuned_on_dev():
    truth = np.array([[1, 0], [1, 1], [0, 1]])
    probs = np.array([[0.35, 0.10], [0.40, 0.32], [0.20, 0.90]])
    assert tune_threshold(truth, probs) == pytest.approx(0.3)  # 0.25 and 0.3 tie at F1 1; the one nearer 0.5
    at_default = multi_label_metrics(truth, probs, ["x", "y"], 0.5)
    assert at_default["micro_f1"] == pytest.approx(0.4)  # 1 true positive, 3 missed
    assert at_default["subset_accuracy"] == pytest.approx(1 / 3) and at_default["hamming_accuracy"] == pytest.approx(3 / 6)
    tuned = multi_label_metrics(truth, probs, ["x", "y"], 0.3)
    assert tuned["micro_f1"] == 1.0 and tuned["subset_accuracy"] == 1.0 and tuned["threshold"] == 0.3


def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5])
    assert m["mse"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.25)
    assert m["pearson"] == pytest.approx(6.5 / np.sqrt(5 * 8.75)) and m["spearman"] == pytest.approx(1.0)
    assert regression_metrics([1, 2, 3], [2, 2, 2])["pearson"] == 0.0  # constant: no correlation


def test_class_weights_and_weighted_loss(minilm_path):
    assert class_weight_vector("balanced", "single_label_classification", ["a", "b"],
                               np.array([0, 0, 0, 1])) == pytest.approx([4 / 6, 4 / 2])
    assert class_weight_vector("b:3,a:0.5", "single_label_classification", ["a", "b"], np.zeros(2, int)) == \
        pytest.approx([0.5, 3.0])
    assert class_weight_vector("none", "single_label_classification", ["a"], np.zeros(1, int)) is None
    with pytest.raises(ConfigError, match="'c:2' is not 'label:weight'"):
        class_weight_vector("c:2", "single_label_classification", ["a", "b"], np.zeros(2, int))
    # the loss: sum of weight[label] * cross-entropy over the real rows (padding rows count for nothing)
    train = [read_row("good", "a"), read_row("bad", "b"), read_row("ok", "b")]
    task = ClassificationTask(load_tokenizer(minilm_path), TextSplits(train, [], []), ["a", "b"], max_length=16,
                              class_weights="a:2,b:0.5")
    logits = np.array([[1.0, -1.0], [0.3, 0.2], [0.0, 2.0], [5.0, 5.0]], np.float32)
    batch = {"input_ids": np.zeros((4, 3), np.int32), "attention_mask": np.array([[1] * 3] * 3 + [[0] * 3]),
             "label": np.array([0, 1, 1, 0], np.int32)}
    total, count = task.loss(lambda **_: logits, batch)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits[:3]), torch.tensor([0, 1, 1]),
                                                 reduction="none") * torch.tensor([2.0, 0.5, 0.5])
    assert int(count) == 3 and float(total) == pytest.approx(float(expected.sum()), rel=1e-5)


def read_row(text, label):
    from jaxft.data.text_readers import TextExample
    return TextExample(text, None, label, "mem")


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """Premise: filler; hypothesis: filler with a sentiment word that decides the label (pairs must be read).
    Train CSV, dev TSV, test JSONL: one run reads three formats."""
    folder = tmp_path_factory.mktemp("pairs")
    rng = random.Random(0)

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            out.append((sentence(rng, rng.choice(FILLER)), sentence(rng, rng.choice(POSITIVE if label == "pos" else NEGATIVE)), label))
        return out

    write_csv(folder / "train.csv", ["premise", "hypothesis", "label"], rows(240))
    write_csv(folder / "dev.tsv", ["premise", "hypothesis", "label"], rows(60), delimiter="\t")
    (folder / "test.jsonl").write_text("".join(json.dumps({"premise": p, "hypothesis": h, "label": l}) + "\n"
                                               for p, h, l in rows(60)))
    return folder


def cli(*args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxft.main", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, **kwargs)


def test_pairs_through_the_cli_then_predict_matches_transformers(tmp_path, pair_files, tiny_bert_no_dropout):
    workdir = tmp_path / "run"
    done = cli("--config", str(REPO / "configs" / "sentiment.py"), "--workdir", str(workdir),
               f"--config.model.name_or_path={tiny_bert_no_dropout}",
               f"--config.data.train_file={pair_files / 'train.csv'}",
               f"--config.data.validation_file={pair_files / 'dev.tsv'}",
               f"--config.data.test_file={pair_files / 'test.jsonl'}",
               "--config.data.text_column=premise", "--config.data.text_pair_column=hypothesis",
               "--config.classification.class_weights=balanced", "--config.data.max_length=32",
               "--config.train.batch_size=16", "--config.train.num_epochs=8", "--config.optim.learning_rate=2e-3",
               "--config.train.progress_bar=False")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["test"]["accuracy"] >= 0.9 and results["test"]["macro_f1"] >= 0.9, results["test"]
    assert results["dev"]["accuracy"] >= 0.9
    assert results["labels"] == ["neg", "pos"] and results["test"]["examples"] == 60
    assert set(results["test"]["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, results["test"]["confusion_matrix"])) == 60
    assert (workdir / "confusion_matrix.png").stat().st_size > 5000
    assert "test accuracy" in done.stderr and "0 of 240 train texts longer than max_length" in done.stderr

    # predict: "premise<TAB>hypothesis" lines -> label + probabilities, equal to transformers on the export
    inputs = [("the plot had music", "a superb film"), ("some actors", "it was dreadful and tedious")]
    lines = tmp_path / "in.txt"
    lines.write_text("".join(f"{p}\t{h}\n" for p, h in inputs))
    predicted = cli("predict", "--model", str(workdir / "export"), "--input", str(lines))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    outputs = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [o["label"] for o in outputs] == ["pos", "neg"]
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "export").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "export")
    with torch.no_grad():
        encoded = tokenizer([p for p, _ in inputs], [h for _, h in inputs], padding=True, return_tensors="pt")
        reference = torch.softmax(torch_model(**encoded).logits, -1).numpy()
    for output, probs in zip(outputs, reference):
        assert [output["probabilities"]["neg"], output["probabilities"]["pos"]] == pytest.approx(probs, abs=1e-5)
        assert output["score"] == pytest.approx(probs.max(), abs=1e-5)


def test_multi_label_learns_with_a_dev_tuned_threshold(tmp_path, tiny_bert_no_dropout):
    rng = random.Random(1)
    topics = {"music": "guitar", "sport": "football", "food": "pizza"}
    rows = []
    for _ in range(300):
        chosen = [t for t in topics if rng.random() < 0.45]
        words = rng.sample(FILLER, 4) + [topics[t] for t in chosen]
        rng.shuffle(words)
        rows.append((" ".join(words), "|".join(chosen)))  # "" = no label
    path = write_csv(tmp_path / "multi.csv", ["text", "topics"], rows)
    config = recipe_config(tiny_bert_no_dropout, path, **{
        "classification.problem_type": "multi_label_classification", "data.label_column": "topics",
        "classification.label_separator": "|", "train.num_epochs": 12, "optim.learning_rate": 3e-3})
    results = run(config, tmp_path / "run")
    assert results["labels"] == ["food", "music", "sport"]
    test = results["test"]
    # predicting every label gives micro F1 0.66 and subset accuracy 0.11 here; the tiny model learns the labels
    assert test["micro_f1"] >= 0.88 and test["subset_accuracy"] >= 0.7, test
    assert min(row["f1"] for row in test["per_class"].values()) >= 0.75
    threshold = results["threshold"]
    assert results["dev"]["threshold"] == threshold == test["threshold"]
    assert threshold in [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)]
    exported = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert exported["problem_type"] == "multi_label_classification"
    assert json.loads((tmp_path / "run" / "export" / "jaxft_task.json").read_text())["threshold"] == threshold


def test_regression_learns_a_score(tmp_path, tiny_bert_no_dropout):
    rng = random.Random(2)
    lines = []
    for _ in range(300):
        good = rng.randint(0, 3)
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE, good)
        rng.shuffle(words)
        lines.append(json.dumps({"text": " ".join(words), "score": float(good)}))
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = recipe_config(tiny_bert_no_dropout, path, **{"classification.problem_type": "regression",
                                                          "data.label_column": "score", "train.num_epochs": 15})
    results = run(config, tmp_path / "run")
    assert results["main_metric"] == "pearson"
    assert results["test"]["pearson"] >= 0.9 and results["test"]["spearman"] >= 0.85, results["test"]
    assert results["test"]["mse"] < 0.3  # the targets' variance is 1.25
