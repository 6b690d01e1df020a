"""Adversarial training on the word embeddings (FGM, PGD) as a wrapper around a task's loss.

FGM (Miyato et al. 2017, in the form common for BERT fine-tuning): take the gradient g of the loss with
respect to the word-embedding table, perturb the table by r = epsilon * g / ||g||, and add the loss at
the perturbed table to the clean loss, so the parameter gradient is g_clean + g_adv. PGD takes
`adversarial_steps` ascent steps of L2 size `adversarial_alpha`, projected on the epsilon ball, before the
adversarial loss. The perturbation is never applied to the stored parameters; the table itself only
trains if the trainable filter includes it (with LoRA it stays frozen and only steers the direction).

The wrapped loss returns (clean sum + adversarial sum, targets), so the logged train loss is the sum of
the two mean losses. Cost: FGM about 3 forward/backward passes per step, PGD about steps + 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.models.heads import word_embeddings


def _embedding_variable(model: nnx.Module):
    backbone = model.backbone if hasattr(model, "backbone") else model
    return word_embeddings(backbone).embedding


def _unit(g: jax.Array) -> jax.Array:
    return g / (jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) + 1e-12).astype(g.dtype)


def adversarial_loss(loss_fn, train_config):
    """loss_fn(model, batch) -> (loss sum, count)  ==>  the same signature with an adversarial term."""
    method = train_config.adversarial
    epsilon = float(train_config.adversarial_epsilon)
    steps = int(train_config.adversarial_steps)
    alpha = float(train_config.adversarial_alpha)
    if method not in ("fgm", "pgd"):
        raise ValueError(f"adversarial method must be fgm or pgd, got {method!r}")

    def wrapped(model, batch):
        clean_sum, count = loss_fn(model, batch)
        graphdef, state = nnx.split(model)  # after the clean pass: dropout RNG already advanced once

        def loss_at(delta):
            perturbed = nnx.merge(graphdef, state, copy=True)
            table = _embedding_variable(perturbed)
            table.set_value(table.get_value() + delta.astype(table.get_value().dtype))
            loss_sum, _ = loss_fn(perturbed, batch)
            return loss_sum, perturbed

        def direction(delta):
            return jax.lax.stop_gradient(jax.grad(lambda d: loss_at(d)[0])(delta))

        delta = jnp.zeros_like(_embedding_variable(model).get_value())
        if method == "fgm":
            delta = epsilon * _unit(direction(delta))
        else:
            for _ in range(steps):
                delta = delta + alpha * _unit(direction(delta))
                norm = jnp.sqrt(jnp.sum(jnp.square(delta)))
                delta = delta * jnp.minimum(1.0, epsilon / (norm + 1e-12))
        adv_sum, perturbed = loss_at(jax.lax.stop_gradient(delta))
        nnx.update(model, nnx.state(perturbed, nnx.RngState))  # the next step draws fresh dropout masks
        return clean_sum + adv_sum, count

    return wrapped
