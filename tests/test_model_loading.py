"""Checkpoint formats (sharded safetensors, PyTorch pickle, legacy Flax msgpack) and loading errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from flax import serialization

import jaxft.models as jm
from test_model_parity import jax_outputs, padded_batch, torch_outputs, torch_reference

TOKEN = jm.TOKEN_CLASSIFICATION


def outputs_match(folder, reference, task=TOKEN):
    ids, mask, types = padded_batch("bert")
    ours = jax_outputs(jm.from_pretrained(folder, task=task), task, ids, mask, types)
    return np.abs(ours - torch_outputs(reference, task, ids, mask, types)).max()


def test_sharded_safetensors(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path / "full")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    assert outputs_match(tmp_path / "sharded", reference) <= 1e-4


def test_pytorch_bin_read_weights_only(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    assert outputs_match(tmp_path, reference) <= 1e-4


def test_legacy_flax_msgpack(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    tree: dict = {}
    for key, tensor in reference.state_dict().items():  # the layout transformers' Flax classes wrote
        *modules, leaf = key.split(".")
        array = tensor.numpy()
        if leaf == "weight" and "LayerNorm" in modules[-1]:
            leaf = "scale"
        elif leaf == "weight" and "embeddings" in modules[-1]:
            leaf = "embedding"
        elif leaf == "weight":
            leaf, array = "kernel", array.T
        node = tree
        for name in modules:
            node = node.setdefault(name, {})
        node[leaf] = array
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    assert outputs_match(tmp_path, reference) <= 1e-4


def test_legacy_layernorm_gamma_beta_names(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(tmp_path / "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert outputs_match(tmp_path, reference) <= 1e-4


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(jm.ModelLoadError, match="no-such-model: model folder not found"):
        jm.from_pretrained(tmp_path / "no-such-model")


def test_offline_hub_id_names_id_and_cache():
    with pytest.raises(jm.ModelLoadError) as err:
        jm.from_pretrained("jaxft-tests/not-a-real-model")
    message = str(err.value)
    assert "'jaxft-tests/not-a-real-model'" in message and "not in the cache at" in message


def test_corrupt_safetensors_is_named(tmp_path):
    torch_reference("bert", TOKEN, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(jm.ModelLoadError, match=r"model\.safetensors: not a readable safetensors file"):
        jm.from_pretrained(tmp_path, task=TOKEN)


def test_folder_without_weights(tmp_path):
    torch_reference("bert", TOKEN, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(jm.ModelLoadError, match="no weights found"):
        jm.from_pretrained(tmp_path)


def test_wrong_num_labels_for_existing_head(tmp_path):
    torch_reference("bert", TOKEN, tmp_path)  # a head with 5 labels
    with pytest.raises(jm.ModelLoadError, match=r"classifier\.bias has shape \(5,\).*head has 5 labels, "
                                                r"not the 3 asked for.*ignore_mismatched_sizes"):
        jm.from_pretrained(tmp_path, task=TOKEN, num_labels=3)
    model, report = jm.from_pretrained(tmp_path, task=TOKEN, num_labels=3, ignore_mismatched_sizes=True,
                                       output_loading_info=True)
    assert model.num_labels == 3 and report.new_head
    assert report.mismatched == ["classifier.bias", "classifier.weight"]


def test_unknown_model_type(tmp_path):
    torch_reference("bert", TOKEN, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(jm.UnsupportedModelError, match=r"config\.json: model_type 'gpt2' is not supported"):
        jm.from_pretrained(tmp_path)


def test_unexpected_and_missing_weights_are_reported(tmp_path):
    torch_reference("bert", None, tmp_path)  # BertModel: has a pooler, no classifier
    model, report = jm.from_pretrained(tmp_path, task=TOKEN, num_labels=4, output_loading_info=True)
    assert report.unexpected == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert report.missing == ["classifier.bias", "classifier.weight"] and report.new_head


def test_labels_come_from_the_checkpoint(tmp_path):
    reference = torch_reference("bert", TOKEN, tmp_path)
    labels = ["O", "B-a", "I-a", "B-b", "I-b"]
    reference.config.id2label = dict(enumerate(labels))
    reference.config.label2id = {v: k for k, v in enumerate(labels)}
    shutil.rmtree(tmp_path)
    reference.save_pretrained(tmp_path)
    assert jm.from_pretrained(tmp_path, task=TOKEN).labels == tuple(labels)
