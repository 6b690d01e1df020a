"""LoRA, DoRA and bottleneck adapters as drop-in replacements of an `nnx.Linear`, and merging them back.

A wrapped layer keeps the base layer's own `kernel` and `bias` Variables (frozen `nnx.Param`s at the same
path, "...query.kernel"), so loading, saving and sharding of the base weights are unchanged. What a method
adds lives next to them as `PeftParam`s: "...query.lora_a" [in, rank], "...query.lora_b" [rank, out],
"...query.lora_magnitude" [out] (DoRA), "...output.dense.adapter_down" [out, size] and so on.

`PeftParam` is deliberately *not* a subclass of `nnx.Param` (unlike `nnx.LoRAParam`): code that selects
`nnx.Param` (HF export, checkpoint loading, a `wrt=nnx.Param` optimizer) sees exactly the base model, and
nothing trains a frozen base weight by accident.

Layouts follow NNX kernels ([in, out]); PEFT's torch layout is the transpose (lora_A.weight [rank, in],
lora_B.weight [out, rank]). LoRA: y = x W + b + s * dropout(x) A B with s = alpha / rank (alpha / sqrt(rank)
with rsLoRA); B starts at zero so a wrapped model computes exactly what the base did. DoRA (peft's
formulation): y = m / ||W + s A B||_col * (x W + s x A B) + b, the column norm treated as a constant in
the gradient; m starts at ||W||_col.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.config import ADAPTER_ACTIVATIONS
from jaxft.models.activations import activation
from jaxft.models.dropout import Dropout
from jaxft.models.paths import dotted, set_module

HIGHEST = jax.lax.Precision.HIGHEST


class PeftParam(nnx.Variable):
    """A parameter added by a PEFT method (LoRA A/B, DoRA magnitude, adapter, prefix). Not an nnx.Param."""


def peft_param(value: jax.Array, axes: tuple) -> PeftParam:
    # Logical sharding names as the encoder's kernels carry them ("embed", "heads", "mlp", None).
    return PeftParam(value, out_sharding=tuple(axes), eager_sharding=False)


def kernel_axes(linear: nnx.Linear) -> tuple:
    axes = linear.kernel.get_metadata().get("out_sharding") or (None, None)
    return tuple(axes)


class WrappedLinear(nnx.Linear):
    """An nnx.Linear that adopts another one's Variables and settings (no new base weights)."""

    def _adopt(self, base: nnx.Linear) -> None:
        self.kernel = base.kernel
        self.bias = base.bias
        for name in ("in_features", "out_features", "use_bias", "dtype", "param_dtype", "precision",
                     "dot_general", "promote_dtype", "preferred_element_type"):
            setattr(self, name, getattr(base, name))

    def base_call(self, x):
        return nnx.Linear.__call__(self, x)

    def plain(self, kernel: jax.Array | None = None) -> nnx.Linear:
        """An ordinary nnx.Linear with this layer's bias and settings and `kernel` (default: the base's)."""
        linear = nnx.eval_shape(lambda: nnx.Linear(self.in_features, self.out_features, use_bias=self.use_bias,
                                                   rngs=nnx.Rngs(0)))
        linear.kernel = self.kernel if kernel is None else self.kernel.replace(kernel)
        linear.bias = self.bias
        for name in ("dtype", "param_dtype", "precision", "dot_general", "promote_dtype",
                     "preferred_element_type"):
            setattr(linear, name, getattr(self, name))
        return linear


