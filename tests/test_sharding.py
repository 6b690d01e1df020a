"""Mesh sharding on 8 simulated CPU devices: same losses as one device, checkpoints move between meshes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).parent.parent
STEPS = 20
LOSS_TOLERANCE = 1e-5
# The NER default packs rows: 16 sentences of small.conll fill 8 rows of 64 tokens, a multiple of every mesh's
# data x fsdp below, so each mesh trains on the single device's batches (rows are rounded up to that multiple)
BATCH = 16


def train(workdir, model, data, devices, mesh=(None, None, None), max_steps=STEPS, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(workdir),
               f"--config.model.name_or_path={model}", f"--config.data.train_file={data}",
               "--config.data.max_length=64", f"--config.train.batch_size={BATCH}", f"--config.train.max_steps={max_steps}",
               "--config.train.log_every=1", "--config.train.eval_every=10", "--config.optim.learning_rate=1e-3",
               "--config.train.progress_bar=False", *extra]
    for axis, size in zip(("data", "fsdp", "tensor"), mesh):
        if size is not None:
            command.append(f"--config.mesh.{axis}={size}")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def train_losses(workdir) -> dict[int, float]:
    lines = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}


@pytest.fixture(scope="module")
def single_device(tmp_path_factory, tiny_bert, small_ner_file):
    workdir = tmp_path_factory.mktemp("one-device")
    train(workdir, tiny_bert, small_ner_file, devices=1)
    return train_losses(workdir)


# tensor=4: tiny-bert's 30,522 vocabulary rows do not split in 4, so they stay whole (vocab= in mesh.rules)
WHOLE_VOCAB = "--config.mesh.rules=embed=fsdp,mlp=tensor,heads=tensor,vocab="


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2), (1, 4, 2), (2, 1, 4)])
def test_mesh_gives_single_device_losses(mesh, single_device, tiny_bert, small_ner_file, tmp_path):
    extra = [WHOLE_VOCAB] if mesh[2] == 4 else []
    log = train(tmp_path, tiny_bert, small_ner_file, 8, mesh, STEPS, *extra)
    assert f"mesh (data={mesh[0]}, fsdp={mesh[1]}, tensor={mesh[2]}) over 8 cpu device(s)" in log
    losses = train_losses(tmp_path)
    assert sorted(losses) == list(range(1, STEPS + 1))
    worst = max(abs(losses[step] - single_device[step]) for step in losses)
    assert worst <= LOSS_TOLERANCE, f"max loss difference {worst:.2e} over {STEPS} steps"


def test_sharded_parameters_use_less_memory_per_device(tiny_bert, small_ner_file, tmp_path):
    one = train(tmp_path / "a", tiny_bert, small_ner_file, devices=8, mesh=(8, 1, 1), max_steps=1)
    fsdp = train(tmp_path / "b", tiny_bert, small_ner_file, devices=8, mesh=(1, 8, 1), max_steps=1)

    def mib(log, what):
        return float(log.split(f"{what} ")[1].split(" MiB")[0])

    assert mib(fsdp, "parameters") < mib(one, "parameters") / 2
    assert mib(fsdp, "optimizer state") < mib(one, "optimizer state") / 2


def test_checkpoint_resumes_on_another_mesh(single_device, tiny_bert, small_ner_file, tmp_path):
    train(tmp_path, tiny_bert, small_ner_file, 8, (2, 2, 2), STEPS, "--config.train.stop_after_step=10")
    assert max(train_losses(tmp_path)) == 10
    log = train(tmp_path, tiny_bert, small_ner_file, 8, (1, 4, 2))
    assert "resumed from checkpoint at step 10" in log
    losses = train_losses(tmp_path)
    assert sorted(losses) == list(range(1, STEPS + 1))
    worst = max(abs(losses[step] - single_device[step]) for step in range(11, STEPS + 1))
    assert worst <= LOSS_TOLERANCE, f"max loss difference after the move {worst:.2e}"


def test_mesh_errors_are_config_errors(tiny_bert, small_ner_file, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    base = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path),
            f"--config.model.name_or_path={tiny_bert}", f"--config.data.train_file={small_ner_file}"]
    done = subprocess.run(base + ["--config.mesh.data=3"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "does not fit 8 devices" in done.stderr
    done = subprocess.run(base + ["--config.mesh.data=8", "--config.train.batch_size=12"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not divisible by the mesh's data x fsdp = 8" in done.stderr


def test_two_processes_on_localhost_match_one_process(single_device, tiny_bert, small_ner_file, tmp_path):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    processes = []
    for process_id in range(2):
        command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path),
                   f"--config.model.name_or_path={tiny_bert}", f"--config.data.train_file={small_ner_file}",
                   "--config.data.max_length=64", f"--config.train.batch_size={BATCH}", f"--config.train.max_steps={STEPS}",
                   "--config.train.log_every=1", "--config.train.eval_every=10", "--config.optim.learning_rate=1e-3",
                   "--config.train.progress_bar=False", "--config.mesh.distributed=True",
                   f"--config.mesh.coordinator_address=127.0.0.1:{port}", "--config.mesh.num_processes=2",
                   f"--config.mesh.process_id={process_id}"]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "mesh (data=2, fsdp=1, tensor=1) over 2 cpu device(s)" in outputs[0][1]
    losses = train_losses(tmp_path)  # written by process 0 only
    assert sorted(losses) == list(range(1, STEPS + 1))
    worst = max(abs(losses[step] - single_device[step]) for step in losses)
    assert worst <= LOSS_TOLERANCE, f"max loss difference {worst:.2e}"
    assert (tmp_path / "export" / "model.safetensors").exists() and (tmp_path / "results.json").exists()


# ---------------------------------------------------------------------------------------------- what stays whole

def model_config(**overrides):
    from jaxft.models.config import EncoderConfig
    hf = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 2,
          "num_attention_heads": 12, "intermediate_size": 1536, **overrides}
    return EncoderConfig.from_hf(hf)


def abstract_mesh(tensor: int):
    from jax.sharding import AbstractMesh
    return AbstractMesh((1, 1, tensor), ("data", "fsdp", "tensor"))


def test_a_mesh_that_cuts_heads_or_replicates_the_vocabulary_is_refused():
    from jaxft.train.sharding import DEFAULT_RULES, MeshError, check_model_fits_mesh, parse_rules

    rules = parse_rules(DEFAULT_RULES)
    with pytest.raises(MeshError, match=r"mesh.tensor=8 does not divide the model's 12 attention heads \(mesh.rules "
                                        r"maps 'heads' to 'tensor'\): use a mesh.tensor that divides 12 \(e.g. 2, 3, "
                                        r"4, 6, 12\), or set 'heads=' in mesh.rules"):
        check_model_fits_mesh(model_config(), abstract_mesh(8), rules)
    with pytest.raises(MeshError, match="mesh.tensor=4 does not divide the model's 30522 vocabulary rows"):
        check_model_fits_mesh(model_config(), abstract_mesh(4), rules)
    with pytest.raises(MeshError, match="1002 intermediate"):
        check_model_fits_mesh(model_config(intermediate_size=1002, vocab_size=30520), abstract_mesh(4), rules)
    check_model_fits_mesh(model_config(vocab_size=30520), abstract_mesh(4), rules)        # all divisible
    check_model_fits_mesh(model_config(), abstract_mesh(4), parse_rules("embed=fsdp,mlp=tensor,heads=tensor,vocab="))
    check_model_fits_mesh(model_config(), abstract_mesh(1), rules)                         # no tensor axis


def test_the_command_line_refuses_tensor_8_on_a_4_head_model(tiny_bert, small_ner_file, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    command = [sys.executable, "-m", "jaxft.main", "--config", "configs/ner.py", "--workdir", str(tmp_path),
               f"--config.model.name_or_path={tiny_bert}", f"--config.data.train_file={small_ner_file}",
               "--config.train.max_steps=2", "--config.mesh.tensor=8", "--config.train.progress_bar=False"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: mesh.tensor=8 does not divide the model's 4 attention heads")
