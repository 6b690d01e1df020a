"""The NER main job end to end on a tiny model: resume after SIGKILL, export parity, predict, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import jaxft.models as jm
from conftest import make_tiny_bert

REPO = Path(__file__).parent.parent


def train_command(workdir, model, data, *extra):
    return [sys.executable, "-m", "jaxft.main", "--config", str(REPO / "configs" / "ner.py"), "--workdir", str(workdir),
            f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
            "--config.data.max_length=64", "--config.train.batch_size=8", "--config.train.num_epochs=3",
            "--config.optim.learning_rate=1e-3", "--config.train.progress_bar=False", *extra]


def run_cli(args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, **kwargs)


def finished_checkpoints(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def last_checkpoint_params(workdir: Path) -> dict:
    import orbax.checkpoint as ocp

    step = finished_checkpoints(workdir)[-1]
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return {k: np.asarray(v) for k, v in restored["params"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert, small_ner_file):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(train_command(workdir, tiny_bert, small_ner_file, "--config.train.checkpoint_every=4"))
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_resume_after_sigkill_is_bit_identical(uninterrupted, tiny_bert, small_ner_file, tmp_path):
    command = train_command(tmp_path, tiny_bert, small_ner_file, "--config.train.checkpoint_every=4")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not [s for s in finished_checkpoints(tmp_path) if s >= 8] and time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = finished_checkpoints(tmp_path)[-1]
    assert killed_at < 51  # 3 epochs of 17 packed batches: the run was really cut short

    resumed = run_cli(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint at step" in resumed.stderr

    ours, reference = last_checkpoint_params(tmp_path), last_checkpoint_params(uninterrupted)
    assert set(ours) == set(reference)
    for key in reference:
        np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)
    exported, exported_reference = (load_file(str(w / "export" / "model.safetensors")) for w in (tmp_path, uninterrupted))
    for key in exported_reference:
        np.testing.assert_array_equal(exported[key], exported_reference[key], err_msg=key)
    results, results_reference = (json.loads((w / "results.json").read_text()) for w in (tmp_path, uninterrupted))
    assert results["test"] == results_reference["test"] and results["best_step"] == results_reference["best_step"]
    dev_lines = [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"dev"' in l]
    assert len(dev_lines) == 3  # one evaluation per epoch, none duplicated by the resume


def test_workdir_has_the_documented_files(uninterrupted):
    for name in ("config.json", "metrics.jsonl", "results.json", "training_curves.png", "train.log",
                 "export/config.json", "export/model.safetensors", "export/tokenizer.json"):
        assert (uninterrupted / name).exists(), name
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
    results = json.loads((uninterrupted / "results.json").read_text())
    for key in ("dev", "test", "trainable_params", "total_params", "train_seconds"):
        assert key in results
    assert 0.0 <= results["test"]["f1"] <= 1.0 and "per_type" in results["test"]
    train_lines = [json.loads(l) for l in (uninterrupted / "metrics.jsonl").read_text().splitlines()
                   if '"train"' in l]
    assert [l["step"] for l in train_lines] == [20, 40, 51]  # every log_every=20 steps, and the last step


def test_export_loads_in_pytorch_with_same_predictions(uninterrupted):
    export = uninterrupted / "export"
    ours = jm.from_pretrained(export, task=jm.TOKEN_CLASSIFICATION)
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(export).eval()
    tokenizer = jm.load_tokenizer(export)
    batch = tokenizer(["Empire State Building = ESB .", "@paulwalk It 's the view from where I 'm living"],
                      padding=True, return_tensors="np")
    our_logits = np.asarray(ours(batch["input_ids"], batch["attention_mask"]))
    with torch.no_grad():
        their_logits = theirs(input_ids=torch.tensor(batch["input_ids"]),
                              attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    assert np.abs(our_logits[real] - their_logits[real]).max() < 1e-4
    assert (our_logits.argmax(-1)[real] == their_logits.argmax(-1)[real]).all()
    assert theirs.config.id2label[0] == "O" and len(theirs.config.id2label) == 21


def test_predict_offsets_point_into_the_input(tmp_path, minilm_path):
    model_dir = make_tiny_bert(tmp_path / "model", minilm_path)
    model = jm.from_pretrained(model_dir, task=jm.TOKEN_CLASSIFICATION, id2label=["O", "B-X", "I-X"])
    model.classifier.bias.set_value(np.array([0.0, 50.0, 0.0], np.float32))  # every word opens an entity
    jm.save_pretrained(model, model_dir, tokenizer=jm.load_tokenizer(model_dir))
    lines = ["Zoë  went to  São Paulo 🙂 today", "\tnaïve café\u200b  東京", "x " * 300]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run_cli([sys.executable, "-m", "jaxft.main", "predict", "--model", str(model_dir),
                    "--input", str(tmp_path / "in.txt"), "--max-length", "32"])
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["text"] for o in outputs] == lines
    # the words are the tokenizer's pre-tokenizer's (as in the HF pipeline): BERT's normalizer drops the
    # zero-width space and splits CJK characters
    expected = [["Zoë", "went", "to", "São", "Paulo", "🙂", "today"], ["naïve", "café", "東", "京"], ["x"] * 300]
    for line, output, words in zip(lines, outputs, expected):
        assert len(output["entities"]) == len(words)  # every word tagged, also past the 32-token window
        for word, entity in zip(words, output["entities"]):
            assert line[entity["start"]:entity["end"]] == entity["text"] == word
            assert entity["type"] == "X" and 0.99 < entity["score"] <= 1.0


@pytest.mark.parametrize("flag, message", [
    ("--config.data.trian_file=x.conll", "unknown config key 'data.trian_file' (did you mean 'data.train_file'?)"),
    ("--config.train.batch_size=abc", "invalid literal for int()"),
    ("--config.data.train_file=/no/such/file.conll", "config key 'data.train_file': file not found"),
    ("--config.ner.tag_scheme=BIOX", "config key 'ner.tag_scheme' must be one of auto, BIO, IOB1, IOBES, BILOU"),
    ("--config.train.num_epochs=0", "train.num_epochs and train.max_steps are both 0"),
])
def test_config_errors_are_one_clear_line(flag, message, tmp_path):
    done = run_cli([sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path),
                    flag], timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_data_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris\tB-LOC\nis\n", encoding="utf-8")
    done = run_cli([sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path / "w"),
                    f"--config.data.train_file={bad}"], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2:")


def test_predict_reads_conll_tokens(uninterrupted, tmp_path):
    conll = tmp_path / "in.conll"
    conll.write_text("-DOCSTART-\tO\n\nEmpire\tB-facility\nState\tI-facility\n\n@paulwalk\nIt\n's\n", encoding="utf-8")
    done = run_cli([sys.executable, "-m", "jaxft.main", "predict", "--model", str(uninterrupted / "export"),
                    "--input", str(conll), "--format", "conll"])
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["text"] for o in outputs] == ["Empire State", "@paulwalk It 's"]
    for output in outputs:
        for entity in output["entities"]:
            assert output["text"][entity["start"]:entity["end"]] == entity["text"]


class _SlowEvaluationClock:
    """perf_counter for jaxft.train.loop that jumps an hour at every evaluation batch, as if evaluating were
    very slow: the run's train_seconds must not see the jumps."""
    HOUR = 3600.0

    def __init__(self):
        self.jumped = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.jumped

    def after_eval_batch(self) -> None:
        self.jumped += self.HOUR


def test_train_seconds_exclude_evaluation(monkeypatch, tiny_bert, small_ner_file, tmp_path):
    from jaxft.main import main
    from jaxft.train import loop
    from jaxft.train.hooks import Hooks

    clock = _SlowEvaluationClock()

    class JumpAtEvaluation(Hooks):
        def after_eval_batch(self) -> None:
            clock.after_eval_batch()

    monkeypatch.setattr(loop, "time", clock)
    args = train_command(tmp_path, tiny_bert, small_ner_file)[2:]  # drop the interpreter and -m
    assert main(["jaxft", *args[1:]], hooks=JumpAtEvaluation()) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert clock.jumped >= 3 * clock.HOUR  # three dev evaluations (one per epoch) ran inside the loop
    assert 0.0 < results["train_seconds"] < clock.HOUR, results["train_seconds"]
