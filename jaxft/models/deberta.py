"""DeBERTa-v2 / v3 (model_type "deberta-v2") in Flax NNX: BERT's post-norm layer with disentangled attention.

Module and parameter names are transformers' DebertaV2Model names ("encoder.layer.0.attention.self.query_proj",
"encoder.rel_embeddings", "embeddings.embed_proj"), so checkpoint keys map as for BERT (models/hf.py).

Disentangled attention (He et al. 2021; transformers' DisentangledSelfAttention): the scores of query i and
key j are (q_i.k_j + c2p + p2c) / sqrt(head_dim * (1 + number of position terms)), where
  c2p = q_i . Kr[c2p_index(i, j)]   (content to position; Kr = key projection of the relative embeddings)
  p2c = k_j . Qr[p2c_index(j, i)]   (position to content; Qr = query projection of the relative embeddings)
and the indices are the bucketed distance (relative_positions.py) offset into the 2 * span table rows,
clipped. Both terms are a [B, N, T, R] product (R = the table rows a row of length T can reach, at most
2T - 1 and at most 2 * span) gathered with take_along_axis into the [B, N, T, T] score bias, which enters
models/attention.py's entry point as its additive `bias`: memory O(T x R) per head besides the scores, no
[T, T, hidden] tensor. A score bias needs the "xla" implementation (the fused kernels take none).

Padding: rows with one example reproduce transformers exactly, padding positions included (their queries
see no key there, so the softmax is uniform over the whole row; here they get that mean of the values).
Packed rows: relative positions come from the restarting position ids (relative_positions.pair_buckets).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxft.models.activations import activation
from jaxft.models.attention import attention
from jaxft.models.config import EncoderConfig
from jaxft.models.dropout import Dropout
from jaxft.models.encoder import (INIT_STD, REMAT_POLICIES, DenseResidualNorm, Intermediate, Rows, default_position_ids,
                                  dense, embed, layer_norm, rows_of)
from jaxft.models.relative_positions import deberta_buckets, distance_table, pair_buckets


class RelativeTerms(NamedTuple):
    """What every layer's position terms read; computed once per forward pass."""

    embeddings: jax.Array   # [R, hidden]: the relative-embedding rows this row length can reach (normalised)
    c2p_index: jax.Array    # int [1|B, 1, T, T]: row of `embeddings` for (query i, key j)
    p2c_index: jax.Array    # int [1|B, 1, T, T]: row of `embeddings` for (key j, query i)


def relative_terms(config: EncoderConfig, table: jax.Array, length: int, position_ids=None) -> RelativeTerms:
    """RelativeTerms for rows of `length` from the (normalised) relative embeddings `table` [2 * span, hidden];
    position_ids [B, T] for packed rows, None for rows numbered 0..T-1."""
    settings = config.deberta
    span = settings.span
    buckets = distance_table(length, lambda d: deberta_buckets(d, settings.position_buckets,
                                                               settings.max_relative_positions))
    c2p_rows = np.clip(buckets + span, 0, 2 * span - 1)
    p2c_rows = np.clip(-buckets + span, 0, 2 * span - 1)
    first = int(min(c2p_rows.min(), p2c_rows.min()))
    last = int(max(c2p_rows.max(), p2c_rows.max()))

    def index(rows_by_distance):
        pairs = pair_buckets((rows_by_distance - first).astype(np.int32), length, position_ids)
        return pairs[None, None] if position_ids is None else pairs[:, None]

    return RelativeTerms(table[first:last + 1], index(c2p_rows), index(p2c_rows))


def _unbiased_dense(in_features: int, out_features: int, axes: tuple, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(INIT_STD),
                      kernel_metadata={"out_sharding": axes, "eager_sharding": False}, rngs=rngs)


