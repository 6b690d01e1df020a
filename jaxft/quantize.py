"""int8 quantization, structured (FFN) pruning and magnitude pruning of an exported model, for inference.

    python -m jaxft.main quantize --model runs/ner/export --out runs/ner/export-int8 [--prune-ffn 0.3]

What changes: the dense kernels of the encoder layers ("...layer.N....weight", 2-D) and, with
`--embeddings`, the word-embedding table. Everything else (biases, LayerNorms, position embeddings, the task
head) stays float32.

- Structured pruning (`--prune-ffn F`, before quantization): in every layer the same number of FFN units
  (round(F * intermediate_size) of them) is removed, the rows of the FFN's input projection and the columns
  of its output projection, so the model really shrinks: config.json gets the smaller intermediate_size, and
  with `--no-int8` the folder is an ordinary HF folder that PyTorch transformers loads. The units removed are
  those with the smallest ||input row|| * ||output column|| (data-free). Attention heads are not removed:
  transformers 5 has no `pruned_heads` any more and BERT's head size is hidden_size / num_attention_heads,
  so fewer heads cannot be written as a config that it loads.
- Magnitude pruning (`--prune F`): the given fraction of smallest-magnitude weights is set to zero,
  either per kernel (`--prune-scope layer`) or under one threshold over all targeted kernels (`global`).
  Zeros stay exactly zero under symmetric quantization; the arrays keep their shapes (no smaller, no faster).
- Quantization: symmetric, one scale per output channel (kernel rows in Hugging Face's [out, in] layout; rows
  of the embedding table): q = round(w / s), s = max|w| / 127, q in [-127, 127] (int8). By default the dense
  layers then run as integer matmuls with per-token activation scales (models.quantized "int8_dynamic");
  `--weight-only` keeps float matmuls of the dequantized kernels ("int8_weight_only": exact to the
  dequantized weights, smaller files only).

The output folder holds `model_int8.safetensors` (int8 "<key>" plus float32 "<key>_scale" for every
quantized tensor, float32 for the rest), config.json with a "jaxft_quantization" entry (the marker
predict/serve look for), the tokenizer and jaxft_task.json. The weights file is deliberately not called
model.safetensors: a loader that does not know the format (`from_pretrained`, PyTorch transformers)
refuses the folder instead of reading int8 codes as weights.

With `--no-int8` only pruning is applied and an ordinary float32 HF folder is written.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
from safetensors.numpy import save_file

from jaxft.files import write_folder
from jaxft.models.hf import ModelLoadError, read_checkpoint
from jaxft.models.quantized import (DYNAMIC, MARKER, METHODS, SCALE_SUFFIX, WEIGHT_ONLY, WEIGHTS_FILE,
                                    quantization_info, quantize_rows)

# BERT-style "embeddings.word_embeddings"; ModernBERT "embeddings.tok_embeddings", EuroBERT "embed_tokens"
WORD_EMBEDDINGS = re.compile(r"(^|\.)(embeddings\.(word|tok)_embeddings|embed_tokens)\.weight$")
_LAYER = re.compile(r"(^|\.)layers?\.\d+\.")  # "encoder.layer.N." and the rotary families' "layers.N."


# ---------------------------------------------------------------------------------------------- arrays

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


# The FFN's input and output projections inside a layer (parts of their HF keys), by model_type; BERT's
# layout otherwise. config.json's FFN width is intermediate_size unless FFN_SIZE_FIELDS says otherwise.
FFN_PROJECTIONS = {"distilbert": ("ffn.lin1", "ffn.lin2")}
DEFAULT_FFN_PROJECTIONS = ("intermediate.dense", "output.dense")
FFN_SIZE_FIELDS = {"distilbert": "hidden_dim"}


def ffn_projections(tensors: dict[str, np.ndarray], model_type: str | None) -> dict[int, tuple[str, str]]:
    """layer index -> (input projection, output projection) module keys ("bert.encoder.layer.0.intermediate.dense")."""
    up, down = FFN_PROJECTIONS.get(model_type, DEFAULT_FFN_PROJECTIONS)
    pattern = re.compile(r"^(?P<layer>(?:.*\.)?layers?\.(?P<index>\d+)\.)" + re.escape(up) + r"\.weight$")
    found = {}
    for key in tensors:
        match = pattern.match(key)
        if match and f"{match['layer']}{down}.weight" in tensors:
            found[int(match["index"])] = (match["layer"] + up, match["layer"] + down)
    return dict(sorted(found.items()))


def prune_ffn(tensors: dict[str, np.ndarray], hf_config: dict, fraction: float
              ) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Remove round(fraction * width) FFN units from every layer (the same number everywhere, so one
    intermediate_size describes the result): the units with the smallest ||W_in row|| * ||W_out column||.
    Returns (tensors, config.json with the new width, a summary)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--prune-ffn fraction must be in (0, 1), got {fraction}")
    model_type = hf_config.get("model_type")
    size_field = FFN_SIZE_FIELDS.get(model_type, "intermediate_size")
    width = int(hf_config[size_field])
    keep = width - int(round(fraction * width))
    layers = ffn_projections(tensors, model_type)
    if not layers or keep < 1:
        raise ModelLoadError(f"found no FFN projections to prune for model_type {model_type!r} (or none would be "
                             f"left of {width}); jaxft.quantize.FFN_PROJECTIONS names them by family")
    out = dict(tensors)
    for index, (up, down) in layers.items():
        w_up, w_down = tensors[f"{up}.weight"], tensors[f"{down}.weight"]  # HF [width, hidden], [hidden, width]
        if w_up.shape[0] != width or w_down.shape[1] != width:
            raise ModelLoadError(f"layer {index}: FFN weights {w_up.shape} / {w_down.shape} do not have "
                                 f"{size_field}={width} units (a gated FFN is not supported)")
        score = np.linalg.norm(w_up, axis=1) * np.linalg.norm(w_down, axis=0)
        kept = np.sort(np.argsort(-score, kind="stable")[:keep])
        out[f"{up}.weight"] = np.ascontiguousarray(w_up[kept])
        if f"{up}.bias" in tensors:
            out[f"{up}.bias"] = tensors[f"{up}.bias"][kept]
        out[f"{down}.weight"] = np.ascontiguousarray(w_down[:, kept])
    removed = sum(v.size for v in tensors.values()) - sum(v.size for v in out.values())
    summary = {"fraction": fraction, size_field: [width, keep], "layers": len(layers), "params_removed": int(removed)}
    return out, {**hf_config, size_field: keep}, summary


def quantize_tensors(tensors: dict[str, np.ndarray], keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Each key -> int8 codes under the key plus float32 "<key>_scale" (per row = output channel)."""
    out = dict(tensors)
    for key in keys:
        out[key], out[key + SCALE_SUFFIX] = quantize_rows(tensors[key])
    return out


