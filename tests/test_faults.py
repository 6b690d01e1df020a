"""Preemption and damage harness: a real (tiny) NER run is killed at seeded random points, resumed with the
same command, and must end bit-identical (CPU, float32) to a run that never stopped: export bytes, final
checkpoint arrays, metrics.jsonl (minus wall-clock fields) and results.

Faults: SIGKILL during a train step, during an async checkpoint write, during evaluation, during export
(targeted with JAXFT_FAULT_AT through the run hooks of tests/faults.py) and at purely time-randomised moments;
SIGTERM (graceful preemption: checkpoint, exit 75); damaged checkpoints (truncated, bit-flipped, zero-length, missing files,
garbage meta) fall back to the previous good one; a workdir of another config is refused; a full disk
during a save is reported and the previous checkpoint resumes; NaN/inf steps stop the run or are skipped.
"""

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_bert

REPO = Path(__file__).parent.parent
SEED = 20261128
# Length-bucketed rows (data.packing=False), so the step arithmetic below counts sentence batches; a killed
# and resumed run of the packed default is tests/test_ner_job.py's.
TOTAL_STEPS = 36      # 140 training sentences / batch 8 = 18 steps an epoch, 2 epochs
CHECKPOINT_EVERY = 3
EVAL_STEPS = (18, 36)
WALL_CLOCK_KEYS = {"tokens_per_sec", "train_seconds"}
KILLS = {"targeted": 0, "timed": 0, "sigterm": 0}   # kill points that really landed, checked at the end


def train_command(workdir, model, data, *extra):
    return [sys.executable, "-m", "jaxft.main", "--config", str(REPO / "configs" / "ner.py"), "--workdir", str(workdir),
            f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
            "--config.data.max_length=64", "--config.data.packing=False", "--config.train.batch_size=8",
            "--config.train.num_epochs=2", "--config.optim.learning_rate=1e-3", "--config.train.progress_bar=False",
            f"--config.train.checkpoint_every={CHECKPOINT_EVERY}", "--config.train.log_every=5", *extra]


def env_with(**extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAXFT_FAULT_AT", None)
    env.update(extra)
    return env


FAULT_RUNNER = [str(REPO / "tests" / "fault_run.py")]  # `python -m jaxft.main` with tests/faults.py's hooks


def run(command, fault: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The command as given, or with a planned fault through the fault runner (same flags, same run)."""
    env = env_with(**({"JAXFT_FAULT_AT": fault} if fault else {}))
    if fault:
        assert command[1:3] == ["-m", "jaxft.main"], command
        command = command[:1] + FAULT_RUNNER + command[3:]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, **kwargs)


def finished_checkpoints(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def checkpoint_arrays(workdir: Path, step: int) -> dict:
    import jax
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}


def metric_lines(workdir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_CLOCK_KEYS} for line in lines]


def assert_same_run(workdir: Path, reference: Path) -> None:
    """Bit-identical outcome: export bytes, the last checkpoint's arrays, metrics and results."""
    assert (workdir / "export" / "model.safetensors").read_bytes() == \
        (reference / "export" / "model.safetensors").read_bytes()
    assert (workdir / "export" / "config.json").read_text() == (reference / "export" / "config.json").read_text()
    ours, theirs = checkpoint_arrays(workdir, TOTAL_STEPS), checkpoint_arrays(reference, TOTAL_STEPS)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key
    assert metric_lines(workdir) == metric_lines(reference)
    results, expected = (json.loads((w / "results.json").read_text()) for w in (workdir, reference))
    for key in ("dev", "test", "best_step", "steps", "train_tokens", "skipped_nonfinite_steps"):
        assert results[key] == expected[key], key


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert, small_ner_file):
    """The uninterrupted reference run, shared by every test here."""
    reference = tmp_path_factory.mktemp("reference")
    done = run(train_command(reference, tiny_bert, small_ner_file))
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line["step"] for line in metric_lines(reference) if line["split"] == "train"]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 36]
    return reference, (tiny_bert, small_ner_file)


