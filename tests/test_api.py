"""The Python API (jaxft.train / evaluate / pipeline / recipe) and the command line's help, typo hints, evaluate
subcommand and plain log lines, on a tiny random BERT.

One command-line run on a CoNLL file is the reference: jaxft.train with the same sentences as a Dataset with
ClassLabel tags, as a DatasetDict of the same 70/15/15 split and as an IterableDataset must give the same
metrics and the same exported weights, byte for byte; jaxft.evaluate on the export must give the run's test
metrics. A second small run learns "X lives in Paris" sentences, so the pipeline can be compared entity by
entity with transformers' token-classification pipeline on the same export.
"""

import io
import json
import os
import random
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import datasets
import numpy as np
import pytest

import jaxft
from jaxft.api import with_label_names
from jaxft.config import ConfigError, validate
from jaxft.data.errors import DataError
from jaxft.data.ner_readers import read_conll, read_hf_dataset, read_sentences
from jaxft.data.text_readers import read_squad, read_text_examples
from jaxft.main import SUBCOMMANDS, main

REPO = Path(__file__).parent.parent
SMALL = {"data.max_length": 32, "data.bucket_multiple": 32, "train.batch_size": 8, "train.num_epochs": 0,
         "train.max_steps": 4, "train.log_every": 2, "optim.learning_rate": 1e-3}


def overrides_for(model: Path) -> dict:
    return {"model.name_or_path": str(model), "train.progress_bar": False, **SMALL}


def cli(*args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "jaxft.main", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, **kwargs)


def ner_dataset(conll: Path) -> datasets.Dataset:
    """The sentences of a CoNLL file as a Dataset whose tags are ClassLabel ids (names sorted)."""
    sentences = read_conll(conll)
    names = sorted({tag for s in sentences for tag in s.tags})
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    return datasets.Dataset.from_dict({"tokens": [s.tokens for s in sentences],
                                       "tags": [[names.index(t) for t in s.tags] for s in sentences]},
                                      features=features)


def weights(workdir) -> bytes:
    return (Path(workdir) / "export" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, small_ner_file):
    """The command line on the CoNLL file (200 sentences: 140 / 30 / 30), stderr a pipe (no terminal), the
    progress bar on as by default."""
    workdir = tmp_path_factory.mktemp("api") / "cli"
    flags = [f"--config.{key}={value}" for key, value in overrides_for(tiny_bert).items()
             if key != "train.progress_bar"]
    done = cli("--config", "configs/ner.py", "--workdir", str(workdir), *flags,
               f"--config.data.train_file={small_ner_file}")
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done.stderr, json.loads((workdir / "results.json").read_text())


# ---------------------------------------------------------------------------------------------- datasets objects

def test_train_with_a_dataset_of_classlabel_tags_equals_the_file_run(reference, tiny_bert, small_ner_file, tmp_path):
    ref_dir, _, ref = reference
    ds = ner_dataset(small_ner_file)
    assert isinstance(ds.features["tags"].feature, datasets.ClassLabel)
    config = jaxft.recipe("ner", overrides_for(tiny_bert))
    results = jaxft.train(config, tmp_path / "run", train_dataset=ds)
    assert config.data.train_file == "packaged:tweets-ner"  # the caller's config is left alone
    assert (results["dev"]["sentences"], results["test"]["sentences"]) == (30, 30)  # the 70/15/15 policy
    assert results["dev"] == ref["dev"] and results["test"] == ref["test"]
    assert weights(tmp_path / "run") == weights(ref_dir)
    assert results["export_path"] == str(tmp_path / "run" / "export")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["train_file"] == str(tmp_path / "run" / "datasets" / "train")  # real data, resumable


def test_train_with_a_datasetdict_and_with_an_iterable_dataset(reference, tiny_bert, small_ner_file, tmp_path):
    ref_dir, _, ref = reference
    ds = ner_dataset(small_ner_file)
    splits = datasets.DatasetDict({"train": ds.select(range(140)), "validation": ds.select(range(140, 170)),
                                   "test": ds.select(range(170, 200))})
    by_dict = jaxft.train(jaxft.recipe("ner", overrides_for(tiny_bert)), tmp_path / "dict", train_dataset=splits)
    assert by_dict["dev"] == ref["dev"] and by_dict["test"] == ref["test"]
    assert weights(tmp_path / "dict") == weights(ref_dir)
    streamed = ds.to_iterable_dataset()
    assert isinstance(streamed, datasets.IterableDataset)
    by_stream = jaxft.train(jaxft.recipe("ner", overrides_for(tiny_bert)), tmp_path / "stream",
                            train_dataset=streamed)
    assert by_stream["dev"] == ref["dev"] and by_stream["test"] == ref["test"]
    assert weights(tmp_path / "stream") == weights(ref_dir)


