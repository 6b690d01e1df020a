"""Train step, optimizer, batching and the loop: accumulation equivalence, bounded compiles, decay mask."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jaxft.models as jm
from conftest import tiny_ner_config
from jaxft import runtime
from jaxft.config import base_config
from jaxft.data.batching import bucket_lengths, collate, epoch_batches
from jaxft.train.optim import clip_by_global_norm, decays, learning_rate_schedule, make_optimizer, warmup_steps
from jaxft.train.state import split_model
from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy


def ner_loss(model, batch):
    return token_cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])


def random_rows(count, seed=0, num_labels=5):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        length = int(rng.integers(4, 30))
        labels = rng.integers(0, num_labels, length).astype(np.int32)
        labels[rng.random(length) < 0.3] = -100  # ignored sub-tokens: counts differ per row
        labels[0] = labels[-1] = -100
        rows.append({"input_ids": rng.integers(1000, 2000, length).astype(np.int32), "labels": labels})
    return rows


def one_step(model_dir, rows, accum, batch_size):
    model = jm.from_pretrained(model_dir, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    parts, params, frozen, rng = split_model(model)
    config = base_config()
    config.optim.warmup_ratio = 0.0  # a first step with learning rate 0 would make the comparison vacuous
    tx = make_optimizer(config.optim, 10, params)
    step = make_train_step(parts, tx, ner_loss)
    batch = collate(rows, accum * batch_size, bucket_lengths(64, 16), {"input_ids": 0, "labels": -100})
    batch = {k: v.reshape(accum, batch_size, *v.shape[1:]) for k, v in batch.items()}
    state, metrics = step(init_train_state(params, rng, tx), frozen, batch)
    return state["params"], metrics


def test_gradient_accumulation_equals_one_large_batch(tiny_bert_no_dropout):
    rows = random_rows(8)
    big, big_metrics = one_step(tiny_bert_no_dropout, rows, accum=1, batch_size=8)
    accumulated, acc_metrics = one_step(tiny_bert_no_dropout, rows, accum=4, batch_size=2)
    assert int(big_metrics["count"]) == int(acc_metrics["count"]) == sum(int((r["labels"] >= 0).sum()) for r in rows)
    np.testing.assert_allclose(float(acc_metrics["loss_sum"]), float(big_metrics["loss_sum"]), rtol=1e-5)
    worst = max(float(np.abs(np.asarray(big[k]) - np.asarray(accumulated[k])).max()) for k in big)
    assert worst < 2e-6
    moved = max(float(np.abs(np.asarray(big[k]) - np.asarray(v)).max())
                for k, v in split_model(jm.from_pretrained(tiny_bert_no_dropout, task=jm.TOKEN_CLASSIFICATION,
                                                           num_labels=5, seed=1))[1].items())
    assert moved > 1e-5  # the step did change the parameters


def test_loss_is_mean_over_real_targets(tiny_bert_no_dropout):
    rows = random_rows(4, seed=3)
    _, metrics = one_step(tiny_bert_no_dropout, rows, accum=1, batch_size=6)  # 2 all-padding rows
    assert int(metrics["count"]) == sum(int((r["labels"] >= 0).sum()) for r in rows)
    mean_loss = float(metrics["loss_sum"]) / int(metrics["count"])
    assert abs(mean_loss - np.log(5)) < 0.5  # near-uniform predictions of a fresh head


def test_token_cross_entropy_ignores_minus_100():
    logits = np.log(np.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]], np.float32))
    labels = np.array([[0, -100, 1]], np.int32)
    loss_sum, count = token_cross_entropy(logits, labels)
    assert int(count) == 2
    np.testing.assert_allclose(float(loss_sum), -np.log(0.5) - np.log(0.8), rtol=1e-6)


def test_weight_decay_mask_follows_hugging_face():
    assert decays("bert.encoder.layer.0.attention.self.query.kernel")
    assert decays("bert.embeddings.word_embeddings.embedding")
    assert not decays("bert.encoder.layer.0.attention.self.query.bias")
    assert not decays("bert.embeddings.LayerNorm.scale")
    assert not decays("bert.encoder.layer.3.output.LayerNorm.bias")
    assert not decays("classifier.bias")


def test_weight_decay_reaches_only_decayed_parameters():
    params = {"dense.kernel": np.ones((2, 2), np.float32), "dense.bias": np.ones(2, np.float32),
              "LayerNorm.scale": np.ones(2, np.float32)}
    config = base_config()
    config.optim.weight_decay = 0.5
    config.optim.warmup_ratio = 0.0
    config.optim.schedule = "constant"
    tx = make_optimizer(config.optim, 10, params)
    zero_grads = {k: np.zeros_like(v) for k, v in params.items()}
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(np.abs(updates["dense.kernel"]).max()) == pytest.approx(1e-4 * 0.5)
    assert float(np.abs(updates["dense.bias"]).max()) == 0.0
    assert float(np.abs(updates["LayerNorm.scale"]).max()) == 0.0


def test_schedule_warmup_then_linear_decay():
    config = base_config()
    config.optim.learning_rate = 1e-3
    config.optim.warmup_ratio = 0.1
    schedule = learning_rate_schedule(config.optim, 100)
    assert warmup_steps(100, 0.1) == 10
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)
    config.optim.schedule = "cosine"
    assert float(learning_rate_schedule(config.optim, 100)(55)) == pytest.approx(5e-4, rel=1e-5)


def test_clipping_bounds_the_update_norm():
    config = base_config()
    config.optim.clip_norm = 1.0
    params = {"w.kernel": np.zeros(4, np.float32)}
    full = make_optimizer(config.optim, 10, params)
    assert len(full.init(params)) == 2  # clip + adamw chained
    tx = clip_by_global_norm(1.0)
    grads = {"w.kernel": np.full(4, 10.0, np.float32)}
    clipped, _ = tx.update(grads, tx.init(params), params)
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above the clipping norm
def test_clip_with_the_steps_norm_equals_optax_bit_for_bit(scale):
    rng = np.random.default_rng(0)
    grads = {"a.kernel": (rng.standard_normal((64, 32)) * scale).astype(np.float32),
             "b.bias": (rng.standard_normal(32) * scale).astype(np.float32)}
    reference, _ = jax.jit(lambda g: optax.clip_by_global_norm(1.0).update(g, optax.EmptyState()))(grads)
    tx = clip_by_global_norm(1.0)
    given, _ = jax.jit(lambda g: tx.update(g, optax.EmptyState(), grad_norm=optax.tree.norm(g)))(grads)
    computed, _ = jax.jit(lambda g: tx.update(g, optax.EmptyState()))(grads)
    for name in grads:
        np.testing.assert_array_equal(np.asarray(given[name]), np.asarray(reference[name]))
        np.testing.assert_array_equal(np.asarray(computed[name]), np.asarray(reference[name]))


def test_the_step_updates_parameters_and_moments_in_place(tiny_bert_no_dropout):
    """A select between new and old state made XLA copy every donated parameter and moment buffer before
    the update (the copies cost MiniLM's step about a third of its optimizer time on CPU)."""
    model = jm.from_pretrained(tiny_bert_no_dropout, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    parts, params, frozen, rng = split_model(model)
    tx = make_optimizer(base_config().optim, 10, params)
    step = make_train_step(parts, tx, ner_loss)
    batch = collate(random_rows(4), 4, bucket_lengths(64, 16), {"input_ids": 0, "labels": -100})
    batch = {k: v[None] for k, v in batch.items()}
    entry = step.lower(init_train_state(params, rng, tx), frozen, batch).compile().as_text().split("\nENTRY")[1]
    copied = re.findall(r" copy\(%(state__(?:params|opt_state)\S*?)\)", entry)
    assert re.search(r"%state__params\S* = f32\S* parameter\(", entry)  # the names the copies are looked up by
    assert copied == [], f"{len(copied)} state buffers copied, e.g. {copied[:3]}"


def test_batches_use_few_shapes_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, 1000)
    buckets = bucket_lengths(128, 16)
    assert buckets == [16, 32, 48, 64, 80, 96, 112, 128]
    groups = epoch_batches(lengths, 32, seed=7, epoch=2)
    assert sorted(np.concatenate(groups).tolist()) == list(range(1000))
    assert groups[0].tolist() == epoch_batches(lengths, 32, seed=7, epoch=2)[0].tolist()  # seeded
    assert groups[0].tolist() != epoch_batches(lengths, 32, seed=7, epoch=3)[0].tolist()
    rows = [{"input_ids": np.ones(n, np.int32), "labels": np.zeros(n, np.int32)} for n in lengths]
    shapes = {collate([rows[i] for i in g], 32, buckets, {"input_ids": 0, "labels": -100})["input_ids"].shape
              for g in groups}
    assert len(shapes) <= len(buckets) and all(s[0] == 32 for s in shapes)
    padding = sum(s[1] for s in shapes)  # sorting inside windows keeps padding small
    real = sum(lengths[g].max() for g in groups)
    assert real / sum(collate([rows[i] for i in g], 32, buckets, {"input_ids": 0, "labels": -100})["input_ids"].shape[1]
                      for g in groups) > 0.85
    assert padding > 0


def test_sort_window_one_gives_plain_random_batches():
    lengths = np.random.default_rng(1).integers(3, 128, 1600)
    spread = {}
    for window in (50, 1):
        groups = epoch_batches(lengths, 32, seed=7, epoch=0, sort_window=window)
        assert sorted(np.concatenate(groups).tolist()) == list(range(1600))
        spread[window] = float(np.mean([lengths[g].max() - lengths[g].min() for g in groups]))
    assert spread[50] < 10 < 100 < spread[1]  # grouped by length vs. the whole range in every batch
    order = np.random.default_rng([7, 0]).permutation(1600)  # window 1: consecutive slices of one permutation
    expected = {tuple(sorted(order[i:i + 32].tolist())) for i in range(0, 1600, 32)}
    assert {tuple(sorted(g.tolist())) for g in epoch_batches(lengths, 32, 7, 0, sort_window=1)} == expected


def test_loop_compiles_at_most_once_per_bucket(tiny_bert, small_ner_file, tmp_path):
    from jaxft.tasks.run import run

    config = tiny_ner_config(tiny_bert, small_ner_file, **{"train.num_epochs": 3, "data.packing": False})
    results = run(config, tmp_path)
    buckets = bucket_lengths(config.data.max_length, runtime.bucket_multiple(config.data.bucket_multiple))
    assert 1 <= results["compilations"]["train_step"] <= len(buckets)
    assert 1 <= results["compilations"]["predict_step"] <= len(buckets)
    assert results["steps"] == 3 * int(np.ceil(140 / 8))  # 70% of 200 sentences, batch 8


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_gives_the_same_step(remat, tiny_bert):
    rows = random_rows(6, seed=5)

    def step_with(policy):
        model = jm.from_pretrained(tiny_bert, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1, remat=policy)
        parts, params, frozen, rng = split_model(model)
        config = base_config()
        config.optim.warmup_ratio = 0.0
        tx = make_optimizer(config.optim, 10, params)
        batch = collate(rows, 6, bucket_lengths(64, 16), {"input_ids": 0, "labels": -100})
        batch = {k: v[None] for k, v in batch.items()}
        state, metrics = make_train_step(parts, tx, ner_loss)(init_train_state(params, rng, tx), frozen, batch)
        return state["params"], float(metrics["loss_sum"])

    plain, plain_loss = step_with("none")
    rematerialised, remat_loss = step_with(remat)
    assert remat_loss == pytest.approx(plain_loss, rel=1e-6)  # same dropout masks, same forward
    assert max(float(np.abs(np.asarray(plain[k]) - np.asarray(rematerialised[k])).max()) for k in plain) < 1e-6


def test_bfloat16_first_moment():
    config = base_config()
    config.optim.moments_dtype = "bfloat16"
    params = {"w.kernel": np.ones((3, 3), np.float32)}
    state = make_optimizer(config.optim, 10, params).init(params)
    dtypes = {str(leaf.dtype) for leaf in __import__("jax").tree.leaves(state) if getattr(leaf, "ndim", 0) == 2}
    assert dtypes == {"bfloat16", "float32"}  # mu in bfloat16, nu stays float32


def test_early_stopping_keeps_the_best_evaluation(tiny_bert, small_ner_file, tmp_path):
    from jaxft.tasks.run import run

    # A learning rate this small leaves dev F1 where it starts: no evaluation improves on the first one.
    config = tiny_ner_config(tiny_bert, small_ner_file, **{"train.num_epochs": 5, "optim.learning_rate": 1e-12,
                                                           "train.early_stopping_patience": 1,
                                                           "data.packing": False})  # 18 batches an epoch
    results = run(config, tmp_path)
    per_epoch = int(np.ceil(140 / 8))
    assert results["best_step"] == per_epoch
    assert results["steps"] == 2 * per_epoch  # stopped after one evaluation without improvement


def test_ema_follows_the_warmed_up_recurrence_and_skips_bad_steps(tiny_bert_no_dropout):
    import jax
    import jax.numpy as jnp

    model = jm.from_pretrained(tiny_bert_no_dropout, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=1)
    parts, params, frozen, rng = split_model(model)
    config = base_config()
    config.optim.warmup_ratio = 0.0
    tx = make_optimizer(config.optim, 10, params)
    step = make_train_step(parts, tx, ner_loss, ema_decay=0.9)
    batch = collate(random_rows(8), 8, bucket_lengths(64, 16), {"input_ids": 0, "labels": -100})
    batch = {k: v[None] for k, v in batch.items()}
    state = init_train_state(jax.tree.map(jnp.copy, params), rng, tx, ema=True)
    expected = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(3):
        state, _ = step(state, frozen, batch)
        decay = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25: the pretrained start fades fast
        expected = {k: decay * expected[k] + (1 - decay) * np.asarray(state["params"][k]) for k in expected}
    for key in expected:
        np.testing.assert_allclose(np.asarray(state["ema"][key]), expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert max(float(np.abs(np.asarray(state["ema"][k]) - np.asarray(state["params"][k])).max())
               for k in expected) > 1e-5
    before = {k: np.asarray(v) for k, v in state["ema"].items()}

    def nan_loss(model, micro_batch):  # the same loss times the batch's "scale": NaN makes a bad step
        loss_sum, count = ner_loss(model, {k: v for k, v in micro_batch.items() if k != "scale"})
        return loss_sum * micro_batch["scale"], count

    poisoned_step = make_train_step(parts, tx, nan_loss, ema_decay=0.9)
    state, metrics = poisoned_step(state, frozen, {**batch, "scale": jnp.full((1,), jnp.nan, jnp.float32)})
    assert int(metrics["nonfinite"]) == 1
    for key in before:
        np.testing.assert_array_equal(np.asarray(state["ema"][key]), before[key], err_msg=key)


def test_ema_run_evaluates_and_exports_the_average_and_resumes_bit_identically(tiny_bert, small_ner_file, tmp_path):
    import orbax.checkpoint as ocp
    from safetensors.numpy import load_file

    from jaxft.tasks.run import run

    overrides = {"train.num_epochs": 3, "train.ema_decay": 0.9}
    whole = run(tiny_ner_config(tiny_bert, small_ner_file, **overrides), tmp_path / "whole")
    stopped = run(tiny_ner_config(tiny_bert, small_ner_file, **overrides, **{"train.stop_after_step": 25}),
                  tmp_path / "split")
    assert stopped == {"stopped_at_step": 25}
    resumed = run(tiny_ner_config(tiny_bert, small_ner_file, **overrides, **{"train.stop_after_step": 25}),
                  tmp_path / "split")
    assert resumed["test"] == whole["test"] and resumed["best_step"] == whole["best_step"]
    exported = {w: load_file(str(tmp_path / w / "export" / "model.safetensors")) for w in ("whole", "split")}
    for key in exported["whole"]:
        np.testing.assert_array_equal(exported["split"][key], exported["whole"][key], err_msg=key)

    best = ocp.StandardCheckpointer().restore(tmp_path / "whole" / "checkpoints" / str(whole["best_step"]) / "state")
    head = exported["whole"]["classifier.weight"]  # HF layout [labels, hidden] = our kernel transposed
    np.testing.assert_array_equal(head, np.asarray(best["ema"]["classifier.kernel"]).T)
    assert np.abs(head - np.asarray(best["params"]["classifier.kernel"]).T).max() > 1e-4


def test_dropout_keys_change_training_and_reach_the_export(tiny_bert, small_ner_file, tmp_path):
    """model.hidden_dropout / model.attention_dropout (None: the checkpoint's 0.1) change a seeded run's losses,
    and the export's config.json carries the rates it was trained with; set from the command line too."""
    from jaxft.tasks.run import run

    overrides = {"train.max_steps": 10, "train.num_epochs": 1}
    run(tiny_ner_config(tiny_bert, small_ner_file, **overrides), tmp_path / "checkpoint_rates")
    repo = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "jaxft.main", "--config", str(repo / "configs" / "ner.py"),
         "--workdir", str(tmp_path / "no_dropout"), f"--config.model.name_or_path={tiny_bert}",
         f"--config.data.train_file={small_ner_file}", "--config.data.max_length=64", "--config.train.batch_size=8",
         "--config.optim.learning_rate=1e-3", "--config.train.progress_bar=False", "--config.train.log_every=5",
         "--config.train.max_steps=10", "--config.train.num_epochs=1",
         "--config.model.attention_dropout=0.0", "--config.model.hidden_dropout=0.0"],
        capture_output=True, text=True, cwd=repo, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]

    def losses(name):
        lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [line["loss"] for line in lines if line["split"] == "train"]

    assert len(losses("no_dropout")) == len(losses("checkpoint_rates")) == 2
    assert all(abs(a - b) > 1e-4 for a, b in zip(losses("no_dropout"), losses("checkpoint_rates")))
    exported = {name: json.loads((tmp_path / name / "export" / "config.json").read_text())
                for name in ("no_dropout", "checkpoint_rates")}
    assert exported["no_dropout"]["hidden_dropout_prob"] == 0.0
    assert exported["no_dropout"]["attention_probs_dropout_prob"] == 0.0
    assert exported["checkpoint_rates"]["hidden_dropout_prob"] == 0.1  # the checkpoint's own
    assert exported["checkpoint_rates"]["attention_probs_dropout_prob"] == 0.1
    resolved = json.loads((tmp_path / "no_dropout" / "config.json").read_text())
    assert resolved["model"]["attention_dropout"] == 0.0 and resolved["model"]["hidden_dropout"] == 0.0
