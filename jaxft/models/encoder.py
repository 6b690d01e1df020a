"""The BERT-family encoder in Flax NNX, for the families in `config.FAMILIES` whose backbone heads.ENCODERS does
not name (MPNet's extends it with a shared score bias: models/mpnet.py; DeBERTa's is models/deberta.py).

Attribute names are Hugging Face's BERT names, so a parameter path reads like the checkpoint key
("encoder.layer.3.attention.self.query.kernel" <-> "encoder.layer.3.attention.self.query.weight").
Parameters are float32; `dtype` is the compute dtype. Kernels carry logical axis names
("embed", "mlp", "heads", "vocab") as metadata; a mesh and axis rules turn them into shardings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.models.activations import activation
from jaxft.models.attention import attention, choose
from jaxft.config import REMAT_POLICIES as REMAT_CHOICES
from jaxft.models.config import EncoderConfig
from jaxft.models.dropout import Dropout

INIT_STD = 0.02  # Hugging Face's initializer_range for every family here


def _axes(*names):
    # Logical names only: eager sharding would demand a mesh at construction time.
    return {"out_sharding": names, "eager_sharding": False}


def dense(in_features: int, out_features: int, axes: tuple, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(INIT_STD), bias_init=nnx.initializers.zeros_init(),
        kernel_metadata=_axes(*axes), bias_metadata=_axes(axes[-1]), rngs=rngs)


def layer_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                         scale_metadata=_axes("norm"), bias_metadata=_axes("norm"), rngs=rngs)


def embed(num: int, features: int, axes: tuple, *, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(INIT_STD),
                     embedding_metadata=_axes(*axes), rngs=rngs)


def default_position_ids(config: EncoderConfig, input_ids: jax.Array) -> jax.Array:
    if config.family.positions == "after_padding":
        # RoBERTa numbers real tokens from pad_token_id + 1 and gives padding the pad position.
        not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


def packed_position_offset(config: EncoderConfig) -> int:
    """First position id of an example inside a packed row (what default_position_ids gives a real token)."""
    return config.pad_token_id + 1 if config.family.positions == "after_padding" else 0


def model_inputs(batch: dict) -> dict:
    """A collated batch -> model keyword arguments. Packed rows carry `segment_ids` (1, 2, ... per example, 0
    padding) and restarting `position_ids`: attention keeps each example to itself (models/attention.py)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "token_type_ids": batch.get("token_type_ids")}
    if "segment_ids" in batch:
        inputs["segment_ids"] = batch["segment_ids"]
        inputs["position_ids"] = batch["position_ids"]
    return inputs


@dataclasses.dataclass(frozen=True)
class Rows:
    """What attention needs to know of a batch's rows: segment ids [B, T] (0 padding) and whether a row may
    hold several examples (static)."""

    segment_ids: jax.Array
    packed: bool


def rows_of(input_ids, attention_mask=None, segment_ids=None) -> Rows:
    if segment_ids is not None:
        return Rows(segment_ids.astype(jnp.int32), packed=True)
    if attention_mask is None:
        return Rows(jnp.ones(input_ids.shape, jnp.int32), packed=False)
    return Rows((attention_mask > 0).astype(jnp.int32), packed=False)


def describe_attention(config: EncoderConfig, dtype, packed: bool) -> str:
    """What model.attention resolves to on this backend, for training (with the checkpoint's attention
    dropout) and for evaluation: one line for the start-up log."""
    backend = jax.default_backend()
    parts = []
    for phase, dropout in (("train", config.attention_dropout > 0), ("eval", False)):
        name, reason = choose(config.attention, backend=backend, dtype=jnp.dtype(dtype), packed=packed,
                              window=None, has_bias=config.score_bias, dropout=dropout)
        parts.append(f"{phase} {reason}")
    return f"attention (model.attention={config.attention}, {backend}): " + "; ".join(parts)


class Embeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        width = config.embedding_size
        self.word_embeddings = embed(config.vocab_size, width, ("vocab", "embed"), dtype=dtype, rngs=rngs)
        self.position_embeddings = embed(config.max_position_embeddings, width, (None, "embed"),
                                         dtype=dtype, rngs=rngs)
        if config.family.token_types:
            self.token_type_embeddings = embed(config.type_vocab_size, width, (None, "embed"),
                                               dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids, position_ids, token_type_ids, inputs_embeds=None):
        words = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = words + self.position_embeddings(position_ids)
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        width = config.hidden_size
        self.num_heads = config.num_heads
        self.implementation = config.attention
        self.query = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.key = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.value = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.attention_dropout, rngs=rngs)

    def _heads(self, x):
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def dropout_arguments(self) -> dict:
        """Attention dropout in training mode: the rate and a key from the dropout stream (the draw
        nnx.Dropout would make), none in eval mode."""
        if self.dropout.deterministic or self.dropout.rate == 0.0:
            return {"dropout_rate": 0.0, "dropout_rng": None}
        return {"dropout_rate": self.dropout.rate, "dropout_rng": self.dropout.rngs()}

    def __call__(self, x, rows: Rows, bias=None):
        """bias: an additive score bias broadcastable to [B, N, T, T] (MPNet's relative positions) or None."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        context = attention(q, k, v, segment_ids=rows.segment_ids, packed=rows.packed, bias=bias,
                            implementation=self.implementation, **self.dropout_arguments())
        return context.reshape(*context.shape[:-2], -1)


class DenseResidualNorm(nnx.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's SelfOutput and Output."""

    def __init__(self, in_features: int, config: EncoderConfig, axes: tuple, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(in_features, config.hidden_size, axes, dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout, rngs=rngs)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.self = SelfAttention(config, dtype=dtype, rngs=rngs)
        self.output = DenseResidualNorm(config.hidden_size, config, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x, rows: Rows, bias=None):
        return self.output(self.self(x, rows, bias), x)


class Intermediate(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.intermediate_size, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.hidden_act = config.hidden_act

    def __call__(self, x):
        return activation(self.hidden_act)(self.dense(x))


class Layer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.attention = Attention(config, dtype=dtype, rngs=rngs)
        self.intermediate = Intermediate(config, dtype=dtype, rngs=rngs)
        self.output = DenseResidualNorm(config.intermediate_size, config, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x, rows: Rows, bias=None):
        x = self.attention(x, rows, bias)
        return self.output(self.intermediate(x), x)


# What each layer keeps for the backward pass (the rest is recomputed there):
REMAT_POLICIES = {
    "none": None,                                              # everything (no recomputation)
    "full": jax.checkpoint_policies.nothing_saveable,          # only the layer's input
    "dots_saveable": jax.checkpoint_policies.dots_saveable,    # every matmul output, attention scores included
    # the dense layers' outputs but no batched matmul (the [B, N, T, T] attention scores and the
    # probability-weighted sum are recomputed): the policy for long rows
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == REMAT_CHOICES, "config.REMAT_POLICIES names every policy here"


class LayerStack(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, remat: str = "none", rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        self.remat = remat
        self.layer = nnx.List([Layer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])

    def __call__(self, x, rows: Rows, bias=None):
        """bias: the attention score bias every layer adds (see SelfAttention), or None."""
        for layer in self.layer:
            if self.remat == "none":
                x = layer(x, rows, bias)
            else:
                x = nnx.remat(_layer_call(rows.packed), policy=REMAT_POLICIES[self.remat])(layer, x, rows.segment_ids,
                                                                                           bias)
        return x


def _layer_call(packed: bool):
    """layer(x, segment_ids, bias) with the static `packed` closed over (remat takes arrays only)."""
    def call(layer, x, segment_ids, bias):
        return layer(x, Rows(segment_ids, packed), bias)
    return call


class Pooler(nnx.Module):
    """BERT's pooler: tanh(dense(first token))."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


class Encoder(nnx.Module):
    """Embeddings + transformer layers (+ BERT's pooler when asked): Hugging Face's `<Family>Model`."""

    def __init__(self, config: EncoderConfig, *, add_pooler: bool = False, dtype=jnp.float32,
                 hf_config_json: str = "{}", remat: str = "none", rngs: nnx.Rngs):
        self.config = config
        self.hf_config_json = hf_config_json  # the source config.json, kept for save_pretrained
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        if config.embedding_size != config.hidden_size:  # ELECTRA's small embeddings
            self.embeddings_project = dense(config.embedding_size, config.hidden_size, (None, "embed"),
                                            dtype=dtype, rngs=rngs)
        self.encoder = LayerStack(config, dtype=dtype, remat=remat, rngs=rngs)
        if add_pooler:
            self.pooler = Pooler(config, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        """Last hidden states [batch, seq, hidden]. attention_mask: [B, S] padding (1 real, 0 pad); packed
        rows give segment_ids [B, S] instead (1, 2, ... per example, 0 padding) with their position_ids.
        inputs_embeds [B, S, embedding_size], when given, stands in for the word-embedding lookup of input_ids
        (position and token-type embeddings are still added; input_ids still give the shape and, for RoBERTa,
        the positions): attributions differentiate through it (jaxft.explain)."""
        rows = rows_of(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)
        if hasattr(self, "embeddings_project"):
            x = self.embeddings_project(x)
        return self.encoder(x, rows)