def test_dataset_arguments_that_cannot_work_are_refused(tiny_bert, small_ner_file, tmp_path):
    ds = ner_dataset(small_ner_file)
    splits = datasets.DatasetDict({"train": ds, "test": ds})
    config = jaxft.recipe("ner", overrides_for(tiny_bert))
    with pytest.raises(ConfigError, match="validation_dataset is a DatasetDict"):
        jaxft.train(config, tmp_path / "a", train_dataset=ds, validation_dataset=splits)
    with pytest.raises(ConfigError, match="'test' split and test_dataset is given too"):
        jaxft.train(config, tmp_path / "b", train_dataset=splits, test_dataset=ds)
    with pytest.raises(ConfigError, match="need a train_dataset"):
        jaxft.train(config, tmp_path / "c", test_dataset=ds)
    with pytest.raises(ConfigError, match="differ from the ClassLabel names"):
        jaxft.train(jaxft.recipe("ner", {**overrides_for(tiny_bert), "data.label_names": "O,B-x,I-x"}),
                    tmp_path / "d", train_dataset=ds)


def test_save_to_disk_folders_and_objects_in_the_readers(tmp_path, small_ner_file):
    ds = ner_dataset(small_ner_file).select(range(5))
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    expected = read_conll(small_ner_file)[:5]
    for read in (read_sentences(tmp_path / "one"), read_hf_dataset(ds), read_hf_dataset(tmp_path / "dict", split="train"),
                 read_hf_dataset(ds.to_iterable_dataset())):
        assert [(s.tokens, s.tags) for s in read] == [(s.tokens, s.tags) for s in expected]
    assert read_sentences(tmp_path / "one")[3].source == f"{tmp_path / 'one'}:row 3"
    assert len(read_hf_dataset(tmp_path / "dict", split="test")) == 2
    with pytest.raises(DataError, match="no split 'validation'; the DatasetDict has splits: train, test"):
        read_hf_dataset(tmp_path / "dict", split="validation")
    config = jaxft.recipe("ner", {"data.train_file": str(tmp_path / "dict")})
    with pytest.raises(ConfigError, match="save_to_disk folder of a DatasetDict: set data.hf_dataset"):
        validate(config)
    with pytest.raises(ConfigError, match="data.hf_dataset: .* is a save_to_disk folder of one Dataset"):
        validate(jaxft.recipe("ner", {"data.train_file": "", "data.hf_dataset": str(tmp_path / "one")}))
    with pytest.raises(ConfigError, match="data.label_names names the integer tags / labels of datasets objects"):
        validate(jaxft.recipe("ner", {"data.label_names": "O,B-PER,I-PER"}))
    # integer tags without names: data.label_names names them (cast to ClassLabel before saving)
    plain = datasets.Dataset.from_dict({"tokens": [["John", "lives"]], "tags": [[1, 0]]})
    named = with_label_names(plain, jaxft.recipe("ner", {"data.label_names": "O,B-PER,I-PER"}))
    named.save_to_disk(str(tmp_path / "named"))
    assert read_sentences(tmp_path / "named")[0].tags == ["B-PER", "O"]
    # text classification and SQuAD rows from save_to_disk folders; ClassLabel ids read as their names
    reviews = datasets.Dataset.from_dict({"text": ["fine", "dull"], "label": [1, 0]},
                                         features=datasets.Features({"text": datasets.Value("string"),
                                                                     "label": datasets.ClassLabel(names=["neg", "pos"])}))
    reviews.save_to_disk(str(tmp_path / "reviews"))
    assert [(e.text, e.label) for e in read_text_examples(tmp_path / "reviews")] == [("fine", "pos"), ("dull", "neg")]
    squad = datasets.Dataset.from_dict({"id": ["q1"], "title": ["t"], "context": ["John lives in Paris."],
                                        "question": ["Where?"], "answers": [{"text": ["Paris"], "answer_start": [14]}]})
    squad.save_to_disk(str(tmp_path / "squad"))
    assert read_squad(tmp_path / "squad")[0].answers == [("Paris", 14)]


# ---------------------------------------------------------------------------------------------- evaluate

