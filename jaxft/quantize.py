"""int8 weight-only quantization and magnitude pruning of an exported model, for inference.

    python -m jaxft.main quantize --model runs/ner/export --out runs/ner/export-int8 [--prune 0.3]

What changes: the dense kernels of the encoder layers ("...layer.N....weight", 2-D) and, with
`--embeddings`, the word-embedding table. Everything else (biases, LayerNorms, position embeddings, the task
head) stays float32.

- Pruning (optional, before quantization): the given fraction of smallest-magnitude weights is set to zero,
  either per kernel (`--prune-scope layer`) or under one threshold over all targeted kernels (`global`).
  Zeros stay exactly zero under symmetric quantization.
- Quantization: symmetric, one scale per output channel (kernel rows in Hugging Face's [out, in] layout; rows
  of the embedding table): q = round(w / s), s = max|w| / 127, q in [-127, 127] (int8).

The output folder holds `model_int8.safetensors` (int8 "<key>" plus float32 "<key>_scale" for every
quantized tensor, float32 for the rest), config.json with a "jaxft_quantization" entry (the marker
predict/serve look for), the tokenizer and jaxft_task.json. The weights file is deliberately not called
model.safetensors: a loader that does not know the format (`from_pretrained`, PyTorch transformers)
refuses the folder instead of reading int8 codes as weights.

At inference a QuantizedLinear keeps the int8 kernel on the device and computes (x @ q) * s + b: the int8
kernel is converted inside the compiled program, and the per-output-channel scale is applied after the
matmul, which is exact. With `--no-int8` only pruning is applied and an ordinary float32 HF folder is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

MARKER = "jaxft_quantization"
WEIGHTS_FILE = "model_int8.safetensors"
SCALE_SUFFIX = "_scale"
QMAX = 127
WORD_EMBEDDINGS = re.compile(r"(^|\.)embeddings\.word_embeddings\.weight$")
_LAYER = re.compile(r"\.layer\.\d+\.")


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


def target_keys(tensors: dict[str, np.ndarray], embeddings: bool = False) -> list[str]:
    """HF keys of the encoder layers' dense kernels (2-D "...layer.N....weight"), plus the word embeddings."""
    keys = [k for k, v in tensors.items() if _LAYER.search(k) and k.endswith(".weight") and v.ndim == 2]
    if embeddings:
        keys += [k for k in tensors if WORD_EMBEDDINGS.search(k)]
    return sorted(keys)


def prune(tensors: dict[str, np.ndarray], keys: Iterable[str], fraction: float, scope: str = "layer"
          ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Zero the `fraction` of smallest-|w| entries of each key (scope "layer") or of all keys together
    ("global"); exactly round(fraction * n) entries each time (ties broken by position). Returns the new
    tensors and the zero fraction of every key."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune fraction must be in [0, 1), got {fraction}")
    if scope not in ("layer", "global"):
        raise ValueError(f"prune scope must be 'layer' or 'global', got {scope!r}")
    keys = list(keys)
    out = dict(tensors)
    if scope == "layer":
        for key in keys:
            out[key] = _zero_smallest(tensors[key], int(round(fraction * tensors[key].size)))
    else:
        flat = np.concatenate([np.abs(tensors[k]).ravel() for k in keys])
        count = int(round(fraction * flat.size))
        keep = np.ones(flat.size, bool)
        if count:
            keep[np.argpartition(flat, count - 1)[:count]] = False
        start = 0
        for key in keys:
            size = tensors[key].size
            out[key] = np.where(keep[start:start + size].reshape(tensors[key].shape), tensors[key], 0.0
                                ).astype(np.float32)
            start += size
    return out, {key: float(np.mean(out[key] == 0)) for key in keys}


def _zero_smallest(weight: np.ndarray, count: int) -> np.ndarray:
    flat = np.array(weight, np.float32).ravel()
    if count:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0.0
    return flat.reshape(weight.shape)


