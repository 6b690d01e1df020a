"""int8 model folders: the file format (symmetric int8 weights, one scale per output channel) and the modules
that run it (QuantizedLinear, QuantizedEmbed). jaxft/quantize.py writes such folders; predict and serve load
them here.

A quantized folder holds `model_int8.safetensors` (int8 "<key>" plus float32 "<key>_scale" for every
quantized tensor, float32 for the rest) and config.json with a "jaxft_quantization" entry whose "method"
says how the dense layers compute (METHODS):
- "int8_dynamic" (W8A8): each row of the activations x (each token) is quantized on the fly, symmetric with
  its own scale max|x_row| / 127, and the matmul runs in integers, int8 x int8 -> int32
  (lax.dot_general with preferred_element_type=int32); y = acc * x_scale * w_scale + b. The rounding of the
  activations is the only error beyond the weights'. XLA:CPU lowers the int8 dot to its YNNPACK int8 kernels
  (VNNI / AMX where the CPU has them); GPUs use the integer tensor cores.
- "int8_weight_only": y = (x @ q) * s + b in floating point: the kernel is converted inside the compiled
  program and the per-output-channel scale applied after the matmul, which is exact; smaller files, not faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from jaxft.models.hf import ModelLoadError, from_tensors, hf_key, param_items
from jaxft.models.paths import dotted, set_module
from jaxft.models.rotary_encoder import from_hf_columns, fused_output_order

MARKER = "jaxft_quantization"
WEIGHTS_FILE = "model_int8.safetensors"
SCALE_SUFFIX = "_scale"
QMAX = 127
DYNAMIC, WEIGHT_ONLY = "int8_dynamic", "int8_weight_only"
METHODS = (DYNAMIC, WEIGHT_ONLY)


# ---------------------------------------------------------------------------------------------- arrays

def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per row: weight [rows, cols] float -> (q int8 [rows, cols], scale [rows])."""
    weight = np.asarray(weight, np.float32)
    peak = np.abs(weight).max(axis=1)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]


def quantized_keys(tensors: dict[str, np.ndarray]) -> list[str]:
    return sorted(k for k in tensors if k + SCALE_SUFFIX in tensors and tensors[k].dtype == np.int8)


def dequantize_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 state dict a quantized file stands for."""
    out = {k: v for k, v in tensors.items() if not k.endswith(SCALE_SUFFIX)}
    for key in quantized_keys(tensors):
        out[key] = dequantize_rows(tensors[key], tensors[key + SCALE_SUFFIX])
    return out


# ---------------------------------------------------------------------------------------------- modules

class Int8Weight(nnx.Param):
    """int8 codes of a quantized kernel ([in, out]) or embedding table ([rows, width])."""


class WeightScale(nnx.Param):
    """float32 scale per output channel (kernels) or per row (embedding tables)."""


def quantize_activations(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 per row of the last axis (per token): (codes int8 [..., in], scale float32 [..., 1])."""
    x = x.astype(jnp.float32)
    peak = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(peak > 0, peak / QMAX, 1.0)
    return jnp.clip(jnp.round(x / scale), -QMAX, QMAX).astype(jnp.int8), scale


