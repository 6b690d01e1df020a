"""int8 weight-only model folders: the file format (symmetric int8, one scale per output channel) and the
modules that run it (QuantizedLinear, QuantizedEmbed). jaxft/quantize.py writes such folders; predict and
serve load them here.

A quantized folder holds `model_int8.safetensors` (int8 "<key>" plus float32 "<key>_scale" for every
quantized tensor, float32 for the rest) and config.json with a "jaxft_quantization" entry. At inference a
QuantizedLinear keeps the int8 kernel on the device and computes (x @ q) * s + b: the kernel is converted
inside the compiled program and the per-output-channel scale is applied after the matmul, which is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from jaxft.models.hf import ModelLoadError, from_tensors, hf_key, param_items
from jaxft.models.paths import set_module

MARKER = "jaxft_quantization"
WEIGHTS_FILE = "model_int8.safetensors"
SCALE_SUFFIX = "_scale"
QMAX = 127


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


class QuantizedLinear(nnx.Module):
    """y = (x @ q) * scale + bias: nnx.Linear's output with an int8 kernel and per-output-channel scales."""

    def __init__(self, q_in_out: np.ndarray, scale: np.ndarray, bias, dtype=None):
        self.kernel_q = Int8Weight(jnp.asarray(q_in_out, jnp.int8))
        self.scale = WeightScale(jnp.asarray(scale, jnp.float32))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))
        self.dtype = dtype

    def __call__(self, x):
        dtype = self.dtype or x.dtype
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
            new = QuantizedLinear(q.T, scale, bias, dtype=old.dtype)  # HF [out, in] -> kernel [in, out]
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
    model.eval()
    return model
