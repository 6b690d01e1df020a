"""NNX model <-> flat dicts of arrays, the form the pure train step, optax and orbax work on.

A model is split once into a static graph (one for train mode, one for eval mode) and three flat dicts
keyed by the dotted parameter path ("bert.encoder.layer.0.attention.self.query.kernel"):
trainable parameters, frozen parameters (empty for full fine-tuning) and dropout RNG state (PRNG keys
stored as raw uint32 data so checkpoints hold plain arrays). Inside a traced function `merge` rebuilds
the module from them; nothing global is mutated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from jaxft.models.paths import dotted

Flat = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelParts:
    train_graph: Any
    eval_graph: Any
    templates: tuple  # (trainable, frozen, rng): lists of (path, Variable) giving structure and types

    def merge(self, trainable: Flat, frozen: Flat, rng: Flat, *, train: bool) -> nnx.Module:
        states = [_state_from_flat(template, values)
                  for template, values in zip(self.templates, (trainable, frozen, rng))]
        return nnx.merge(self.train_graph if train else self.eval_graph, *states, copy=True)


def split_model(model: nnx.Module, trainable: nnx.filterlib.Filter = nnx.Param) -> tuple[ModelParts, Flat, Flat, Flat]:
    """(parts, trainable params, frozen params, rng state) of a model; the model itself is untouched."""
    frozen_filter = nnx.All(nnx.Param, nnx.Not(trainable))
    model.train()
    train_graph, *states, rest = nnx.split(model, trainable, frozen_filter, nnx.RngState, ...)
    model.eval()
    eval_graph = nnx.split(model, trainable, frozen_filter, nnx.RngState, ...)[0]
    leftover = [dotted(p) for p, _ in nnx.to_flat_state(rest)]
    if leftover:
        raise TypeError(f"model state outside parameters and RNG: {leftover[:5]}")
    templates = tuple(list(nnx.to_flat_state(state)) for state in states)
    flats = [_flat_values(template) for template in templates]
    return ModelParts(train_graph, eval_graph, templates), *flats


def _flat_values(template) -> Flat:
    values = {}
    for path, variable in template:
        value = variable.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        values[dotted(path)] = value
    return values


def _state_from_flat(template, values: Flat) -> nnx.State:
    items = []
    for path, variable in template:
        value = values[dotted(path)]
        old = variable.get_value()
        if jax.dtypes.issubdtype(old.dtype, jax.dtypes.prng_key):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(old))
        items.append((path, variable.replace(value)))
    return nnx.from_flat_state(items)


def rng_after_call(model: nnx.Module) -> Flat:
    """The RNG state of a merged model after it ran (counters advanced), as flat key data."""
    return _flat_values(list(nnx.to_flat_state(nnx.state(model, nnx.RngState))))