# ---------------------------------------------------------------------------------------------- folders

def folder_bytes(folder: str | Path) -> int:
    """Bytes of the weight files of a model folder."""
    names = ("model.safetensors", WEIGHTS_FILE)
    return sum((Path(folder) / n).stat().st_size for n in names if (Path(folder) / n).is_file()) + sum(
        p.stat().st_size for p in Path(folder).glob("model-*.safetensors"))


def quantize_folder(model_dir: str | Path, out_dir: str | Path, *, prune_fraction: float = 0.0,
                    prune_scope: str = "layer", int8: bool = True, embeddings: bool = False,
                    method: str = DYNAMIC, prune_ffn_fraction: float = 0.0) -> dict:
    """Read an exported folder (safetensors), prune and/or quantize, write `out_dir`. Returns a summary.
    method: how the int8 dense layers compute (models.quantized.METHODS)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    source, out = Path(model_dir), Path(out_dir)
    if quantization_info(source):
        raise ModelLoadError(f"{source}: is already quantized; quantize the float32 export")
    if not ((source / "model.safetensors").is_file() or (source / "model.safetensors.index.json").is_file()):
        raise ModelLoadError(f"{source}: no model.safetensors (quantize reads safetensors exports only)")
    if out.resolve() == source.resolve():
        raise ValueError("--out must be another folder than --model")
    tensors = {k: np.asarray(v, np.float32) if v.dtype != np.float32 else v for k, v in read_checkpoint(source).items()}
    config = json.loads((source / "config.json").read_text())
    pruned_ffn = None
    if prune_ffn_fraction:
        tensors, config, pruned_ffn = prune_ffn(tensors, config, prune_ffn_fraction)
    keys = target_keys(tensors, embeddings=embeddings)
    if not keys:
        raise ModelLoadError(f"{source}: found no encoder layer kernels to quantize")
    summary: dict = {"source": str(source), "out": str(out), "kernels": len(keys),
                     "quantized_params": int(sum(tensors[k].size for k in keys)) if int8 else 0,
                     "total_params": int(sum(v.size for v in tensors.values()))}
    if pruned_ffn:
        summary["prune_ffn"] = pruned_ffn
    if prune_fraction:
        pruned_keys = [k for k in keys if not WORD_EMBEDDINGS.search(k)]  # never prune the vocabulary
        tensors, zeros = prune(tensors, pruned_keys, prune_fraction, prune_scope)
        total = sum(tensors[k].size for k in pruned_keys)
        summary["prune"] = {"fraction": prune_fraction, "scope": prune_scope,
                            "zero_fraction": sum(zeros[k] * tensors[k].size for k in pruned_keys) / total}
    if int8:
        tensors = quantize_tensors(tensors, keys)
        config[MARKER] = {"method": method, "scheme": "symmetric_per_output_channel",
                          "activations": "dynamic_per_token" if method == DYNAMIC else None,
                          "weights_file": WEIGHTS_FILE, "embeddings": embeddings,
                          "prune": summary.get("prune"), "prune_ffn": pruned_ffn, "keys": len(keys)}
        weights_name = WEIGHTS_FILE
    else:
        weights_name = "model.safetensors"
        if prune_fraction or pruned_ffn:
            config["jaxft_pruning"] = {key: value for key, value in (("magnitude", summary.get("prune")),
                                                                       ("ffn", pruned_ffn)) if value}
    def write(tmp: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / weights_name),
                  metadata={"format": "jaxft-int8" if int8 else "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for item in source.iterdir():  # tokenizer files, jaxft_task.json, ...
            if item.is_file() and item.name != "config.json" and not item.name.startswith("model"):
                shutil.copy(item, tmp / item.name)

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "model.safetensors.index.json", WEIGHTS_FILE):
        if (out / stale).exists() and stale != weights_name:
            (out / stale).unlink()
    write_folder(out, write)
    summary.update(bytes_before=folder_bytes(source), bytes_after=folder_bytes(out))
    return summary


# ---------------------------------------------------------------------------------------------- command

def quantize_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main quantize",
        description="int8 quantization (per-output-channel symmetric weight scales; integer matmuls with per-token "
                    "activation scales unless --weight-only) of an exported model's encoder dense kernels, with "
                    "optional structured FFN pruning and magnitude pruning; writes a folder predict and serve load.")
    parser.add_argument("--model", required=True, help="exported float32 folder (e.g. runs/ner/export)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--prune", type=float, default=0.0,
                        help="fraction of smallest-magnitude kernel weights to zero before quantizing (e.g. 0.3)")
    parser.add_argument("--prune-scope", choices=("layer", "global"), default="layer",
                        help="layer: that fraction of every kernel; global: one threshold over all kernels")
    parser.add_argument("--prune-ffn", type=float, default=0.0,
                        help="fraction of every layer's FFN units to remove (structured: a smaller intermediate_size)")
    parser.add_argument("--weight-only", action="store_true",
                        help="int8 weights with float matmuls (smaller files, not faster) instead of integer matmuls")
    parser.add_argument("--embeddings", action="store_true", help="also quantize the word-embedding table")
    parser.add_argument("--no-int8", action="store_true", help="only prune; write a float32 HF folder")
    args = parser.parse_args(argv)

    if not Path(args.model).is_dir():
        print(f"error: --model: folder not found: {args.model}", file=sys.stderr)
        return 2
    if args.no_int8 and not (args.prune or args.prune_ffn):
        print("error: --no-int8 without --prune or --prune-ffn would copy the model unchanged", file=sys.stderr)
        return 2
    try:
        summary = quantize_folder(args.model, args.out, prune_fraction=args.prune, prune_scope=args.prune_scope,
                                  int8=not args.no_int8, embeddings=args.embeddings,
                                  method=WEIGHT_ONLY if args.weight_only else DYNAMIC,
                                  prune_ffn_fraction=args.prune_ffn)
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