# ---------------------------------------------------------------------------------------------- kills

def remaining_work(done_step: int) -> dict[str, int]:
    """How many occurrences of each phase a process resumed from `done_step` still goes through."""
    saves = len([s for s in range(done_step + 1, TOTAL_STEPS + 1) if s % CHECKPOINT_EVERY == 0])
    evaluations = len([s for s in EVAL_STEPS if s > done_step]) + 2   # dev evaluations, then final test + dev
    return {"step": TOTAL_STEPS - done_step, "save": saves, "eval": 2 * evaluations,  # 30 sentences: 2 batches
            "export": 3}                                                              # weights, config, tokenizer


def targeted_fault(rng: random.Random, done_step: int) -> str:
    work = remaining_work(done_step)
    phases = [p for p in ("step", "step", "save", "save", "eval", "export") if work[p] > 0]
    phase = rng.choice(phases)
    spec = f"{phase}:{rng.randint(1, work[phase])}"
    if phase == "save" and rng.random() < 0.5:
        spec += f"@{rng.uniform(0.0, 0.3):.3f}"   # land inside the async write rather than at its start
    return spec


def test_targeted_kills_resume_bit_identical(setup, tmp_path):
    reference, (model, data) = setup
    command = train_command(tmp_path, model, data)
    rng = random.Random(SEED)
    faults = []
    for _ in range(11):
        fault = targeted_fault(rng, (finished_checkpoints(tmp_path) or [0])[-1])
        done = run(command, fault)
        assert done.returncode == -signal.SIGKILL, (fault, done.returncode, done.stderr[-3000:])
        faults.append(fault)
    KILLS["targeted"] += len(faults)
    assert {f.split(":")[0] for f in faults} >= {"step", "save", "eval"}, faults
    done = run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path, reference)
    record(tmp_path, "targeted", faults)


def test_time_randomised_kills_resume_bit_identical(setup, tmp_path):
    """SIGKILL at a random moment after training starts (compiling, stepping, saving, evaluating, exporting)."""
    reference, (model, data) = setup
    rng = random.Random(SEED + 1)
    kills, delays, chains = 0, [], 0
    workdir = tmp_path / f"chain{chains}"
    command = train_command(workdir, model, data)
    log = tmp_path / "stderr.txt"
    for _ in range(14):   # processes at most: a chain that finishes first is checked and a new one started
        if kills >= 9:
            break
        with open(log, "w") as stderr:
            process = subprocess.Popen(command, cwd=REPO, env=env_with(), stdout=subprocess.DEVNULL, stderr=stderr)
            deadline = time.time() + 300
            while "mesh (" not in log.read_text() and process.poll() is None and time.time() < deadline:
                time.sleep(0.05)   # the start-up (imports, data, model) is not what this test is about
            delay = rng.uniform(0.0, 4.0)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            delays.append(round(delay, 2))
        else:
            assert process.returncode == 0, log.read_text()[-3000:]
            assert_same_run(workdir, reference)
            chains += 1
            workdir = tmp_path / f"chain{chains}"
            command = train_command(workdir, model, data)
    KILLS["timed"] += kills
    done = run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(workdir, reference)
    record(tmp_path, "timed", delays)


def test_sigterm_saves_a_checkpoint_and_exits_75(setup, tmp_path):
    reference, (model, data) = setup
    command = train_command(tmp_path, model, data)
    first = run(command, "sigterm:7")            # between steps 7 and 8: no checkpoint is due there
    assert first.returncode == 75, first.stderr[-3000:]
    assert "SIGTERM received: checkpoint at step 7 is on disk" in first.stderr
    assert finished_checkpoints(tmp_path)[-1] == 7
    second = run(command, "sigterm:5")           # step 12: a checkpoint was due there anyway
    assert second.returncode == 75 and "resumed from checkpoint at step 7" in second.stderr
    assert finished_checkpoints(tmp_path)[-1] == 12
    KILLS["sigterm"] += 2
    done = run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path, reference)