def quantize_tensors(tensors: dict[str, np.ndarray], keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Each key -> int8 codes under the key plus float32 "<key>_scale" (per row = output channel)."""
    out = dict(tensors)
    for key in keys:
        out[key], out[key + SCALE_SUFFIX] = quantize_rows(tensors[key])
    return out


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


def _set_module(root: nnx.Module, path: tuple, module: nnx.Module) -> None:
    parent = root
    for part in path[:-1]:
        parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    if isinstance(path[-1], int):
        parent[path[-1]] = module
    else:
        setattr(parent, path[-1], module)


def swap_in_quantized(model: nnx.Module, tensors: dict[str, np.ndarray]) -> list[str]:
    """Replace the model's Linear / Embed modules whose HF weight key is quantized in `tensors` by their
    int8 versions (biases taken from the model, which must already hold the checkpoint's values)."""
    from jaxft.models.hf import hf_key, param_items

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
        _set_module(model, path, new)
    return sorted(by_key)


# ---------------------------------------------------------------------------------------------- folders

def quantization_info(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(MARKER)


def load_quantized(model_dir: str | Path, task: str, dtype=jnp.float32):
    """A quantized folder -> model with QuantizedLinear (and QuantizedEmbed) modules, in eval mode."""
    from safetensors.numpy import load_file

    from jaxft.models.hf import ModelLoadError, from_tensors

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


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the weight files of a model folder."""
    names = ("model.safetensors", WEIGHTS_FILE)
    return sum((Path(folder) / n).stat().st_size for n in names if (Path(folder) / n).is_file()) + sum(
        p.stat().st_size for p in Path(folder).glob("model-*.safetensors"))


def quantize_folder(model_dir: str | Path, out_dir: str | Path, *, prune_fraction: float = 0.0,
                    prune_scope: str = "layer", int8: bool = True, embeddings: bool = False) -> dict:
    """Read an exported folder (safetensors), prune and/or quantize, write `out_dir`. Returns a summary."""
    from safetensors.numpy import save_file

    from jaxft.models.hf import ModelLoadError, read_checkpoint

    source, out = Path(model_dir), Path(out_dir)
    if quantization_info(source):
        raise ModelLoadError(f"{source}: is already quantized; quantize the float32 export")
    if not ((source / "model.safetensors").is_file() or (source / "model.safetensors.index.json").is_file()):
        raise ModelLoadError(f"{source}: no model.safetensors (quantize reads safetensors exports only)")
    if out.resolve() == source.resolve():
        raise ValueError("--out must be another folder than --model")
    tensors = {k: np.asarray(v, np.float32) if v.dtype != np.float32 else v for k, v in read_checkpoint(source).items()}
    keys = target_keys(tensors, embeddings=embeddings)
    if not keys:
        raise ModelLoadError(f"{source}: found no encoder layer kernels to quantize")
    summary: dict = {"source": str(source), "out": str(out), "kernels": len(keys),
                     "quantized_params": int(sum(tensors[k].size for k in keys)),
                     "total_params": int(sum(v.size for v in tensors.values()))}
    if prune_fraction:
        pruned_keys = [k for k in keys if not WORD_EMBEDDINGS.search(k)]  # never prune the vocabulary
        tensors, zeros = prune(tensors, pruned_keys, prune_fraction, prune_scope)
        total = sum(tensors[k].size for k in pruned_keys)
        summary["prune"] = {"fraction": prune_fraction, "scope": prune_scope,
                            "zero_fraction": sum(zeros[k] * tensors[k].size for k in pruned_keys) / total}
    config = json.loads((source / "config.json").read_text())
    if int8:
        tensors = quantize_tensors(tensors, keys)
        config[MARKER] = {"method": "int8_weight_only", "scheme": "symmetric_per_output_channel",
                          "weights_file": WEIGHTS_FILE, "embeddings": embeddings,
                          "prune": summary.get("prune"), "keys": len(keys)}
        weights_name = WEIGHTS_FILE
    else:
        weights_name = "model.safetensors"
        if prune_fraction:
            config["jaxft_pruning"] = summary["prune"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        tmp = Path(tmp)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / weights_name),
                  metadata={"format": "jaxft-int8" if int8 else "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for item in source.iterdir():  # tokenizer files, jaxft_task.json, ...
            if item.is_file() and item.name != "config.json" and not item.name.startswith("model"):
                shutil.copy(item, tmp / item.name)
        for stale in ("model.safetensors", "model.safetensors.index.json", WEIGHTS_FILE):
            if (out / stale).exists() and stale != weights_name:
                (out / stale).unlink()
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
    summary.update(bytes_before=folder_bytes(source), bytes_after=folder_bytes(out))
    return summary


# ---------------------------------------------------------------------------------------------- command

def quantize_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main quantize",
        description="int8 weight-only quantization (per-output-channel symmetric scales) of an exported model's "
                    "encoder dense kernels, with optional magnitude pruning; writes a folder predict and serve load.")
    parser.add_argument("--model", required=True, help="exported float32 folder (e.g. runs/ner/export)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--prune", type=float, default=0.0,
                        help="fraction of smallest-magnitude kernel weights to zero before quantizing (e.g. 0.3)")
    parser.add_argument("--prune-scope", choices=("layer", "global"), default="layer",
                        help="layer: that fraction of every kernel; global: one threshold over all kernels")
    parser.add_argument("--embeddings", action="store_true", help="also quantize the word-embedding table")
    parser.add_argument("--no-int8", action="store_true", help="only prune; write a float32 HF folder")
    args = parser.parse_args(argv)
    from jaxft.models import ModelLoadError

    if not Path(args.model).is_dir():
        print(f"error: --model: folder not found: {args.model}", file=sys.stderr)
        return 2
    if args.no_int8 and not args.prune:
        print("error: --no-int8 without --prune would copy the model unchanged", file=sys.stderr)
        return 2
    try:
        summary = quantize_folder(args.model, args.out, prune_fraction=args.prune, prune_scope=args.prune_scope,
                                  int8=not args.no_int8, embeddings=args.embeddings)
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