class DebertaV2Embeddings(nnx.Module):
    """word (+ absolute position when position_biased_input) (+ token type when type_vocab_size > 0)
    -> embed_proj when embedding_size != hidden_size -> LayerNorm -> x padding mask -> dropout."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        width, hidden = config.embedding_size, config.hidden_size
        self.word_embeddings = embed(config.vocab_size, width, ("vocab", "embed"), dtype=dtype, rngs=rngs)
        if config.deberta.position_biased_input:
            self.position_embeddings = embed(config.max_position_embeddings, width, (None, "embed"),
                                             dtype=dtype, rngs=rngs)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = embed(config.type_vocab_size, width, (None, "embed"), dtype=dtype, rngs=rngs)
        if width != hidden:
            self.embed_proj = _unbiased_dense(width, hidden, (None, "embed"), dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(hidden, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids, position_ids, token_type_ids, inputs_embeds, rows: Rows):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if hasattr(self, "position_embeddings"):
            x = x + self.position_embeddings(position_ids)
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings(token_type_ids)
        if hasattr(self, "embed_proj"):
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * (rows.segment_ids > 0)[..., None].astype(x.dtype)
        return self.dropout(x)


class DisentangledSelfAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        settings, width = config.deberta, config.hidden_size
        self.num_heads = config.num_heads
        self.implementation = config.attention
        self.pos_att_type = settings.pos_att_type if settings.relative_attention else ()
        self.share_att_key = settings.share_att_key
        self.scale = float((width // config.num_heads * settings.score_scale_factor) ** -0.5)
        self.query_proj = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.key_proj = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.value_proj = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        if settings.relative_attention:
            self.pos_dropout = Dropout(config.hidden_dropout, rngs=rngs)
            if not settings.share_att_key and "c2p" in settings.pos_att_type:
                self.pos_key_proj = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
            if not settings.share_att_key and "p2c" in settings.pos_att_type:
                self.pos_query_proj = dense(width, width, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.attention_dropout, rngs=rngs)

    def _heads(self, x):
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def dropout_arguments(self) -> dict:
        """Attention dropout in training mode (as encoder.SelfAttention.dropout_arguments)."""
        if self.dropout.deterministic or self.dropout.rate == 0.0:
            return {"dropout_rate": 0.0, "dropout_rng": None}
        return {"dropout_rate": self.dropout.rate, "dropout_rng": self.dropout.rngs()}

    def position_bias(self, q, k, relative: RelativeTerms):
        """(c2p + p2c) * scale: float32 [1|B... -> B, N, T, T]."""
        table = self.pos_dropout(relative.embeddings)
        bias = jnp.zeros((), jnp.float32)
        if "c2p" in self.pos_att_type:
            pos_key = self._heads((self.key_proj if self.share_att_key else self.pos_key_proj)(table))
            by_row = jnp.einsum("btnh,rnh->bntr", q, pos_key, preferred_element_type=jnp.float32)
            bias = bias + jnp.take_along_axis(by_row, relative.c2p_index, axis=-1)
        if "p2c" in self.pos_att_type:
            pos_query = self._heads((self.query_proj if self.share_att_key else self.pos_query_proj)(table))
            by_row = jnp.einsum("bsnh,rnh->bnsr", k, pos_query, preferred_element_type=jnp.float32)
            bias = bias + jnp.swapaxes(jnp.take_along_axis(by_row, relative.p2c_index, axis=-1), -1, -2)
        return bias * self.scale

    def attend(self, q, k, v, rows: Rows, bias):
        """The context [B, T, N, H] of the projected heads under a score bias (None: content scores only)."""
        return attention(q, k, v, segment_ids=rows.segment_ids, packed=rows.packed, bias=bias, scale=self.scale,
                         implementation=self.implementation, **self.dropout_arguments())

    def __call__(self, x, rows: Rows, relative: RelativeTerms | None):
        q, k, v = self._heads(self.query_proj(x)), self._heads(self.key_proj(x)), self._heads(self.value_proj(x))
        bias = self.position_bias(q, k, relative) if relative is not None and self.pos_att_type else None
        context = self.attend(q, k, v, rows, bias)
        if not rows.packed:
            # transformers masks padding queries' whole score row: a uniform softmax over every key of the row
            mean_value = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(context.dtype)
            context = jnp.where((rows.segment_ids > 0)[:, :, None, None], context, mean_value)
        return context.reshape(*context.shape[:-2], -1)


class DebertaV2Attention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.self = DisentangledSelfAttention(config, dtype=dtype, rngs=rngs)
        self.output = DenseResidualNorm(config.hidden_size, config, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x, rows: Rows, relative):
        return self.output(self.self(x, rows, relative), x)


class DebertaV2Layer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.attention = DebertaV2Attention(config, dtype=dtype, rngs=rngs)
        self.intermediate = Intermediate(config, dtype=dtype, rngs=rngs)
        self.output = DenseResidualNorm(config.intermediate_size, config, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x, rows: Rows, relative):
        x = self.attention(x, rows, relative)
        return self.output(self.intermediate(x), x)


class SegmentConv(nnx.Module):
    """A same-padded 1-D convolution over time that only mixes tokens of the same segment (packed rows stay
    apart; a padded row's pad neighbours count as zeros, as in torch's zero padding of masked inputs).
    kernel [K, in, out] is torch's Conv1d weight [out, in, K] with its axes reversed."""

    def __init__(self, features: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, features, features), jnp.float32),
                                out_sharding=(None, "embed", None), eager_sharding=False)
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32), out_sharding=(None,), eager_sharding=False)
        self.dtype = dtype

    def __call__(self, x, segment_ids):
        kernel = self.kernel.get_value().astype(self.dtype)
        size, length = kernel.shape[0], x.shape[1]
        reach = (size - 1) // 2
        padded = jnp.pad(x.astype(self.dtype), ((0, 0), (reach, reach), (0, 0)))
        padded_ids = jnp.pad(segment_ids, ((0, 0), (reach, reach)), constant_values=-1)
        out = self.bias.get_value().astype(jnp.float32)
        for tap in range(size):
            same = (padded_ids[:, tap:tap + length] == segment_ids)[..., None]
            neighbours = jnp.where(same, padded[:, tap:tap + length], 0)
            out = out + jnp.dot(neighbours, kernel[tap], preferred_element_type=jnp.float32)
        return out.astype(self.dtype)


