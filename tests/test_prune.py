"""Structured FFN pruning (jaxft.quantize.prune_ffn, `quantize --prune-ffn`): the lowest-scoring units leave
every layer, the pruned folder computes exactly what the full model computes with those units zeroed, it
loads in PyTorch with the smaller intermediate_size, and int8 goes on top."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import TINY_BERT
from jaxft.main import main
from jaxft.models import from_pretrained, load_tokenizer
from jaxft.models.hf import hf_key, param_items
from jaxft.quantize import ffn_projections, prune_ffn, quantize_folder
from jaxft.tasks.predictor import load_model
from tiny_exports import NER_LABELS, TEXTS, make_export

FRACTION = 0.25  # 16 of the tiny model's 64 FFN units per layer


@pytest.fixture(scope="module")
def ner_export(tmp_path_factory, tiny_bert_no_dropout):
    return make_export(tmp_path_factory.mktemp("p") / "ner", tiny_bert_no_dropout, "token-classification",
                       NER_LABELS)


def batch_for(folder):
    batch = load_tokenizer(folder)(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="np")
    return batch["input_ids"], batch["attention_mask"]


def kept_units(tensors, up, down, keep):
    """The `keep` units of the highest ||input row|| * ||output column||, in order (computed here, independently)."""
    score = np.linalg.norm(tensors[f"{up}.weight"], axis=1) * np.linalg.norm(tensors[f"{down}.weight"], axis=0)
    return np.sort(np.argsort(-score)[:keep]), score


def test_the_lowest_scoring_units_are_removed_and_nothing_else_changes(ner_export, tmp_path):
    summary = quantize_folder(ner_export, tmp_path / "pruned", int8=False, prune_ffn_fraction=FRACTION)
    original = load_file(str(ner_export / "model.safetensors"))
    pruned = load_file(str(tmp_path / "pruned" / "model.safetensors"))
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["intermediate_size"] == 48 and config["jaxft_pruning"]["ffn"]["intermediate_size"] == [64, 48]
    layers = ffn_projections(original, "bert")
    assert len(layers) == TINY_BERT["num_hidden_layers"]
    removed = 0
    for up, down in layers.values():
        w_up, w_down = original[f"{up}.weight"], original[f"{down}.weight"]
        kept, score = kept_units(original, up, down, 48)
        assert score[kept].min() >= np.delete(score, kept).max()
        np.testing.assert_array_equal(pruned[f"{up}.weight"], w_up[kept])
        np.testing.assert_array_equal(pruned[f"{up}.bias"], original[f"{up}.bias"][kept])
        np.testing.assert_array_equal(pruned[f"{down}.weight"], w_down[:, kept])
        removed += 16 * (2 * w_up.shape[1] + 1)
    changed = {f"{up}.{leaf}" for up, down in layers.values() for up, leaf in ((up, "weight"), (up, "bias"),
                                                                              (down, "weight"))}
    assert all(np.array_equal(pruned[k], original[k]) for k in original if k not in changed)
    assert summary["prune_ffn"]["params_removed"] == removed
    assert sum(v.size for v in pruned.values()) == sum(v.size for v in original.values()) - removed


def test_pruned_model_equals_the_full_model_with_those_units_zeroed(ner_export, tmp_path):
    quantize_folder(ner_export, tmp_path / "pruned", int8=False, prune_ffn_fraction=FRACTION)
    ids, mask = batch_for(ner_export)
    pruned_logits = np.asarray(from_pretrained(tmp_path / "pruned", task="token-classification")(ids, mask))
    original = load_file(str(ner_export / "model.safetensors"))
    zeroed = dict(original)
    for up, down in ffn_projections(original, "bert").values():
        gone = ~np.isin(np.arange(64), kept_units(original, up, down, 48)[0])
        zeroed[f"{up}.weight"] = np.where(gone[:, None], 0.0, original[f"{up}.weight"])
        zeroed[f"{up}.bias"] = np.where(gone, 0.0, original[f"{up}.bias"])
        zeroed[f"{down}.weight"] = np.where(gone[None, :], 0.0, original[f"{down}.weight"])
    reference = from_pretrained(ner_export, task="token-classification")
    for path, variable in param_items(reference):
        key, transpose = hf_key(path, reference.config)
        variable.set_value(jnp.asarray(zeroed[key].T if transpose else zeroed[key]))
    np.testing.assert_allclose(pruned_logits, np.asarray(reference(ids, mask)), atol=1e-5)
    full = np.asarray(from_pretrained(ner_export, task="token-classification")(ids, mask))
    assert np.abs(pruned_logits - full).max() > 1e-3  # the pruning did change something


def test_pruned_folder_loads_in_pytorch(ner_export, tmp_path):
    import torch
    import transformers

    out = tmp_path / "pruned"
    assert main(["jaxft", "quantize", "--model", str(ner_export), "--out", str(out), "--prune-ffn", str(FRACTION),
                 "--no-int8"]) == 0
    torch_model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert torch_model.config.intermediate_size == 48
    assert torch_model.bert.encoder.layer[0].intermediate.dense.out_features == 48
    ids, mask = batch_for(ner_export)
    with torch.no_grad():
        expected = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(from_pretrained(out, task="token-classification")(ids, mask))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_int8_on_top_of_the_pruned_model(ner_export, tmp_path):
    quantize_folder(ner_export, tmp_path / "pruned", int8=False, prune_ffn_fraction=FRACTION)
    quantize_folder(ner_export, tmp_path / "pruned-int8", prune_ffn_fraction=FRACTION)
    ids, mask = batch_for(ner_export)
    fp32 = np.asarray(from_pretrained(tmp_path / "pruned", task="token-classification")(ids, mask))
    int8 = np.asarray(load_model(tmp_path / "pruned-int8", "token-classification")(ids, mask))
    real = mask.astype(bool)
    assert np.abs(int8 - fp32)[real].max() < 0.1  # test_quantize.py's stated int8 tolerance
    assert json.loads((tmp_path / "pruned-int8" / "config.json").read_text())["intermediate_size"] == 48


def test_distilbert_layout_and_errors(tmp_path, minilm_path, ner_export, capsys):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=128)
    transformers.DistilBertModel(config).save_pretrained(tmp_path / "distil")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_path / name, tmp_path / "distil" / name)
    export = make_export(tmp_path / "distil-ner", tmp_path / "distil", "token-classification", NER_LABELS)
    quantize_folder(export, tmp_path / "distil-pruned", int8=False, prune_ffn_fraction=0.5)
    pruned = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "distil-pruned")
    assert pruned.config.hidden_dim == 32 and pruned.distilbert.transformer.layer[1].ffn.lin1.out_features == 32

    with pytest.raises(ValueError, match=r"--prune-ffn fraction must be in \(0, 1\)"):
        prune_ffn(load_file(str(ner_export / "model.safetensors")), {"intermediate_size": 64}, 1.0)
    assert main(["jaxft", "quantize", "--model", str(ner_export), "--out", str(tmp_path / "x"), "--prune-ffn",
                 "1.5"]) == 2
    assert "--prune-ffn fraction" in capsys.readouterr().err
