"""Compute dtype and matmul precision: bfloat16 compute (float32 parameters) against float32 on CPU within a
stated tolerance, float32 where it matters (attention scores and softmax: tests/test_attention.py; LayerNorm
statistics: flax computes them in at least float32; logits and the loss), and what `auto` resolves to."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft.models as jm
from jaxft import runtime
from jaxft.config import base_config
from jaxft.train.optim import make_optimizer
from jaxft.train.state import split_model
from jaxft.train.step import init_train_state, make_train_step, token_cross_entropy

# bfloat16 keeps 8 bits of mantissa (relative step 2**-8 = 0.4%). Measured on the tiny model: logits (scale
# 0.3) move by 2.4e-3 at most, the losses of a 5-step run by 6.8e-5 relative; the tolerances leave about 4x
# and 7x room.
LOGIT_TOLERANCE = 0.01
LOSS_TOLERANCE = 5e-4


def batch(seed=0, rows=4, length=24):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, (rows, length)).astype(np.int32)
    mask = np.ones((rows, length), np.int32)
    mask[1, 15:] = 0
    labels = rng.integers(0, 5, (rows, length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask > 0, labels, -100)}


def test_bfloat16_logits_are_float32_and_close_to_float32_compute(tiny_bert):
    data = batch()
    logits = {}
    for dtype in ("float32", "bfloat16"):
        model = jm.from_pretrained(tiny_bert, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=3, dtype=dtype)
        logits[dtype] = model(data["input_ids"], data["attention_mask"])
    assert logits["bfloat16"].dtype == jnp.float32  # heads hand the loss float32 logits
    real = data["attention_mask"] > 0
    difference = np.abs(np.asarray(logits["bfloat16"]) - np.asarray(logits["float32"]))[real].max()
    assert 0 < difference <= LOGIT_TOLERANCE, difference


def test_bfloat16_training_follows_float32(tiny_bert):
    def losses(dtype):
        model = jm.from_pretrained(tiny_bert, task=jm.TOKEN_CLASSIFICATION, num_labels=5, seed=3, dtype=dtype)
        model.train()
        parts, params, frozen, rng = split_model(model)
        config = base_config()
        config.optim.warmup_ratio = 0.0
        tx = make_optimizer(config.optim, 5, params)
        loss = lambda model, b: token_cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"])
        step = make_train_step(parts, tx, loss)
        state = init_train_state(params, rng, tx)
        out = []
        for seed in range(5):
            state, metrics = step(state, frozen, {k: v[None] for k, v in batch(seed).items()})
            out.append(float(metrics["loss_sum"]) / int(metrics["count"]))
        assert all(v.dtype == jnp.float32 for v in state["params"].values())  # master weights stay float32
        return np.array(out)

    f32, bf16 = losses("float32"), losses("bfloat16")
    assert np.all(np.abs(bf16 - f32) <= LOSS_TOLERANCE * f32), (f32, bf16)


def test_auto_resolves_to_float32_and_full_precision_on_cpu():
    assert jax.default_backend() == "cpu"
    config = base_config()
    dtype, precision, line = runtime.describe_compute(config.model)
    assert (dtype, precision) == ("float32", "highest")
    assert line == "compute float32 (model.dtype=auto); matmul precision highest (model.matmul_precision=auto)"
    assert jax.config.jax_default_matmul_precision == "highest"
    config.model.matmul_precision = "default"
    assert runtime.describe_compute(config.model)[1] == "default"
    assert jax.config.jax_default_matmul_precision is None
    config.model.dtype = "bfloat16"
    assert runtime.compute_dtype(config.model.dtype) == "bfloat16"
    runtime.matmul_precision("auto")


@pytest.mark.parametrize("name", ["float16", "fp32"])
def test_other_dtypes_are_refused(name):
    from jaxft.config import ConfigError, validate

    config = base_config()
    config.model.dtype = name
    with pytest.raises(ConfigError, match="config key 'model.dtype' must be one of auto, float32, bfloat16"):
        validate(config)


def test_attention_dropout_none_is_off_on_accelerators_and_the_checkpoints_on_cpu():
    assert runtime.attention_dropout(None, "cpu") == (None, None)       # the checkpoint's rate (0.1 for MiniLM)
    for backend in ("gpu", "tpu"):
        rate, line = runtime.attention_dropout(None, backend)
        assert rate == 0.0 and line.startswith(f"attention dropout 0.0 on {backend}")
        assert runtime.attention_dropout(0.1, backend) == (0.1, None)  # an explicit rate is kept everywhere
    assert runtime.attention_dropout(0.05, "cpu") == (0.05, None)
    assert runtime.attention_dropout(None) == (None, None)              # this machine's backend: cpu