def test_evaluate_gives_the_training_runs_test_metrics(reference, small_ner_file, tmp_path, capsys):
    ref_dir, _, ref = reference
    sentences = small_ner_file.read_text(encoding="utf-8").split("\n\n")
    (tmp_path / "test.conll").write_text("\n\n".join(sentences[170:200]) + "\n", encoding="utf-8")
    export = ref_dir / "export"
    assert jaxft.evaluate(export, tmp_path / "test.conll") == ref["test"]
    assert jaxft.evaluate(str(export), ner_dataset(small_ner_file).select(range(170, 200))) == ref["test"]
    # the subcommand: the same metrics as JSON on stdout, the table on stderr
    assert main(["jaxft", "evaluate", "--model", str(export), "--data", str(tmp_path / "test.conll"),
                 "--output", str(tmp_path / "metrics.json")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == ref["test"] == json.loads((tmp_path / "metrics.json").read_text())
    assert "test results" in err and "micro avg" in err
    assert main(["jaxft", "evaluate", "--model", str(export), "--data", str(tmp_path / "missing.conll")]) == 2
    assert "missing.conll" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- pipeline

PEOPLE = ["John", "Mary", "Ahmed", "Li", "Sofia", "Peter", "Anna", "Carlos"]
PLACES = ["Paris", "London", "Berlin", "Tokyo", "Madrid", "Rome", "Cairo", "Lima"]
VERBS = ["lives in", "works in", "moved to", "visited"]


@pytest.fixture(scope="module")
def places_export(tmp_path_factory, tiny_bert_no_dropout):
    """A tiny model trained on "<person> <verb> <place> ." sentences (240 of them, 44 steps)."""
    rng = random.Random(0)
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    rows = {"tokens": [], "tags": []}
    for _ in range(240):
        verb = rng.choice(VERBS).split()
        rows["tokens"].append([rng.choice(PEOPLE), *verb, rng.choice(PLACES), "."])
        rows["tags"].append([3] + [0] * len(verb) + [1, 0])
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    config = jaxft.recipe("ner", {"model.name_or_path": str(tiny_bert_no_dropout), "data.max_length": 16,
                                  "train.batch_size": 16, "train.num_epochs": 4, "optim.learning_rate": 3e-3,
                                  "train.progress_bar": False})
    results = jaxft.train(config, tmp_path_factory.mktemp("places") / "run",
                          train_dataset=datasets.Dataset.from_dict(rows, features=features))
    assert results["test"]["f1"] == 1.0
    return Path(results["export_path"])


def test_ner_pipeline_matches_the_transformers_pipeline(places_export):
    import transformers

    text = "John lives in Paris."
    ours = jaxft.pipeline(places_export)(text)
    paris = [e for e in ours if e["word"] == "Paris"]
    assert len(paris) == 1 and (paris[0]["entity_group"], paris[0]["start"], paris[0]["end"]) == ("LOC", 14, 19)
    theirs = transformers.pipeline("token-classification", model=str(places_export),
                                   aggregation_strategy="first")(text)
    assert [(e["entity_group"], e["start"], e["end"]) for e in ours] == \
        [(e["entity_group"], e["start"], e["end"]) for e in theirs] == [("PER", 0, 4), ("LOC", 14, 19)]
    np.testing.assert_allclose([e["score"] for e in ours], [float(e["score"]) for e in theirs], atol=1e-5)
    # the word: ours is the text's slice; transformers decodes the (uncased) sub-tokens
    assert [e["word"].lower() for e in ours] == [e["word"] for e in theirs]
    assert [e["word"] for e in ours] == [text[e["start"]:e["end"]] for e in ours]
    two = jaxft.pipeline(places_export)([text, "Mary visited Tokyo"])
    assert two[0] == ours and [e["word"] for e in two[1]] == ["Mary", "Tokyo"]


def test_classification_and_fill_mask_pipelines_match_transformers(tmp_path, tiny_bert):
    import transformers
    from tiny_exports import CLS_LABELS, make_export

    from jaxft.models import from_pretrained, load_tokenizer, save_pretrained

    texts = ["a gripping film", "dull and long"]
    export = make_export(tmp_path / "cls", tiny_bert, "sequence-classification", CLS_LABELS, head_scale=2.0)
    ours = jaxft.pipeline(export)
    theirs = transformers.pipeline("text-classification", model=str(export))
    one, both = ours(texts[0]), ours(texts)
    assert [set(one[0])] == [{"label", "score"}] and len(both) == 2
    reference = theirs(texts)
    assert [r["label"] for r in both] == [r["label"] for r in reference]
    np.testing.assert_allclose([r["score"] for r in both], [r["score"] for r in reference], atol=1e-5)
    assert [r["label"] for r in ours(texts[0], top_k=None)] == [r["label"] for r in theirs(texts[0], top_k=None)]

    mlm = from_pretrained(tiny_bert, task="masked-lm")
    save_pretrained(mlm, tmp_path / "mlm", tokenizer=load_tokenizer(tiny_bert))
    filled = jaxft.pipeline(tmp_path / "mlm")("paris is the [MASK] of france.")
    reference = transformers.pipeline("fill-mask", model=str(tmp_path / "mlm"))("paris is the [MASK] of france.")
    assert [(r["token"], r["token_str"], r["sequence"]) for r in filled] == \
        [(r["token"], r["token_str"], r["sequence"]) for r in reference]
    np.testing.assert_allclose([r["score"] for r in filled], [r["score"] for r in reference], atol=1e-5)


def test_question_answering_pipeline_keys(tmp_path, tiny_bert):
    from tiny_exports import make_export

    export = make_export(tmp_path / "qa", tiny_bert, "question-answering")
    pipe = jaxft.pipeline(export)
    answer = pipe(question="Where does John live?", context="John lives in Paris.")
    assert set(answer) == {"answer", "score", "start", "end"}
    assert "John lives in Paris."[answer["start"]:answer["end"]] == answer["answer"]
    assert pipe([{"question": "Who?", "context": "John lives in Paris."}] * 2) == [
        pipe({"question": "Who?", "context": "John lives in Paris."})] * 2


# ---------------------------------------------------------------------------------------------- recipes

def test_recipes_are_importable_and_equal_the_config_files():
    from jaxft.config import load_recipe
    from jaxft.recipes import NAMES

    for name in NAMES:
        assert jaxft.recipe(name).to_json() == load_recipe(REPO / "configs" / f"{name}.py").to_json(), name
    assert jaxft.recipe("ner", {"train.num_epochs": 3}).train.num_epochs == 3
    with pytest.raises(ConfigError, match=r"unknown recipe 'nerr' \(did you mean 'ner'\?\)"):
        jaxft.recipe("nerr")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lr' \(did you mean 'optim.learning_rate'\?\)"):
        jaxft.recipe("ner", {"optim.lr": 3e-5})


def test_import_jaxft_loads_no_jax():
    done = subprocess.run([sys.executable, "-c", "import sys, jaxft; print(sorted(m for m in ('jax', 'datasets', "
                           "'transformers') if m in sys.modules)); print(callable(jaxft.train))"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stderr


# ---------------------------------------------------------------------------------------------- command line

def test_help_lists_the_subcommands():
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    for name in ("train", *SUBCOMMANDS):
        assert re.search(rf"^  {name} ", done.stdout, re.MULTILINE), name
    for name in ("train", *SUBCOMMANDS):  # each command's own help, in this process
        out = io.StringIO()
        with redirect_stdout(out):
            try:
                status = main(["jaxft", name, "--help"])
            except SystemExit as exit_:  # argparse's --help
                status = exit_.code
        assert status == 0 and "usage: python -m jaxft.main" in out.getvalue(), name


def test_config_help_prints_each_key_with_its_meaning(capsys):
    assert main(["jaxft", "--config", "configs/ner.py", "--config.optim.learning_rate=3e-5", "--help"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"^\* optim\.learning_rate = 3e-05 +# peak learning rate \(resume\)$", shown, re.MULTILINE)
    assert re.search(r"^  optim\.schedule = 'linear' +# decay after warm-up \[linear \| cosine \| constant\]",
                     shown, re.MULTILINE)
    assert main(["jaxft", "config", "--config", "configs/ner.py", "--config.optim.learning_rate=3e-5"]) == 0
    assert capsys.readouterr().out == shown


def test_a_cli_typo_gets_a_suggestion(capsys):
    assert main(["jaxft", "--config", "configs/ner.py", "--config.optim.lr=3e-5"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: unknown config key 'optim.lr' (did you mean 'optim.learning_rate'?)"
    assert main(["jaxft", "--config", "configs/ner.py", "--config.trian.batch_size=8"]) == 2
    assert "did you mean 'train.batch_size'?" in capsys.readouterr().err


def test_a_log_without_a_terminal_shows_training_and_evaluation(reference):
    workdir, stderr, results = reference
    lines = re.findall(r"step (\d+)/4 \(epoch [\d.]+\) loss ([\d.]+) lr [\d.]+e[-+]\d+ [\d,]+ tokens/s eta \d+m\d\ds",
                       stderr)
    assert [int(step) for step, _ in lines] == [2, 4]  # one line per train.log_every
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [f"{r['loss']:.4f}" for r in logged if r["split"] == "train"] == [loss for _, loss in lines]
    assert re.search(r"evaluating test: \d+ rows in \d+ batch(es)?", stderr) and "evaluated test in" in stderr
    assert "━" not in stderr and "━" not in (workdir / "train.log").read_text()  # no progress bar in a log
    assert re.findall(r"step \d+/4 .* loss", (workdir / "train.log").read_text())