def int8_matmul(x: jax.Array, q: jax.Array, weight_scale: jax.Array) -> jax.Array:
    """x [..., in] float @ q [in, out] int8 with per-output-channel scales, as an integer matmul (float32 out)."""
    codes, x_scale = quantize_activations(x)
    acc = jax.lax.dot_general(codes, q, (((codes.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return acc.astype(jnp.float32) * x_scale * weight_scale.astype(jnp.float32)


class QuantizedLinear(nnx.Module):
    """nnx.Linear's output from an int8 kernel [in, out] and per-output-channel scales: with `activations`
    "dynamic" an integer matmul of per-token quantized activations (int8_matmul), with "none"
    y = (x @ q) * scale + bias in the compute dtype."""

    def __init__(self, q_in_out: np.ndarray, scale: np.ndarray, bias, dtype=None, activations: str = "none"):
        if activations not in ("dynamic", "none"):
            raise ValueError(f"activations must be 'dynamic' or 'none', got {activations!r}")
        self.kernel_q = Int8Weight(jnp.asarray(q_in_out, jnp.int8))
        self.scale = WeightScale(jnp.asarray(scale, jnp.float32))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))
        self.dtype = dtype
        self.activations = activations

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        if self.activations == "dynamic":
            y = int8_matmul(x, self.kernel_q.get_value(), self.scale.get_value()).astype(dtype)
        else:
            y = jnp.dot(x.astype(dtype), self.kernel_q.get_value().astype(dtype))
            y = y * self.scale.get_value().astype(dtype)
        if self.bias is not None:
            y = y + self.bias.get_value().astype(dtype)
        return y


class QuantizedEmbed(nnx.Module):
    """Embedding lookup from an int8 table with one scale per row."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, dtype=None):
        self.embedding_q = Int8Weight(jnp.asarray(q, jnp.int8))
        self.scale = WeightScale(jnp.asarray(scale, jnp.float32))
        self.dtype = dtype or jnp.float32

    def __call__(self, ids):
        rows = jnp.take(self.embedding_q.get_value(), ids, axis=0).astype(self.dtype)
        return rows * jnp.take(self.scale.get_value(), ids, axis=0).astype(self.dtype)[..., None]


def swap_in_quantized(model: nnx.Module, tensors: dict[str, np.ndarray]) -> list[str]:
    """Replace the model's Linear / Embed modules whose HF weight key is quantized in `tensors` by their
    int8 versions (biases taken from the model, which must already hold the checkpoint's values)."""
    wanted = set(quantized_keys(tensors))
    by_key = {}
    for path, _ in param_items(model):
        key, _ = hf_key(path, model.config)
        if key in wanted and path[-1] in ("kernel", "embedding"):
            by_key[key] = tuple(path[:-1])
    missing = wanted - set(by_key)
    if missing:
        raise ValueError(f"quantized weights the model has no place for: {', '.join(sorted(missing)[:5])}")
    modules = dict(nnx.iter_graph(model))
    for key, path in sorted(by_key.items()):
        old = modules[path]
        q, scale = tensors[key], tensors[key + SCALE_SUFFIX]
        if isinstance(old, nnx.Linear):
            bias = None if old.bias is None else np.asarray(old.bias.get_value())
            order = fused_output_order(dotted(path), model.config)  # a fused projection: jaxft's column order
            new = QuantizedLinear(from_hf_columns(q.T, order), from_hf_columns(scale, order), bias,
                                  dtype=old.dtype)  # HF [out, in] -> kernel [in, out]
        elif isinstance(old, nnx.Embed):
            new = QuantizedEmbed(q, scale, dtype=old.dtype)
        else:
            raise ValueError(f"{key}: quantized weight of a {type(old).__name__}, not a Linear or Embed")
        set_module(model, path, new)
    return sorted(by_key)


# ---------------------------------------------------------------------------------------------- folders

def quantization_info(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(MARKER)


def load_quantized(model_dir: str | Path, task: str, dtype=jnp.float32):
    """A quantized folder -> model with QuantizedLinear (and QuantizedEmbed) modules, in eval mode."""
    folder = Path(model_dir)
    info = quantization_info(folder)
    if not info:
        raise ModelLoadError(f"{folder}: config.json has no {MARKER!r} entry; not a quantized folder")
    weights = folder / info.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: quantized weights {weights.name} are missing")
    tensors = load_file(str(weights))
    # The model skeleton and the float weights go through the same code as from_pretrained.
    model, report = from_tensors(folder, dequantize_tensors(tensors), task, dtype)
    if report.missing:
        raise ModelLoadError(f"{folder}: {weights.name} lacks weights: {', '.join(report.missing[:5])}")
    swap_in_quantized(model, tensors)
    method = info.get("method", WEIGHT_ONLY)
    if method not in METHODS:
        raise ModelLoadError(f"{folder}: config.json {MARKER}.method {method!r} is not one of {', '.join(METHODS)}")
    set_activations(model, "dynamic" if method == DYNAMIC else "none")
    model.eval()
    return model


def set_activations(model: nnx.Module, activations: str) -> int:
    """Every QuantizedLinear of the model computes with `activations` ("dynamic" | "none"); returns how many."""
    layers = [module for _, module in nnx.iter_graph(model) if isinstance(module, QuantizedLinear)]
    for layer in layers:
        layer.activations = activations
    return len(layers)