def record(workdir: Path, kind: str, points: list) -> None:
    """What was tried, for docs/reliability.md (printed with pytest -s)."""
    print(f"\n[faults] {kind}: {len(points)} kill points: {points}")


def test_enough_kill_points_landed():
    """The harness promises at least 20 randomised SIGKILL points per CI run (plus SIGTERMs)."""
    if not all(KILLS.values()):
        pytest.skip("run together with the kill tests above")
    assert KILLS["targeted"] + KILLS["timed"] >= 20, KILLS


# ---------------------------------------------------------------------------------------------- damage

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_damaged_checkpoints_fall_back_to_the_previous_good_one(setup, tmp_path):
    reference, (model, data) = setup
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    steps = finished_checkpoints(workdir)
    assert steps == [18, 33, 36]   # latest 2 and the best (dev F1 ties go to the earlier step)
    truncate(largest_file(workdir / "checkpoints" / "36"))                 # a file cut short
    flip_bytes(largest_file(workdir / "checkpoints" / "33"))               # same size, other bytes
    done = run(train_command(workdir, model, data))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    assert "checkpoint at step 36 is damaged: file state/" in log and "truncated or overwritten" in log
    assert "checkpoint at step 33 is damaged: file state/" in log and "does not match its sha256" in log
    assert "fell back to the checkpoint at step 18 because step 36 (" in log
    assert "resumed from checkpoint at step 18" in log
    assert sorted(p.name.split("-")[0] for p in (workdir / "checkpoints_damaged").iterdir()) == ["33", "36"]
    assert_same_run(workdir, reference)


def test_every_checkpoint_damaged_starts_over(setup, tmp_path):
    """Zero-length files (a crash before the data reached the disk), a missing file, garbage meta JSON and
    an orbax-only check (no digest): nothing is restorable, so the run starts from step 0 and says so."""
    reference, (model, data) = setup
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    for path in (workdir / "checkpoints" / "36").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    (workdir / "checkpoints" / "33" / "state" / "manifest.ocdbt").unlink()
    meta = workdir / "checkpoints" / "18" / "meta" / "metadata"
    meta.write_text('{"position": ')
    (workdir / "checkpoints" / "18" / "jaxft_digest.json").unlink()   # left to orbax/json to notice
    done = run(train_command(workdir, model, data))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    assert "checkpoint at step 36 is damaged" in log and "checkpoint at step 33 is damaged: file state/manifest.ocdbt is missing" in log
    assert "checkpoint at step 18 is damaged" in log
    assert "no intact checkpoint left" in log and "training starts again from step 0" in log
    assert_same_run(workdir, reference)


def test_workdir_of_another_config_is_refused(setup, tmp_path, minilm_path):
    reference, (model, data) = setup
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    other_model = make_tiny_bert(tmp_path / "other-model", minilm_path, seed=1)
    done = run(train_command(workdir, other_model, data, "--config.optim.learning_rate=5e-4"))
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: workdir {workdir} holds checkpoints of a run with other settings")
    assert f"model.name_or_path ('{model}' there, '{other_model}' now)" in message
    assert "optim.learning_rate (0.001 there, 0.0005 now)" in message
    assert "Use another --workdir" in message
    assert finished_checkpoints(workdir) == [18, 33, 36]   # nothing was touched


def test_fingerprint_keys():
    from jaxft.config import base_config
    from jaxft.train.loop import fingerprint_differences, run_fingerprint

    class Task:
        labels = ["O", "B-PER", "I-PER"]
        train_rows = [{}] * 10

    config = base_config()
    saved = run_fingerprint(config, Task)
    assert saved["labels"] == Task.labels and saved["task"] == "token-classification"
    assert not any(key.startswith("mesh.") for key in saved)       # checkpoints restore onto any mesh
    config.mesh.data, config.train.log_every, config.train.stop_after_step = 2, 7, 3
    assert fingerprint_differences(saved, run_fingerprint(config, Task)) == []
    config.task = "sequence-classification"
    config.peft.method = "lora"

    class OtherLabels(Task):
        labels = ["O", "B-LOC", "I-LOC"]

    differences = fingerprint_differences(saved, run_fingerprint(config, OtherLabels))
    assert [d.split(" ")[0] for d in differences] == ["labels", "peft.method", "task"]

    long_path = "/tmp/" + "deeply/nested/" * 12 + "model"          # paths are shown whole, however long
    config.model.name_or_path = long_path

    class ManyLabels(Task):
        labels = ["O"] + [f"B-TYPE{i}" for i in range(40)]

    differences = dict(d.split(" ", 1) for d in fingerprint_differences(saved, run_fingerprint(config, ManyLabels)))
    assert repr(long_path) in differences["model.name_or_path"]
    assert differences["labels"].endswith("... now)") and len(differences["labels"]) < 300


