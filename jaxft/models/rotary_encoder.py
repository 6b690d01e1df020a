"""The rotary-position encoder in Flax NNX: one implementation for ModernBERT (and so mmBERT and Ettin),
EuroBERT and GTE, built from the family's `RotaryLayout` (models/rotary_families.py) and the blocks of
models/blocks.py.

What a layout decides: module names (Hugging Face's, so "model.layers.3.attn.Wqkv.kernel" <->
"model.layers.3.attn.Wqkv.weight" and LoRA rules read "Wqkv|Wo" as peft users write them), pre-norm
(ModernBERT, EuroBERT) or post-norm (GTE) layers, LayerNorm or RMSNorm, fused or separate q/k/v and MLP
input projections, embedding norm, token types, final norm. What the config decides (EncoderConfig.rotary):
biases, dropouts, grouped-query attention, and per layer the RoPE theta and the attention window.

Attention goes through models/attention.py: padded rows and packed rows (segment ids, positions restarting
per example) alike; a sliding layer of window w passes window=(w // 2, w // 2), Hugging Face's
|i - j| <= local_attention // 2. Prefix keys for PEFT come in through `RotaryAttention.attend`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxft.models.attention import attention
from jaxft.models.blocks import (GatedMLP, apply_rotary, embed, fused_order, linear, norm, rotary_tables,
                                 split_fused)
from jaxft.models.config import EncoderConfig
from jaxft.models.dropout import Dropout
from jaxft.models.encoder import REMAT_POLICIES, Pooler, Rows, default_position_ids, rows_of
from jaxft.models.paths import get_module, place, split_dotted


def find(root: nnx.Module, dotted: str):
    return get_module(root, split_dotted(dotted))


def layer_norm_kind(config: EncoderConfig, features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    return norm(config.family.layout.norm, features, config.layer_norm_eps, bias=config.rotary.norm_bias,
                dtype=dtype, rngs=rngs)


class RotaryAttention(nnx.Module):
    """Self-attention with rotary positions: q, k, v (fused or not; k/v with fewer heads for GQA), RoPE on
    q and k, the attention entry point (with the layer's window), the output projection and its dropout."""

    def __init__(self, config: EncoderConfig, window: int, *, dtype, rngs: nnx.Rngs):
        layout, settings = config.family.layout, config.rotary
        self.qkv_names, self.output_name = layout.qkv, layout.attention_output
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, settings.num_kv_heads, settings.head_dim
        self.window = (window // 2, window // 2) if window else None
        self.implementation = config.attention
        hidden, bias = config.hidden_size, settings.attention_bias
        widths = ((3 * self.num_heads,) if len(self.qkv_names) == 1
                  else (self.num_heads, self.num_kv_heads, self.num_kv_heads))
        for name, heads in zip(self.qkv_names, widths):
            setattr(self, name, linear(hidden, heads * self.head_dim, ("embed", "heads"), bias=bias, dtype=dtype,
                                       rngs=rngs))
        setattr(self, self.output_name, linear(self.num_heads * self.head_dim, hidden, ("heads", "embed"), bias=bias,
                                               dtype=dtype, rngs=rngs))
        self.dropout = Dropout(config.attention_dropout, rngs=rngs)
        self.output_dropout = Dropout(settings.attention_output_dropout, rngs=rngs)

    def project(self, x):
        """q [B, T, N, H], k and v [B, T, K, H] (before rotation)."""
        if len(self.qkv_names) == 1:
            return split_fused(getattr(self, self.qkv_names[0])(x), 3, self.num_heads)
        q, k, v = (getattr(self, name)(x) for name in self.qkv_names)
        heads = lambda y: y.reshape(*y.shape[:-1], -1, self.head_dim)
        return heads(q), heads(k), heads(v)

    def dropout_arguments(self) -> dict:
        if self.dropout.deterministic or self.dropout.rate == 0.0:
            return {"dropout_rate": 0.0, "dropout_rng": None}
        return {"dropout_rate": self.dropout.rate, "dropout_rng": self.dropout.rngs()}

    def attend(self, q, k, v, rows: Rows):
        """Context [B, T, N, H] of rotated q, k and v."""
        return attention(q, k, v, segment_ids=rows.segment_ids, packed=rows.packed, window=self.window,
                         implementation=self.implementation, **self.dropout_arguments())

    def __call__(self, x, rows: Rows, cos, sin):
        q, k, v = self.project(x)
        context = self.attend(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, rows)
        return self.output_dropout(getattr(self, self.output_name)(context.reshape(*context.shape[:-2], -1)))


class RotaryLayer(nnx.Module):
    """One layer of any rotary family. Pre-norm: x + attn(norm(x)), then h + mlp(norm(h)) (ModernBERT's
    layer 0 skips the first norm). Post-norm (GTE): norm(x + attn(x)), then norm(h + dropout(mlp(h)))."""

    def __init__(self, config: EncoderConfig, index: int, *, dtype, rngs: nnx.Rngs):
        layout, settings = config.family.layout, config.rotary
        self.layout = layout
        self.rope = (settings.rope_thetas[index], settings.rope_factors[index])
        hidden = config.hidden_size
        self.has_attention_norm = not (layout.pre_norm and index == 0 and not layout.first_attention_norm)
        if self.has_attention_norm:
            setattr(self, layout.attention_norm, layer_norm_kind(config, hidden, dtype=dtype, rngs=rngs))
        setattr(self, layout.attention, RotaryAttention(config, settings.layer_windows[index], dtype=dtype, rngs=rngs))
        setattr(self, layout.mlp_norm, layer_norm_kind(config, hidden, dtype=dtype, rngs=rngs))
        setattr(self, layout.mlp, GatedMLP(hidden, config.intermediate_size, config.hidden_act, layout.mlp_names,
                                           in_bias=settings.mlp_in_bias, out_bias=settings.mlp_out_bias,
                                           dropout=settings.mlp_dropout, dtype=dtype, rngs=rngs))
        self.mlp_output_dropout = Dropout(settings.mlp_output_dropout, rngs=rngs)

    def _norm(self, name, x):
        return getattr(self, name)(x)

    def __call__(self, x, rows: Rows, cos, sin):
        layout = self.layout
        attend = getattr(self, layout.attention)
        mlp = lambda h: self.mlp_output_dropout(getattr(self, layout.mlp)(h))
        if layout.pre_norm:
            normed = self._norm(layout.attention_norm, x) if self.has_attention_norm else x
            x = x + attend(normed, rows, cos, sin)
            return x + mlp(self._norm(layout.mlp_norm, x))
        x = self._norm(layout.attention_norm, x + attend(x, rows, cos, sin))
        return self._norm(layout.mlp_norm, x + mlp(x))


def _layer_call(packed: bool):
    """layer(x, segment_ids, cos, sin) with the static `packed` closed over (remat takes arrays only)."""
    def call(layer, x, segment_ids, cos, sin):
        return layer(x, Rows(segment_ids, packed), cos, sin)
    return call


class RotaryEncoder(nnx.Module):
    """Embeddings + rotary layers (+ final norm, + GTE's pooler when asked): Hugging Face's `<Family>Model`.
    Called like models/encoder.py's Encoder (the same arguments, the same packed-row convention)."""

    def __init__(self, config: EncoderConfig, *, add_pooler: bool = False, dtype=jnp.float32,
                 hf_config_json: str = "{}", remat: str = "none", rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        layout = config.family.layout
        self.config = config
        self.hf_config_json = hf_config_json  # the source config.json, kept for save_pretrained
        self.remat = remat
        hidden = config.hidden_size
        place(self, layout.word_embeddings, embed(config.vocab_size, hidden, ("vocab", "embed"), dtype=dtype, rngs=rngs))
        if layout.token_type_embeddings and config.type_vocab_size:
            place(self, layout.token_type_embeddings, embed(config.type_vocab_size, hidden, (None, "embed"),
                                                            dtype=dtype, rngs=rngs))
        if layout.embedding_norm:
            place(self, layout.embedding_norm, layer_norm_kind(config, hidden, dtype=dtype, rngs=rngs))
        self.embedding_dropout = Dropout(config.rotary.embedding_dropout, rngs=rngs)
        setattr(self, layout.layers, nnx.List([RotaryLayer(config, i, dtype=dtype, rngs=rngs)
                                               for i in range(config.num_layers)]))
        if layout.final_norm:
            setattr(self, layout.final_norm, layer_norm_kind(config, hidden, dtype=dtype, rngs=rngs))
        if add_pooler:
            self.pooler = Pooler(config, dtype=dtype, rngs=rngs)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return find(self, self.config.family.layout.word_embeddings)

    @property
    def layer_stack(self) -> nnx.List:
        return getattr(self, self.config.family.layout.layers)

    def embed(self, input_ids, token_type_ids=None, inputs_embeds=None):
        """The embeddings' output [B, T, hidden]: word (or `inputs_embeds`) + token types, norm, dropout."""
        layout = self.config.family.layout
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if layout.token_type_embeddings and self.config.type_vocab_size:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + find(self, layout.token_type_embeddings)(types)
        if layout.embedding_norm:
            x = find(self, layout.embedding_norm)(x)
        return self.embedding_dropout(x)

    def position_tables(self, position_ids) -> dict:
        """{(theta, factor): (cos, sin)} for every RoPE setting the layers use."""
        head_dim = self.config.rotary.head_dim
        return {rope: rotary_tables(position_ids, head_dim, *rope) for rope in {layer.rope for layer in self.layer_stack}}

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        """Last hidden states [batch, seq, hidden] (see models/encoder.py's Encoder.__call__ for the arguments;
        token_type_ids matter only to families with token types, GTE)."""
        rows = rows_of(input_ids, attention_mask, segment_ids)
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids)
        x = self.embed(input_ids, token_type_ids, inputs_embeds)
        tables = self.position_tables(position_ids)
        for layer in self.layer_stack:
            cos, sin = tables[layer.rope]
            if self.remat == "none":
                x = layer(x, rows, cos, sin)
            else:
                x = nnx.remat(_layer_call(rows.packed), policy=REMAT_POLICIES[self.remat])(
                    layer, x, rows.segment_ids, cos, sin)
        final_norm = self.config.family.layout.final_norm
        return getattr(self, final_norm)(x) if final_norm else x


# ---------------------------------------------------------------------------------------------- fused columns

def fused_output_order(module_path: str, config: EncoderConfig) -> np.ndarray | None:
    """For a fused projection's dotted module path ("model.layers.0.attn.Wqkv"), the order of its output
    columns (blocks.fused_order: ours = hf[..., order]); None for every other module."""
    layout = config.family.layout
    if layout is None:
        return None
    for suffix, kind in layout.fused_modules().items():
        if module_path.endswith(f".{suffix}") and f"{layout.layers}." in module_path:
            if kind == "qkv":
                return fused_order(3, config.num_heads, config.rotary.head_dim)
            return fused_order(2, config.intermediate_size, 1)
    return None


def to_hf_columns(array: np.ndarray, order: np.ndarray | None, axis: int = -1) -> np.ndarray:
    """Our column order -> Hugging Face's along `axis` (identity when order is None)."""
    return array if order is None else np.take(array, np.argsort(order), axis=axis)


def from_hf_columns(array: np.ndarray, order: np.ndarray | None, axis: int = -1) -> np.ndarray:
    return array if order is None else np.take(array, order, axis=axis)
