"""Building blocks of the rotary-position encoders (ModernBERT, EuroBERT, GTE; models/rotary_encoder.py):
dense layers and norms with optional biases, RMSNorm, rotary position embeddings, the gated MLP, the fused
projections' column order, masked pooling and ModernBERT's prediction head.

Parameters are float32; `dtype` is the compute dtype. Kernels carry the logical axis names of
models/encoder.py ("embed", "heads", "mlp", "vocab", "norm"), so the same mesh rules shard them.

Fused projections (ModernBERT's Wqkv = [q; k; v] and Wi = [input; gate]) keep Hugging Face's single
Linear, but their output columns are stored interleaved: group-major instead of part-major. Hugging Face
orders Wqkv's columns (part, head, head_dim) and Wi's (part, column); jaxft stores (head, part, head_dim)
and (column, part). A contiguous split of the columns over the tensor axis then hands every device whole
heads of q, k and v (and matching columns of both GeGLU halves) instead of q on one device and v on
another. The order is fixed (it does not depend on the mesh); checkpoints, exports and peft adapters are
converted at the boundary (`fused_order`), so files always hold Hugging Face's order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxft.models.activations import activation
from jaxft.models.dropout import Dropout

INIT_STD = 0.02


def logical(*names) -> dict:
    """Kernel metadata: logical axis names only (eager sharding would need a mesh at construction)."""
    return {"out_sharding": names, "eager_sharding": False}


def linear(in_features: int, out_features: int, axes: tuple, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(INIT_STD), bias_init=nnx.initializers.zeros_init(),
                      kernel_metadata=logical(*axes), bias_metadata=logical(axes[-1]), rngs=rngs)


def embed(num: int, features: int, axes: tuple, *, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(INIT_STD), embedding_metadata=logical(*axes),
                     rngs=rngs)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, the statistics in float32 (Llama/EuroBERT's RMSNorm); the
    parameter is "scale" like LayerNorm's, so Hugging Face's "weight" maps to it the same way."""

    def __init__(self, features: int, eps: float, *, dtype, rngs: nnx.Rngs):
        del rngs  # the scale starts at one
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32), **logical("norm"))
        self.eps = float(eps)
        self.dtype = dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        dtype = self.dtype or x.dtype
        return self.scale.get_value().astype(dtype) * normed.astype(dtype)


def norm(kind: str, features: int, eps: float, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """kind "layer": LayerNorm (with or without a bias); "rms": RMSNorm (never a bias)."""
    if kind == "rms":
        return RMSNorm(features, eps, dtype=dtype, rngs=rngs)
    if kind != "layer":
        raise ValueError(f"norm kind {kind!r} is not 'layer' or 'rms'")
    return nnx.LayerNorm(features, epsilon=eps, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                         scale_metadata=logical("norm"), bias_metadata=logical("norm"), rngs=rngs)


# ---------------------------------------------------------------------------------------------- rotary

def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """theta ** (-2i / head_dim) for i < head_dim / 2, float32 (the default RoPE of every family here)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    return (1.0 / theta ** exponents).astype(np.float32)


def rotary_tables(position_ids, head_dim: int, theta: float, factor: float = 1.0):
    """(cos, sin) [B, T, head_dim] in float32 for integer positions [B, T]; `factor` > 1 is linear
    position scaling (positions / factor)."""
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta) / np.float32(factor))
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x, cos, sin):
    """Rotate x [B, T, N, H] by the tables [B, T, H] (the rotate-half convention), in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


# ---------------------------------------------------------------------------------------------- fused columns

def fused_order(parts: int, groups: int, width: int) -> np.ndarray:
    """Column order of a fused projection: stored column j holds Hugging Face's column order[j]. HF lays the
    columns out (part, group, width); jaxft (group, part, width). Load: ours = hf[..., order];
    save: hf = ours[..., np.argsort(order)]."""
    return np.arange(parts * groups * width).reshape(parts, groups, width).transpose(1, 0, 2).reshape(-1)


def split_fused(y, parts: int, groups: int):
    """A fused projection's output [..., groups * parts * width] (jaxft's order) -> `parts` arrays
    [..., groups, width]."""
    y = y.reshape(*y.shape[:-1], groups, parts, -1)
    return [y[..., i, :] for i in range(parts)]


# ---------------------------------------------------------------------------------------------- MLP

class GatedMLP(nnx.Module):
    """out(dropout(act(gate(x)) * up(x))): GeGLU / SwiGLU. `names` are the family's module names: (fused,
    out) with one Linear holding both halves (ModernBERT's Wi, activated half first), or (gate, up, out)."""

    def __init__(self, hidden: int, intermediate: int, act: str, names: tuple[str, ...], *, in_bias: bool,
                 out_bias: bool, dropout: float, dtype, rngs: nnx.Rngs):
        self.names = tuple(names)
        self.intermediate = intermediate
        self.act = act
        *inputs, output = self.names
        width = 2 * intermediate if len(inputs) == 1 else intermediate
        for name in inputs:
            setattr(self, name, linear(hidden, width, ("embed", "mlp"), bias=in_bias, dtype=dtype, rngs=rngs))
        setattr(self, output, linear(intermediate, hidden, ("mlp", "embed"), bias=out_bias, dtype=dtype, rngs=rngs))
        self.dropout = Dropout(dropout, rngs=rngs)

    @property
    def fused(self) -> bool:
        return len(self.names) == 2

    def __call__(self, x):
        if self.fused:
            gate, up = (part[..., 0] for part in split_fused(getattr(self, self.names[0])(x), 2, self.intermediate))
        else:
            gate, up = getattr(self, self.names[0])(x), getattr(self, self.names[1])(x)
        return getattr(self, self.names[-1])(self.dropout(activation(self.act)(gate) * up))


# ---------------------------------------------------------------------------------------------- heads

def pool(hidden, attention_mask, how: str):
    """[B, T, H] -> [B, H]: "cls"/"bos" the first token; "mean" the mean over real tokens (all tokens
    when there is no mask)."""
    if how in ("cls", "bos"):
        return hidden[:, 0]
    if how != "mean":
        raise ValueError(f"pooling {how!r} is not cls, bos or mean")
    return masked_mean(hidden, attention_mask)


def masked_mean(x, attention_mask):
    """Mean over the T axis of [B, T, ...] weighted by the mask [B, T] (None: a plain mean), in float32."""
    x = x.astype(jnp.float32)
    if attention_mask is None:
        return jnp.mean(x, axis=1)
    weights = attention_mask.astype(jnp.float32).reshape(*attention_mask.shape, *(1,) * (x.ndim - 2))
    return jnp.sum(x * weights, axis=1) / jnp.sum(weights, axis=1)


class PredictionHead(nnx.Module):
    """ModernBERT's `head`, in front of every task head: norm(act(dense(x))), the dense with
    classifier_bias, the act classifier_activation, the norm a LayerNorm with norm_bias (config.rotary)."""

    def __init__(self, config, *, dtype, rngs: nnx.Rngs):
        width, settings = config.hidden_size, config.rotary
        self.dense = linear(width, width, ("embed", None), bias=settings.classifier_bias, dtype=dtype, rngs=rngs)
        self.norm = norm("layer", width, config.layer_norm_eps, bias=settings.norm_bias, dtype=dtype, rngs=rngs)
        self.act = settings.classifier_activation

    def __call__(self, x):
        return self.norm(activation(self.act)(self.dense(x)))
