"""Dropout whose mask costs half the hashing of `jax.random.bernoulli`.

`jax.random.bernoulli` (and so `nnx.Dropout`) draws one 32-bit threefry value per element. Here each 32-bit
value gives two elements their 16-bit uniforms (low half for even positions of the last axis, high half for
odd ones), so a mask costs half the threefry rounds. An element is kept when its uniform is below
round(keep_probability * 2**16): the keep probability is rounded to a multiple of 2**-16 (0.9 becomes
0.899994); kept values are scaled by 1 / (1 - rate), as in nnx.Dropout.

Why: threefry hashing was most of what dropout cost in a train step on the CPU (XLA materialises the hash
outputs and the backward pass reads them again): see benchmarks/results/HISTORY.md (2026-12-04) for the
measured step and end-to-end times with both kinds of mask. The mask is still a pure
function of the key and each element's position, so it does not depend on how the array is sharded.
A last axis of odd length falls back to bernoulli masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_HALF = 16
_LOW_HALF = np.uint32(2 ** _HALF - 1)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask of `shape`, True (kept) with probability about 1 - rate (see the module docstring)."""
    shape = tuple(shape)
    if not shape or shape[-1] % 2:
        return jax.random.bernoulli(rng, 1.0 - rate, shape)
    threshold = np.uint32(round((1.0 - rate) * 2 ** _HALF))
    words = jax.random.bits(rng, shape[:-1] + (shape[-1] // 2,), jnp.uint32)
    halves = jnp.stack([(words & _LOW_HALF) < threshold, (words >> _HALF) < threshold], axis=-1)
    return halves.reshape(shape)


def drop(x: jax.Array, rate: float, rng: jax.Array, mask_shape: tuple[int, ...] | None = None) -> jax.Array:
    """x with each element (or each mask_shape cell, broadcast over x) zeroed with probability about `rate`
    and the rest scaled by 1 / (1 - rate)."""
    keep = keep_mask(rng, rate, x.shape if mask_shape is None else mask_shape)
    keep = jnp.broadcast_to(keep, x.shape)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class Dropout(nnx.Dropout):
    """nnx.Dropout (same constructor, rng stream, deterministic switch and broadcast_dims) drawing its mask
    with keep_mask."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        source = self.rngs if rngs is None else rngs
        if isinstance(source, nnx.Rngs):
            key = source[self.rng_collection]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif isinstance(source, jax.Array):
            key = source
        else:
            raise TypeError(f"Dropout needs a Rngs, RngStream or key to draw its mask; got {type(source)}")
        mask_shape = tuple(1 if axis in self.broadcast_dims else size for axis, size in enumerate(inputs.shape))
        return drop(inputs, self.rate, key, mask_shape)
