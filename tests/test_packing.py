"""Sequence packing: per-example logits equal the unpacked ones, same loss and step, one compiled shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft.models as jm
from conftest import tiny_ner_config
from jaxft.config import base_config
from jaxft.data.batching import bucket_lengths, collate, collate_packed, map_batches, map_packed, packed_epoch
from jaxft.models.encoder import model_inputs, packed_position_offset
from jaxft.train.optim import make_optimizer
from jaxft.train.state import split_model
from jaxft.train.step import init_train_state, make_predict_step, make_train_step, token_cross_entropy
from test_model_parity import torch_reference
from test_train import random_rows

PAD = {"input_ids": 0, "labels": -100}


def loss(model, batch):
    return token_cross_entropy(model(**model_inputs(batch)), batch["labels"])


def logits(model, batch):
    return model(**model_inputs(batch))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_packed_logits_equal_unpacked(family, tmp_path):
    torch_reference(family, jm.TOKEN_CLASSIFICATION, tmp_path)
    model = jm.from_pretrained(tmp_path, task=jm.TOKEN_CLASSIFICATION)
    parts, params, frozen, rng = split_model(model)
    predict = make_predict_step(parts, logits)
    rows = random_rows(25, seed=2)
    pad = {"input_ids": 1 if family == "roberta" else 0, "labels": -100}
    for row in rows:
        row["input_ids"] = np.clip(row["input_ids"] % 97, 3, 98).astype(np.int32)  # small vocab, no pad id
    run = lambda batch: predict(params, frozen, rng, batch)
    alone = map_batches(run, rows, 8, bucket_lengths(64, 16), pad)
    packed = map_packed(run, rows, 4, 64, pad, packed_position_offset(model.config))
    worst = max(float(np.abs(a - p).max()) for a, p in zip(alone, packed))
    assert worst <= 1e-5
    assert max(float(np.abs(a).max()) for a in alone) > 0.1  # logits are not trivially zero


def test_packed_step_equals_padded_step(tiny_bert_no_dropout):
    rows = random_rows(12, seed=4)
    model = jm.from_pretrained(tiny_bert_no_dropout, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    parts, params, frozen, rng = split_model(model)
    config = base_config()
    config.optim.warmup_ratio = 0.0
    tx = make_optimizer(config.optim, 10, params)
    step = make_train_step(parts, tx, loss)
    padded = {k: v[None] for k, v in collate(rows, 12, bucket_lengths(64, 16), PAD).items()}
    groups = packed_epoch([len(r["input_ids"]) for r in rows], 8, 64, seed=0, epoch=0)[0]
    packed = {k: v[None] for k, v in collate_packed(rows, groups, 8, 64, PAD).items()}
    assert sorted(i for row in groups for i in row) == list(range(12))  # the same 12 examples
    fresh = lambda: init_train_state(*(jax.tree.map(jnp.copy, tree) for tree in (params, rng)), tx)  # donated
    state_a, metrics_a = step(fresh(), frozen, padded)
    state_b, metrics_b = step(fresh(), frozen, packed)
    assert int(metrics_a["count"]) == int(metrics_b["count"])
    assert float(metrics_b["loss_sum"]) == pytest.approx(float(metrics_a["loss_sum"]), rel=1e-5)
    worst = max(float(np.abs(np.asarray(state_a["params"][k]) - np.asarray(state_b["params"][k])).max())
                for k in state_a["params"])
    assert worst < 1e-6


def test_packed_epoch_covers_each_example_once_in_full_rows():
    lengths = np.random.default_rng(0).integers(5, 60, 500)
    batches = packed_epoch(lengths, 8, 128, seed=3, epoch=1)
    examples = [i for batch in batches for row in batch for i in row]
    assert sorted(examples) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for batch in batches for row in batch)
    rows = [row for batch in batches for row in batch]
    fill = lengths.sum() / (len(rows) * 128)
    assert fill > 0.95  # first-fit-decreasing leaves little padding
    assert batches == packed_epoch(lengths, 8, 128, seed=3, epoch=1)
    assert batches != packed_epoch(lengths, 8, 128, seed=3, epoch=2)


def test_packed_run_compiles_one_train_shape(tiny_bert, small_ner_file, tmp_path):
    from jaxft.tasks.run import run

    results = run(tiny_ner_config(tiny_bert, small_ner_file, **{"data.packing": True}), tmp_path)
    assert results["compilations"]["train_step"] == 1
    assert results["compilations"]["predict_step"] == 1
    assert 0.0 <= results["test"]["f1"] <= 1.0