# ---------------------------------------------------------------------------------------------- disk full

def test_full_disk_during_a_save_is_reported_and_the_run_resumes(setup, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 256 KiB (EFBIG, what a full disk looks like to
    orbax/tensorstore): the first checkpoint after step 6 cannot be written."""
    reference, (model, data) = setup
    command = train_command(tmp_path, model, data)
    first = run(command + ["--config.train.stop_after_step=6"])
    assert first.returncode == 0 and finished_checkpoints(tmp_path) == [3, 6], first.stderr[-3000:]

    def small_files_only():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    full = run(command, preexec_fn=small_files_only)
    assert full.returncode == 3, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert errors, full.stderr[-3000:]
    message = errors[-1]
    assert message.startswith(f"error: could not write the checkpoint at step 9 to {tmp_path / 'checkpoints'}")
    assert "The previous checkpoint, at step 6, is intact" in message
    assert finished_checkpoints(tmp_path) == [3, 6]
    done = run(command)
    assert done.returncode == 0 and "resumed from checkpoint at step 6" in done.stderr, done.stderr[-3000:]
    assert_same_run(tmp_path, reference)


# ---------------------------------------------------------------------------------------------- numerics

def test_nonfinite_step_stops_the_run_and_the_checkpoint_resumes(setup, tmp_path):
    reference, (model, data) = setup
    command = train_command(tmp_path, model, data)
    stopped = run(command, "nonfinite:8")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    message = stopped.stderr.strip().splitlines()[-1]
    assert message == ("error: the loss or the gradient was NaN or infinite in 1 step(s) between step 7 and step 9; "
                       "the run stops and the last checkpoint (step 6) predates it and is intact. Lower "
                       "optim.learning_rate, check the data, or set train.skip_nonfinite=True to skip such steps")
    assert finished_checkpoints(tmp_path) == [3, 6]
    assert all(np.isfinite(v).all() for v in checkpoint_arrays(tmp_path, 6).values() if v.dtype.kind == "f")
    done = run(command)   # the data was fine, the state on disk is good: the run ends as if nothing happened
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path, reference)


def test_nonfinite_steps_skipped_when_asked(setup, tmp_path):
    reference, (model, data) = setup
    done = run(train_command(tmp_path, model, data, "--config.train.skip_nonfinite=True"), "nonfinite:8,nonfinite:20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps 7-9: 1 step(s) with a NaN/inf loss or gradient were skipped (1 so far" in done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped_nonfinite_steps"] == 2 and results["steps"] == TOTAL_STEPS
    train = [line for line in metric_lines(tmp_path) if line["split"] == "train"]
    assert all(np.isfinite(line["loss"]) and np.isfinite(line["grad_norm"]) for line in train)
    arrays = checkpoint_arrays(tmp_path, TOTAL_STEPS)
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    straight = checkpoint_arrays(reference, TOTAL_STEPS)
    assert any(not np.array_equal(arrays[k], straight[k]) for k in arrays if "params" in k)  # 2 updates fewer


def test_batch_larger_than_the_data_is_a_config_error(setup, tmp_path):
    _, (model, data) = setup
    done = run(train_command(tmp_path, model, data, "--config.train.batch_size=100",
                             "--config.train.grad_accum_steps=2"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: train.batch_size x train.grad_accum_steps = 200 examples a step, but the training data has only "
        "140: lower train.batch_size")
