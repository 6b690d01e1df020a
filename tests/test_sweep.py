"""Hyper-parameter sweeps: grid and seeded random trials, a failing trial, kill-and-restart, the best config."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxft import sweep_space
from jaxft.sweep_space import choice, grid, loguniform, randint, uniform

REPO = Path(__file__).parent.parent


def test_grid_is_the_product_in_key_order():
    space = {"optim.learning_rate": grid([1e-3, 3e-3]), "train.num_epochs": grid([1, 2, 3]), "train.seed": 7}
    trials = sweep_space.trials(space)
    assert len(trials) == 6
    assert trials[0] == {"optim.learning_rate": 1e-3, "train.num_epochs": 1, "train.seed": 7}
    assert trials[1] == {"optim.learning_rate": 1e-3, "train.num_epochs": 2, "train.seed": 7}
    assert trials[5] == {"optim.learning_rate": 3e-3, "train.num_epochs": 3, "train.seed": 7}
    assert sweep_space.trials(space, 4) == trials[:4] and sweep_space.trials(space, 100) == trials
    assert sweep_space.swept_keys(space) == ["optim.learning_rate", "train.num_epochs"]


def test_random_trials_are_seeded_and_do_not_depend_on_their_number():
    space = {"optim.learning_rate": loguniform(1e-5, 1e-3), "optim.warmup_ratio": uniform(0.0, 0.2),
             "train.batch_size": choice([8, 16]), "train.num_epochs": randint(1, 3), "model.dtype": grid(["float32"])}
    first, again = sweep_space.trials(space, 20, seed=1), sweep_space.trials(space, 20, seed=1)
    assert first == again and len(first) == 20
    assert sweep_space.trials(space, 5, seed=1) == first[:5]  # a longer sweep extends a shorter one
    assert sweep_space.trials(space, 20, seed=2) != first
    assert len(sweep_space.trials(space)) == sweep_space.DEFAULT_RANDOM_TRIALS
    for trial in first:
        assert 1e-5 <= trial["optim.learning_rate"] <= 1e-3 and 0 <= trial["optim.warmup_ratio"] <= 0.2
        assert trial["train.batch_size"] in (8, 16) and trial["train.num_epochs"] in (1, 2, 3)
        assert trial["model.dtype"] == "float32"
    rates = sorted(t["optim.learning_rate"] for t in first)
    assert rates[0] < 1e-4 < rates[-1]  # log-uniform: both decades are visited
    assert {t["train.num_epochs"] for t in first} == {1, 2, 3}


def test_mixed_space_cycles_the_grid():
    space = {"train.num_epochs": grid([1, 2]), "optim.learning_rate": loguniform(1e-4, 1e-3)}
    trials = sweep_space.trials(space, 4, seed=0)
    assert [t["train.num_epochs"] for t in trials] == [1, 2, 1, 2]
    assert len({t["optim.learning_rate"] for t in trials}) == 4


def test_best_trial_by_metric_direction():
    from jaxft.sweep import best_row, metric_mode, resolve_metric
    rows = [{"trial": "trial-000", "score": 0.4}, {"trial": "trial-001", "score": None},
            {"trial": "trial-002", "score": 0.6}, {"trial": "trial-003", "score": 0.6}]
    assert best_row(rows, "max")["trial"] == "trial-002"  # ties: the earlier trial
    assert best_row(rows, "min")["trial"] == "trial-000"
    assert best_row([{"trial": "trial-000", "score": None}], "max") is None
    assert metric_mode("perplexity", "auto") == "min" and metric_mode("f1", "auto") == "max"
    assert resolve_metric("", {"main_metric": "accuracy"}) == ("dev", "accuracy")
    assert resolve_metric("", {}) == ("dev", "f1") and resolve_metric("test.f1", {}) == ("test", "f1")


def test_bad_space_files_are_one_line_errors(tmp_path):
    missing = tmp_path / "none.py"
    with pytest.raises(sweep_space.SpaceError, match="not found"):
        sweep_space.load_space(missing)
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(sweep_space.SpaceError, match="space()"):
        sweep_space.load_space(tmp_path / "empty.py")
    with pytest.raises(sweep_space.SpaceError):
        loguniform(0, 1)


def test_unknown_key_is_refused_before_any_trial(tmp_path, tiny_bert, small_ner_file):
    space = tmp_path / "space.py"
    space.write_text("from jaxft.sweep_space import grid\n\ndef space():\n"
                     "    return {'optim.learning_rat': grid([1e-3])}\n")
    done = run_sweep(tmp_path / "sweep", space, tiny_bert, small_ner_file)
    assert done.returncode == 2 and "unknown config key 'optim.learning_rat'" in done.stderr
    assert not list((tmp_path / "sweep").glob("trial-*"))


# ---------------------------------------------------------------------------------------------- sweeps

def sweep_args(workdir, space, model, data, *extra):
    return [sys.executable, "-m", "jaxft.main", "sweep", "--config", str(REPO / "configs" / "ner.py"),
            "--space", str(space), "--workdir", str(workdir), f"--config.model.name_or_path={model}",
            f"--config.data.train_file={data}", "--config.data.max_length=64", "--config.train.batch_size=8",
            "--config.train.checkpoint_every=4", *extra]


def run_sweep(workdir, space, model, data, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(sweep_args(workdir, space, model, data, *extra), capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=1200)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    # trial-001 asks for a learning rate the config refuses: it fails, the sweep goes on
    path = tmp_path_factory.mktemp("space") / "space.py"
    path.write_text("from jaxft.sweep_space import grid\n\ndef space():\n"
                    "    return {'optim.learning_rate': grid([1e-3, 2.0, 3e-3]), 'train.num_epochs': grid([2])}\n")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, space_file, tiny_bert, small_ner_file):
    workdir = tmp_path_factory.mktemp("sweep") / "sweep"
    done = run_sweep(workdir, space_file, tiny_bert, small_ner_file)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def read_table(workdir):
    with open(workdir / "results.csv") as f:
        return list(csv.DictReader(f))


def test_failed_trial_is_recorded_and_the_sweep_goes_on(uninterrupted):
    rows = read_table(uninterrupted)
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    failed = json.loads((uninterrupted / "trial-001" / "failed.json").read_text())
    assert failed["returncode"] == 2 and "optim.learning_rate must be in (0, 1)" in failed["stderr_tail"]
    assert "learning_rate" in rows[1]["error"]
    assert all(0 <= float(rows[i]["score"]) <= 1 for i in (0, 2))
    for name in ("results.md", "results.jsonl", "sweep.png", "best_config.py", "best_command.txt"):
        assert (uninterrupted / name).exists(), name
    results = [json.loads((uninterrupted / f"trial-00{i}" / "results.json").read_text()) for i in (0, 2)]
    assert [float(rows[i]["score"]) for i in (0, 2)] == pytest.approx([r["dev"]["f1"] for r in results], abs=1e-6)
    best = [r for r in rows if r["best"] == "1"]
    assert len(best) == 1 and float(best[0]["score"]) == max(float(rows[i]["score"]) for i in (0, 2))


def test_killed_sweep_resumes_to_the_same_table(uninterrupted, space_file, tiny_bert, small_ner_file, tmp_path):
    workdir = tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(sweep_args(workdir, space_file, tiny_bert, small_ner_file), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    # kill it once trial-002 (the last) has a checkpoint but no results: trial-000 and -001 are done by then
    while time.time() < deadline:
        checkpoints = workdir / "trial-002" / "checkpoints"
        if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        if process.poll() is not None:
            pytest.fail(f"sweep ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    assert not (workdir / "trial-002" / "results.json").exists()  # the trial died with the sweep
    restarted = run_sweep(workdir, space_file, tiny_bert, small_ner_file)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "1 finished, 1 failed, 1 to run" in restarted.stderr
    assert "trial-002 resumed" in restarted.stderr
    assert "resumed from checkpoint" in (workdir / "trial-002" / "stderr.log").read_text()
    ours, reference = read_table(workdir), read_table(uninterrupted)
    for row, expected in zip(ours, reference):
        for column in ("trial", "status", "optim.learning_rate", "train.num_epochs", "score", "test_score", "best"):
            assert row[column] == expected[column], column
    # the resumed trial is the uninterrupted one, bit for bit (tiny models score F1 0, so check the weights)
    from safetensors.numpy import load_file
    resumed, whole = (load_file(str(w / "trial-002" / "export" / "model.safetensors")) for w in (workdir, uninterrupted))
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert (resumed[key] == whole[key]).all(), key
    results = [json.loads((w / "trial-002" / "results.json").read_text()) for w in (workdir, uninterrupted)]
    assert results[0]["dev"] == results[1]["dev"] and results[0]["test"] == results[1]["test"]


def test_best_config_runs_and_reproduces_the_best_trial(uninterrupted, tmp_path):
    rows = read_table(uninterrupted)
    best = next(r for r in rows if r["best"] == "1")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxft.main", "--config", str(uninterrupted / "best_config.py"),
                           "--workdir", str(tmp_path / "best"), "--config.train.progress_bar=False"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    assert results["dev"]["f1"] == pytest.approx(float(best["score"]), abs=1e-6)
    assert "--config.optim.learning_rate=" in (uninterrupted / "best_command.txt").read_text()
