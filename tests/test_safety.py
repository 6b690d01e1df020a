"""Inputs that must not run code or reach outside their place: pickled weights, remote code in model folders,
shard indexes that point elsewhere, config paths inside the folders a run overwrites."""

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import jaxft.models as jm
from jaxft.config import ConfigError, base_config, validate_workdir
from test_model_parity import torch_reference

REPO = Path(__file__).parent.parent
TOKEN = jm.TOKEN_CLASSIFICATION


class RunsCode:
    """Unpickling this object runs code (what a malicious pytorch_model.bin does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state = dict(reference.state_dict())
    state["payload"] = RunsCode(marker)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        torch.save(state, f, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(jm.ModelLoadError, match=r"pytorch_model\.bin: could not be read as a weights-only PyTorch "
                                                 r"checkpoint"):
        jm.from_pretrained(tmp_path, task=TOKEN)
    assert not marker.exists()


def test_env_switch_cannot_turn_off_weights_only(tmp_path, monkeypatch):
    """torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only where weights_only is not passed; we pass it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    test_pickle_that_would_run_code_is_refused(tmp_path)


def test_remote_code_in_a_model_folder_is_not_run(tmp_path, minilm_path):
    folder = tmp_path / "model"
    torch_reference("bert", TOKEN, folder)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, folder / name)
    marker = tmp_path / "pwned"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "tokenization_evil.py").write_text(code + "from transformers import BertTokenizerFast as EvilTokenizer\n")
    (folder / "modeling_evil.py").write_text(code)
    tokenizer_config = json.loads((minilm_path / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        jm.load_tokenizer(folder)          # either refuses the folder or ignores the auto_map: never runs it
    except jm.ModelLoadError as err:
        assert "trust_remote_code" in str(err) or "tokenizer" in str(err)
    jm.from_pretrained(folder, task=TOKEN)  # config.json is read as data
    assert not marker.exists()


def test_no_trust_remote_code_anywhere():
    """The package never asks transformers or datasets to run code from a model or dataset repo."""
    for path in sorted((REPO / "jaxft").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in re.finditer(r"trust_remote_code\s*=\s*(\w+)", line):
                assert match.group(1) == "False", f"{path}:{number}: {line.strip()}"
            if "trust_remote_code" in line and "=" not in line.split("trust_remote_code", 1)[1][:3]:
                assert "False" in line or line.strip().startswith("#"), f"{path}:{number}: {line.strip()}"


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_shard_index_cannot_point_outside_the_folder(tmp_path, shard):
    folder = tmp_path / "model"
    reference = torch_reference("bert", TOKEN, tmp_path / "full")
    reference.save_pretrained(folder, max_shard_size="20KB")
    shutil.copy(next(folder.glob("model-*.safetensors")), tmp_path / "outside.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(jm.ModelLoadError, match=re.escape(f"lists shard {shard!r}, which is outside the model folder")):
        jm.from_pretrained(folder, task=TOKEN)


def test_shard_index_of_the_wrong_shape_is_a_load_error(tmp_path):
    folder = tmp_path / "model"
    torch_reference("bert", TOKEN, tmp_path / "full").save_pretrained(folder, max_shard_size="20KB")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    with pytest.raises(jm.ModelLoadError, match="not a valid shard index"):
        jm.from_pretrained(folder, task=TOKEN)


def test_inputs_inside_the_folders_a_run_overwrites_are_refused(tmp_path):
    workdir = tmp_path / "runs" / "x"
    (workdir / "export").mkdir(parents=True)
    (workdir / "checkpoints").mkdir()
    config = base_config()
    config.model.name_or_path = str(workdir / "export")
    with pytest.raises(ConfigError, match=r"config key 'model\.name_or_path': .*export lies inside .*/runs/x/export, "
                                          r"which this run overwrites"):
        validate_workdir(config, workdir)
    config.model.name_or_path = str(tmp_path / "runs" / "x" / "checkpoints" / ".." / "export")   # the same place
    with pytest.raises(ConfigError, match="which this run overwrites"):
        validate_workdir(config, workdir)
    data = workdir / "checkpoints" / "train.conll"
    data.write_text("a\tO\n")
    config.model.name_or_path = "packaged:all-MiniLM-L6-v2"
    config.data.train_file = str(data)
    with pytest.raises(ConfigError, match=r"config key 'data\.train_file'"):
        validate_workdir(config, workdir)
    config.data.train_file = str(tmp_path / "elsewhere.conll")
    validate_workdir(config, workdir)                       # inputs elsewhere, a hub id: fine
    config.model.name_or_path = "org/model"
    validate_workdir(config, workdir)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        validate_workdir(config, tmp_path / "file")
