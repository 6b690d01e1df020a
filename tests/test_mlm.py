"""Masked-LM pretraining: head parity with PyTorch (BERT, RoBERTa, DistilBERT, ELECTRA generator), masking
statistics, exact resume, and an export that loads in AutoModelForMaskedLM and in the fine-tuning recipes."""

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import jaxft.models as jm
from test_model_parity import FAMILY_CONFIGS, padded_batch, perturb

REPO = Path(__file__).parent.parent
MLM_FAMILIES = ["bert", "roberta", "distilbert", "electra"]


def torch_mlm(family: str, folder: Path, seed: int = 0, **overrides):
    config = FAMILY_CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = transformers.AutoModelForMaskedLM.from_config(config).eval()
    perturb(model, seed)  # ties survive: the perturbed embedding is the decoder
    model.save_pretrained(folder)
    return model


def torch_logits(model, ids, mask, types):
    kwargs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def jax_logits(model, ids, mask, types, **kwargs):
    return np.asarray(model(ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32), **kwargs))


@pytest.mark.parametrize("family", MLM_FAMILIES)
def test_masked_lm_logits_match_torch(family, tmp_path):
    reference = torch_mlm(family, tmp_path)
    model, report = jm.from_pretrained(tmp_path, task=jm.MASKED_LM, output_loading_info=True)
    assert report.missing == [] and report.unexpected == [] and not report.new_head
    ids, mask, types = padded_batch(family)
    ours, theirs = jax_logits(model, ids, mask, types), torch_logits(reference, ids, mask, types)
    assert ours.shape == theirs.shape == (*ids.shape, 99)
    assert np.abs(ours - theirs).max() <= 1e-4
    # logits at chosen positions only (what the training loss uses) are the same numbers
    positions = np.array([[0, 3, 5], [1, 2, 6], [0, 1, 2]], np.int32)
    gathered = jax_logits(model, ids, mask, types, masked_positions=positions)
    np.testing.assert_allclose(gathered, np.take_along_axis(ours, positions[..., None], axis=1), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_masked_lm_saves_in_hf_layout(family, tmp_path):
    torch_mlm(family, tmp_path / "ref")
    model = jm.from_pretrained(tmp_path / "ref", task=jm.MASKED_LM)
    jm.save_pretrained(model, tmp_path / "out")
    reloaded, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    ids, mask, types = padded_batch(family, seed=1)
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reloaded.eval(), ids, mask, types)).max() <= 1e-4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"][0].endswith("ForMaskedLM")


def test_untied_decoder_round_trips(tmp_path):
    reference = torch_mlm("bert", tmp_path / "ref", tie_word_embeddings=False)
    model, report = jm.from_pretrained(tmp_path / "ref", task=jm.MASKED_LM, output_loading_info=True)
    assert not report.missing and not model.tied
    ids, mask, types = padded_batch("bert")
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reference, ids, mask, types)).max() <= 1e-4
    jm.save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(jax_logits(model, ids, mask, types) - torch_logits(reloaded, ids, mask, types)).max() <= 1e-4


def test_base_checkpoint_gets_a_fresh_head_and_keeps_its_pooler(tmp_path):
    base = transformers.BertModel(FAMILY_CONFIGS["bert"]())
    base.save_pretrained(tmp_path / "base")
    model, report = jm.from_pretrained(tmp_path / "base", task=jm.MASKED_LM, output_loading_info=True)
    assert report.new_head and all(k.startswith("cls.predictions.") for k in report.missing)
    assert report.unexpected == []  # the pooler is kept (and exported), not dropped
    jm.save_pretrained(model, tmp_path / "out")
    classifier, info = jm.from_pretrained(tmp_path / "out", task=jm.SEQUENCE_CLASSIFICATION, num_labels=2,
                                          output_loading_info=True)
    assert [k for k in info.missing if "pooler" in k] == []  # fine-tuning starts from the base's pooler
    assert all(k.startswith("cls.predictions.") for k in info.unexpected)  # the MLM head is dropped
