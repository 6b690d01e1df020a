"""Pod preemption with two processes on localhost (jax.distributed over gloo): SIGTERM reaches them 3 s apart,
both stop at the same step, write one common checkpoint and exit 75; the re-run ends bit-identical to a run
that was never preempted (export bytes and the last checkpoint's arrays)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port

REPO = Path(__file__).parent.parent
STEPS = 160  # long enough that SIGTERM lands mid-training (about 0.1-0.3 s a step here)
SIGNAL_GAP_S = 3.0


def start_pair(workdir, model, data) -> list[subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    processes = []
    for process_id in range(2):
        command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(workdir),
                   f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
                   "--config.data.max_length=64", "--config.train.batch_size=8", f"--config.train.max_steps={STEPS}",
                   "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
                   "--config.optim.learning_rate=1e-3", "--config.train.progress_bar=False",
                   "--config.mesh.distributed=True", f"--config.mesh.coordinator_address=127.0.0.1:{port}",
                   "--config.mesh.num_processes=2", f"--config.mesh.process_id={process_id}"]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes, timeout=600) -> list[tuple[int, str]]:
    return [(process.wait(timeout=timeout), process.stderr.read()) for process in processes]


def checkpoint_arrays(workdir: Path, step: int) -> dict:
    """The arrays of a checkpoint two processes wrote, read back whole into this one process."""
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import SingleDeviceSharding

    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", None) or metadata
    device = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}


def logged_steps(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count('"split": "train"') if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert, small_ner_file):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    for code, stderr in finish(start_pair(workdir, tiny_bert, small_ner_file)):
        assert code == 0, stderr[-3000:]
    return workdir


def test_sigterm_3s_apart_stops_both_processes_at_one_step_and_the_rerun_is_bit_identical(
        uninterrupted, tiny_bert, small_ner_file, tmp_path):
    processes = start_pair(tmp_path, tiny_bert, small_ner_file)
    deadline = time.time() + 300
    while logged_steps(tmp_path) < 10 and time.time() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    assert logged_steps(tmp_path) >= 10, "training did not start"
    processes[0].send_signal(signal.SIGTERM)
    signalled = time.time()
    time.sleep(SIGNAL_GAP_S)
    if processes[1].poll() is None:
        processes[1].send_signal(signal.SIGTERM)
    outcomes = finish(processes, timeout=120)
    assert time.time() - signalled < 60
    steps = []
    for code, stderr in outcomes:
        assert code == 75, stderr[-3000:]
        lines = [line for line in stderr.splitlines() if "SIGTERM received: checkpoint at step" in line]
        if lines:
            steps.append(int(lines[-1].split("checkpoint at step ")[1].split()[0]))
    assert steps and len(set(steps)) == 1, steps   # a warning: every process logs it
    assert "jaxft.train: mesh (" in outcomes[0][1] and "jaxft.train: mesh (" not in outcomes[1][1]  # INFO: process 0
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == steps[:1] and 10 <= saved[0] < STEPS

    for code, stderr in finish(start_pair(tmp_path, tiny_bert, small_ner_file)):
        assert code == 0, stderr[-3000:]
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == \
        (uninterrupted / "export" / "model.safetensors").read_bytes()
    ours, theirs = checkpoint_arrays(tmp_path, STEPS), checkpoint_arrays(uninterrupted, STEPS)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    results = [json.loads((w / "results.json").read_text()) for w in (tmp_path, uninterrupted)]
    assert results[0]["test"] == results[1]["test"] and results[0]["steps"] == STEPS
