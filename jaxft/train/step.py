"""The pure, jit-compiled train and predict steps.

State is a dict of arrays {"step", "params", "opt_state", "rng"} (plus "ema", an exponential moving average
of the parameters, when train.ema_decay > 0) and is donated to the step, so XLA updates it in place. A batch
holds arrays shaped [grad_accum_steps, batch, length]; micro-batch losses are sums over their real (non-pad,
non-ignored) targets and the gradient is divided once by the total count, so k accumulated micro-batches
give the gradient of one k-times-larger batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxft.train.state import Flat, ModelParts, rng_after_call

# loss_fn(model, micro_batch) -> (sum of per-target losses, number of targets)
LossFn = Callable[..., tuple[jax.Array, jax.Array]]
# predict_fn(model, batch) -> whatever the task's evaluation consumes (e.g. log-probabilities)
PredictFn = Callable[..., jax.Array]


def token_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy over targets >= 0 (IGNORE_INDEX, -100, marks ignored positions), and their count."""
    valid = labels >= 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid, dtype=jnp.int32)


def init_train_state(params: Flat, rng: Flat, tx: optax.GradientTransformation, *, ema: bool = False) -> dict:
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rng": rng}
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The averaging weight after `step` updates: min(decay, (1 + step) / (10 + step)). The warm-up keeps
    the average from being dominated by the pretrained weights in short fine-tuning runs (as
    tf.train.ExponentialMovingAverage does with num_updates)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema: Flat, params: Flat, decay: jax.Array) -> Flat:
    return jax.tree.map(lambda avg, p: (decay * avg.astype(jnp.float32)
                                        + (1.0 - decay) * p.astype(jnp.float32)).astype(avg.dtype), ema, params)


METRIC_SUM_DTYPES = {"loss_sum": jnp.float32, "targets": jnp.int32, "grad_norm": jnp.float32, "nonfinite": jnp.int32}


def zero_metric_sums() -> dict:
    """The running sums a summed train step adds its step's metrics to (see make_train_step). Host arrays,
    so every process of a multi-host run hands the same replicated values to the step."""
    return {name: np.zeros((), dtype) for name, dtype in METRIC_SUM_DTYPES.items()}


def add_metrics(sums: dict, metrics: dict) -> dict:
    return {"loss_sum": sums["loss_sum"] + metrics["loss_sum"], "targets": sums["targets"] + metrics["count"],
            "grad_norm": sums["grad_norm"] + metrics["grad_norm"], "nonfinite": sums["nonfinite"] + metrics["nonfinite"]}


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, loss_fn: LossFn,
                    state_shardings=None, replicated=None, *, ema_decay: float = 0.0, summed: bool = False):
    """Inputs arrive already placed (state, frozen params and batch carry their shardings); the new state
    keeps the state's shardings and the metrics are replicated. With ema_decay > 0 the state must hold
    "ema" (init_train_state(..., ema=True)); it is updated after every good step.

    step(state, frozen, batch) -> (state, metrics of this step); with summed=True,
    step(state, frozen, batch, sums) -> (state, sums + this step's metrics): the training loop keeps its
    running sums on the device this way (zero_metric_sums() to start), so a step costs the host nothing but
    its dispatch."""
    def micro_loss(params, frozen, rng, micro_batch):
        model = parts.merge(params, frozen, rng, train=True)
        loss_sum, count = loss_fn(model, micro_batch)
        return loss_sum, (count, rng_after_call(model))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(params, frozen, rng, batch):
        num_micro = jax.tree.leaves(batch)[0].shape[0]
        if num_micro == 1:
            (loss_sum, (count, rng)), grads = grad_fn(params, frozen, rng, jax.tree.map(lambda x: x[0], batch))
            return grads, loss_sum, count, rng

        def body(carry, micro_batch):
            grads_sum, loss_total, count_total, rng = carry
            (loss_sum, (count, rng)), grads = grad_fn(params, frozen, rng, micro_batch)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, loss_total + loss_sum, count_total + count, rng), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), rng)
        (grads, loss_sum, count, rng), _ = jax.lax.scan(body, init, batch)
        return grads, loss_sum, count, rng

    tx = optax.with_extra_args_support(tx)

    def apply_update(grads, grad_norm, params_and_moments):
        params, opt_state = params_and_moments
        # jaxft's clip (train/optim.py) takes the norm computed below instead of a second pass over the grads
        updates, opt_state = tx.update(grads, opt_state, params, grad_norm=grad_norm)
        return optax.apply_updates(params, updates), opt_state

    # A cond rather than where(finite, new, old) over every leaf: the select kept the old parameters and
    # moments alive beside the new ones, so XLA copied each donated buffer before updating it (MiniLM:
    # 208 copies; its AdamW update took 73 ms against 41 ms with the cond on the 2-core CPU). Same bits.
    def train_step(state: dict, frozen: Flat, batch: dict) -> tuple[dict, dict]:
        grads, loss_sum, count, rng = accumulate(state["params"], frozen, state["rng"], batch)
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1).astype(g.dtype), grads)
        grad_norm = optax.tree.norm(grads)
        # A NaN/inf loss or gradient must not reach the parameters or the Adam moments: the update is
        # dropped on device (no host round trip); the loop sees the "nonfinite" count when it next fetches
        # metrics and stops the run or, with train.skip_nonfinite, counts the skipped step.
        finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
        params, opt_state = jax.lax.cond(finite, apply_update, lambda _, __, params_and_moments: params_and_moments,
                                         grads, grad_norm, (state["params"], state["opt_state"]))
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": rng}
        if ema_decay:
            decay = jnp.where(finite, ema_decay_at(ema_decay, state["step"]), 1.0)
            new_state["ema"] = update_ema(state["ema"], params, decay)
        metrics = {"loss_sum": jnp.where(finite, loss_sum, 0.0), "count": jnp.where(finite, count, 0),
                   "grad_norm": jnp.where(finite, grad_norm, 0.0), "nonfinite": (~finite).astype(jnp.int32)}
        return new_state, metrics

    out_shardings = None if state_shardings is None else (state_shardings, replicated)
    if not summed:
        return jax.jit(train_step, donate_argnums=(0,), out_shardings=out_shardings)

    def summed_step(state: dict, frozen: Flat, batch: dict, sums: dict) -> tuple[dict, dict]:
        new_state, metrics = train_step(state, frozen, batch)
        return new_state, add_metrics(sums, metrics)

    return jax.jit(summed_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_predict_step(parts: ModelParts, predict_fn: PredictFn, out_sharding=None):
    """out_sharding: replicated in multi-host runs, so every process can read the whole prediction."""
    def predict_step(params: Flat, frozen: Flat, rng: Flat, batch: dict):
        return predict_fn(parts.merge(params, frozen, rng, train=False), batch)

    return jax.jit(predict_step, out_shardings=out_sharding)


def compiled_count(jitted) -> int:
    """How many shapes a jitted step has been compiled for so far."""
    return jitted._cache_size()