def lora_scaling(rank: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def low_rank_product(x: jax.Array, a: jax.Array, b: jax.Array, scaling: float) -> jax.Array:
    """s * (x A) B with autodiff's gradient, written out by hand. On CPU an optimization barrier in the backward
    keeps XLA:CPU from fusing the producer of the incoming cotangent (GELU's derivative, after
    `intermediate.dense`) into the transposed copy that the B gradient reads, which it would recompute in
    cache-hostile order (it does not keep XLA from computing GELU itself into the transposed copy of x that the
    A gradient of `output.dense` reads). On GPU/TPU there is no barrier: those fusions are what makes the
    backward fast there. (Measured CPU step times: benchmarks/results/HISTORY.md.)"""
    return low_rank_product_fwd(x, a, b, scaling)[0]


def low_rank_product_fwd(x, a, b, scaling):
    xa = x @ a
    return xa @ b * jnp.asarray(scaling, x.dtype), (x, a, b, xa)


def low_rank_product_bwd(scaling, residuals, cotangent):
    x, a, b, xa = residuals
    if jax.default_backend() == "cpu":  # decided at trace time: see low_rank_product
        x, cotangent = jax.lax.optimization_barrier((x, cotangent))
    cotangent = cotangent * jnp.asarray(scaling, cotangent.dtype)
    d_xa = cotangent @ b.T
    leading = tuple(range(x.ndim - 1))
    d_a = jnp.tensordot(x, d_xa, axes=(leading, leading))
    d_b = jnp.tensordot(xa, cotangent, axes=(leading, leading))
    return d_xa @ a.T, d_a.astype(a.dtype), d_b.astype(b.dtype)


low_rank_product.defvjp(low_rank_product_fwd, low_rank_product_bwd)


class LoraLinear(WrappedLinear):
    """nnx.Linear + a low-rank update (LoRA), optionally magnitude/direction decomposed (DoRA)."""

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 dora: bool = False, rngs: nnx.Rngs):
        if rank <= 0:
            raise ValueError(f"LoRA rank must be > 0, got {rank}")
        self._adopt(base)
        self.rank, self.alpha, self.rslora, self.dora = int(rank), float(alpha), bool(rslora), bool(dora)
        self.scaling = lora_scaling(self.rank, self.alpha, self.rslora)
        in_axis, out_axis = kernel_axes(base)
        # peft's default: kaiming_uniform(a=sqrt(5)) on [rank, in] is U(-1/sqrt(in), 1/sqrt(in)); B = 0.
        bound = 1.0 / math.sqrt(self.in_features)
        a = jax.random.uniform(rngs.params(), (self.in_features, self.rank), jnp.float32, -bound, bound)
        self.lora_a = peft_param(a, (in_axis, None))
        self.lora_b = peft_param(jnp.zeros((self.rank, self.out_features), jnp.float32), (None, out_axis))
        self.lora_dropout = Dropout(dropout, rngs=rngs)
        if self.dora:
            self.lora_magnitude = peft_param(self._column_norm(self.lora_a[...], self.lora_b[...]), (out_axis,))

    def delta(self, a=None, b=None) -> jax.Array:
        """The scaled low-rank update s * A B, [in, out], float32."""
        a = self.lora_a[...] if a is None else a
        b = self.lora_b[...] if b is None else b
        return jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32), precision=HIGHEST) * self.scaling

    def _column_norm(self, a, b) -> jax.Array:
        weight = self.kernel[...].astype(jnp.float32) + self.delta(a, b)
        return jnp.sqrt(jnp.sum(weight * weight, axis=0))

    def _low_rank(self, x):
        x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        return low_rank_product(x, a, b, self.scaling)

    def __call__(self, x, out_sharding=None):
        y = self.base_call(x)
        dropout_active = not self.lora_dropout.deterministic and self.lora_dropout.rate > 0
        dropped = self.lora_dropout(x) if dropout_active else x
        if not self.dora:
            return y + self._low_rank(dropped).astype(y.dtype)
        # DoRA as peft computes it: base(x) + (m/n - 1) * x W + m/n * s x A B, n = ||W + s A B||_col (constant).
        norm = jax.lax.stop_gradient(self._column_norm(self.lora_a[...], self.lora_b[...]))
        scale = (self.lora_magnitude[...] / norm).astype(y.dtype)
        if dropout_active:
            dropped_c, kernel = self.promote_dtype((dropped, self.kernel[...]), dtype=self.dtype)[:2]
            base_part = (dropped_c @ kernel).astype(y.dtype)
        else:
            base_part = y - self.bias[...].astype(y.dtype) if self.bias is not None else y
        return y + (scale - 1) * base_part + scale * self._low_rank(dropped).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        kernel = self.kernel[...].astype(jnp.float32)
        merged = kernel + self.delta()
        if self.dora:
            merged = merged * (self.lora_magnitude[...] / self._column_norm(self.lora_a[...], self.lora_b[...]))
        return merged.astype(self.kernel[...].dtype)


class AdapterLinear(WrappedLinear):
    """nnx.Linear followed by a residual bottleneck adapter (Houlsby / Pfeiffer): h + up(act(down(h))).

    `up` starts at zero, so the wrapped model computes exactly what the base did."""

    def __init__(self, base: nnx.Linear, *, size: int, activation: str = "relu", init_std: float = 0.02,
                 rngs: nnx.Rngs):
        if size <= 0:
            raise ValueError(f"adapter size must be > 0, got {size}")
        if activation not in ADAPTER_ACTIVATIONS:
            raise ValueError(f"adapter activation {activation!r} is not one of {', '.join(ADAPTER_ACTIVATIONS)}")
        self._adopt(base)
        self.adapter_size, self.activation = int(size), activation
        out_axis = kernel_axes(base)[1]
        width = self.out_features
        self.adapter_down = peft_param(init_std * jax.random.normal(rngs.params(), (width, size), jnp.float32),
                                       (out_axis, None))
        self.adapter_down_bias = peft_param(jnp.zeros((size,), jnp.float32), (None,))
        self.adapter_up = peft_param(jnp.zeros((size, width), jnp.float32), (None, out_axis))
        self.adapter_up_bias = peft_param(jnp.zeros((width,), jnp.float32), (out_axis,))

    def __call__(self, x, out_sharding=None):
        h = self.base_call(x)
        h_c, down, down_b, up, up_b = self.promote_dtype(
            (h, self.adapter_down[...], self.adapter_down_bias[...], self.adapter_up[...], self.adapter_up_bias[...]),
            dtype=self.dtype)
        return h + (activation(self.activation)(h_c @ down + down_b) @ up + up_b).astype(h.dtype)


# ---------------------------------------------------------------------------------------------- module surgery

def linear_modules(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Linear]]:
    """(path, layer) for every nnx.Linear in the model (wrapped ones included), in a stable order."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            yield tuple(path), module


def merge(model: nnx.Module, *, inplace: bool = False) -> nnx.Module:
    """Fold every LoRA/DoRA layer into its base kernel: a plain model with the same outputs.

    Returns a new model (the argument is untouched) unless inplace=True. Bottleneck adapters and prefixes
    cannot be folded into the base weights; a model holding them raises ValueError."""
    unmergeable = [dotted(p) for p, m in nnx.iter_modules(model) if isinstance(m, AdapterLinear)
                   or hasattr(m, "prefix_key")]
    if unmergeable:
        raise ValueError(f"cannot merge bottleneck adapters or prefixes into base weights: {unmergeable[:3]}")
    if not inplace:
        model = nnx.clone(model)
    for path, layer in list(linear_modules(model)):
        if isinstance(layer, LoraLinear):
            set_module(model, path, layer.plain(layer.merged_kernel()))
    if hasattr(model, "peft_json"):
        del model.peft_json
    return model
