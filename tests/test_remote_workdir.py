"""--workdir gs://...: a real run against a local Cloud Storage emulator (tests/gcs_emulator.py, in memory),
reached by every client the way it reaches GCS: etils/fsspec through gcsfs (STORAGE_EMULATOR_HOST) and
orbax's tensorstore (TENSORSTORE_GCS_HTTP_URL). Checkpoints, the fingerprint, config.json, results.json,
metrics.jsonl and the export land in the bucket, a stopped run resumes from there and ends bit-identical to a
local run, and no local `gs:` folder is ever created. An unreachable bucket fails in one line."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).parent.parent
BUCKET = "jaxft-test"


@pytest.fixture(scope="module")
def emulator():
    pytest.importorskip("gcp_storage_emulator")
    pytest.importorskip("gcsfs")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "gcs_emulator.py"), str(port), BUCKET],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}
    server.terminate()
    server.wait(timeout=10)


def command(workdir, model, data, *extra):
    return [sys.executable, "-m", "jaxft.main", "--config", str(REPO / "configs" / "ner.py"), "--workdir", str(workdir),
            f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
            "--config.data.max_length=64", "--config.train.batch_size=8", "--config.train.max_steps=12",
            "--config.train.eval_every=6", "--config.optim.learning_rate=1e-3", "--config.train.log_every=3",
            "--config.train.progress_bar=False", *extra]


def run(args, env_extra, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXFT_STAGING_DIR": str(tmp_path / "staging"), **env_extra}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def bucket(emulator_env, path: str):
    """An epath.Path into the emulator's bucket, from this (test) process."""
    os.environ.update(emulator_env)
    from etils import epath
    return epath.Path(f"gs://{BUCKET}/{path}")


def test_a_gs_workdir_holds_the_run_and_resumes_from_it(emulator, tiny_bert, small_ner_file, tmp_path):
    workdir = f"gs://{BUCKET}/runs/ner"
    stopped = run(command(workdir, tiny_bert, small_ner_file, "--config.train.stop_after_step=6"), emulator, tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    remote = bucket(emulator, "runs/ner")
    assert sorted(p.name for p in (remote / "checkpoints").iterdir() if p.name.isdigit()) == ["6"]
    assert (remote / "run_fingerprint.json").exists() and (remote / "metrics.jsonl").exists()

    done = run(command(workdir, tiny_bert, small_ner_file, "--config.train.stop_after_step=6"), emulator, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from checkpoint at step 6" in done.stderr
    local = tmp_path / "local"
    reference = run(command(local, tiny_bert, small_ner_file), {}, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    assert (remote / "export" / "model.safetensors").read_bytes() == (local / "export" / "model.safetensors").read_bytes()
    for name in ("config.json", "tokenizer.json", "jaxft_task.json"):
        assert (remote / "export" / name).exists(), name
    ours, theirs = (json.loads(p.read_text()) for p in (remote / "results.json", local / "results.json"))
    assert ours["test"] == theirs["test"] and ours["dev"] == theirs["dev"] and ours["steps"] == 12
    steps = [json.loads(line)["step"] for line in (remote / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (local / "metrics.jsonl").read_text().splitlines()]
    assert (remote / "training_curves.png").exists() and (remote / "train.log").exists()
    assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())   # never turned into a local folder
    assert not (REPO / "gs:").exists()


def test_an_unreachable_bucket_fails_in_one_line_and_writes_nothing_locally(tiny_bert, small_ner_file, tmp_path):
    pytest.importorskip("gcsfs")
    closed = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"}
    done = run(command(f"gs://{BUCKET}/runs/x", tiny_bert, small_ner_file), closed, tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --workdir gs://{BUCKET}/runs/x: cannot write there (")
    assert "set up credentials" in last
    assert list(tmp_path.iterdir()) == [] or all(not p.name.startswith("gs") for p in tmp_path.iterdir())


def test_a_one_slash_cloud_path_is_refused(tiny_bert, small_ner_file, tmp_path):
    done = run(command("gs:/bucket/x", tiny_bert, small_ner_file), {}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --workdir gs:/bucket/x: a cloud path needs two slashes (gs://...)"
    assert not (tmp_path / "gs:").exists()