class ConvLayer(nnx.Module):
    """DeBERTa-v2's convolution branch after the first layer: LayerNorm(layer output + act(conv(input)))."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.conv = SegmentConv(config.hidden_size, config.deberta.conv_kernel_size, dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout, rngs=rngs)
        self.conv_act = config.deberta.conv_act

    def __call__(self, layer_input, layer_output, rows: Rows):
        real = (rows.segment_ids > 0)[..., None]
        out = jnp.where(real, self.conv(layer_input, rows.segment_ids), 0)
        out = activation(self.conv_act)(self.dropout(out))
        return self.LayerNorm(layer_output + out) * real.astype(layer_output.dtype)


class DebertaV2LayerStack(nnx.Module):
    """transformers' DebertaV2Encoder: the layers, the relative embeddings they share (with their LayerNorm
    when norm_rel_ebd) and the optional convolution."""

    def __init__(self, config: EncoderConfig, *, dtype, remat: str = "none", rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        settings = config.deberta
        self.config = config
        self.remat = remat
        self.layer = nnx.List([DebertaV2Layer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])
        if settings.relative_attention:
            self.rel_embeddings = embed(2 * settings.span, config.hidden_size, (None, "embed"), dtype=dtype, rngs=rngs)
        if settings.norm_rel_ebd:
            self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        if settings.conv_kernel_size > 0:
            self.conv = ConvLayer(config, dtype=dtype, rngs=rngs)

    def _relative(self, length: int, position_ids) -> RelativeTerms | None:
        if not hasattr(self, "rel_embeddings"):
            return None
        table = self.rel_embeddings.embedding[...].astype(self.rel_embeddings.dtype)
        if hasattr(self, "LayerNorm"):
            table = self.LayerNorm(table)
        return relative_terms(self.config, table, length, position_ids)

    def __call__(self, x, rows: Rows, position_ids=None):
        """position_ids [B, T]: the packed rows' restarting positions (ignored for padded rows, which are
        numbered 0..T-1 as transformers does whatever position ids it is given)."""
        relative = self._relative(x.shape[1], position_ids if rows.packed else None)
        layer_input = x
        for i, layer in enumerate(self.layer):
            if self.remat == "none":
                x = layer(x, rows, relative)
            else:
                x = nnx.remat(_layer_call(rows.packed), policy=REMAT_POLICIES[self.remat])(layer, x, rows.segment_ids,
                                                                                           relative)
            if i == 0 and hasattr(self, "conv"):
                x = self.conv(layer_input, x, rows)
        return x


def _layer_call(packed: bool):
    """layer(x, segment_ids, relative) with the static `packed` closed over (remat takes arrays only)."""
    def call(layer, x, segment_ids, relative):
        return layer(x, Rows(segment_ids, packed), relative)
    return call


class DebertaV2Encoder(nnx.Module):
    """transformers' DebertaV2Model: embeddings + DebertaV2LayerStack (no pooler: the sequence head has its
    own ContextPooler, models/heads.py). Called like encoder.Encoder."""

    def __init__(self, config: EncoderConfig, *, add_pooler: bool = False, dtype=jnp.float32,
                 hf_config_json: str = "{}", remat: str = "none", rngs: nnx.Rngs):
        if add_pooler:
            raise ValueError("DebertaV2Model has no BERT pooler (its sequence head pools with a ContextPooler)")
        self.config = config
        self.hf_config_json = hf_config_json
        self.embeddings = DebertaV2Embeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = DebertaV2LayerStack(config, dtype=dtype, remat=remat, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        """Last hidden states [B, T, hidden]; arguments as encoder.Encoder.__call__."""
        rows = rows_of(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, rows)
        return self.encoder(x, rows, position_ids)
