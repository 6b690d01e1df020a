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


def test_packed_rows_fit_the_longest_training_example():
    from jaxft.train.batches import PackedBatches, packed_row_length

    assert packed_row_length([31, 68, 20], max_length=128, multiple=16) == 80
    assert packed_row_length([64], max_length=128, multiple=16) == 64
    assert packed_row_length([100], max_length=96, multiple=16) == 96  # never past max_length
    assert packed_row_length([31, 68], max_length=128, multiple=128) == 128  # the GPU/TPU multiple

    rng = np.random.default_rng(4)
    train = [{"input_ids": rng.integers(3, 90, n).astype(np.int32), "labels": np.zeros(n, np.int32)}
             for n in rng.integers(5, 41, 60)]  # at most 40 tokens: rows of 48
    plan = PackedBatches(train, batch_size=16, accum=1, pack_length=None, max_length=128, length_multiple=16,
                         pad_values=PAD, seed=0, position_offset=0)
    assert plan.pack_length == 48
    assert plan.rows_per_batch == int(np.ceil(16 * np.mean([len(r["input_ids"]) for r in train]) / 48))
    assert plan.collate(plan.epoch(0)[0])["input_ids"].shape == (1, plan.rows_per_batch, 48)
    explicit = PackedBatches(train, batch_size=16, accum=1, pack_length=128, max_length=128, length_multiple=16,
                             pad_values=PAD, seed=0, position_offset=0)
    assert explicit.pack_length == 128

    # Predicted examples longer than any trained one get rows long enough for them (here 100 -> 112).
    predicted = train[:5] + [{"input_ids": np.arange(3, 103, dtype=np.int32), "labels": np.zeros(100, np.int32)}]
    shapes = []

    def echo(batch):
        shapes.append(batch["input_ids"].shape)
        return batch["input_ids"]

    outputs = plan.predict(echo, predicted, per_token=True)
    assert {shape[1] for shape in shapes} == {112} and len(shapes) == plan.count_predict_batches(predicted)
    assert all(np.array_equal(out, row["input_ids"]) for out, row in zip(outputs, predicted))
