"""Getting PEFT models out and in: merged HF folders, peft's adapter format (both ways), our own format for
methods that do not merge, and the base-model reference that checkpoints are restored onto.

PEFT adapter format (what `peft.PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads):
  adapter_config.json          peft_type LORA, r, lora_alpha, lora_dropout, target_modules, modules_to_save,
                               use_rslora, use_dora, base_model_name_or_path, task_type
  adapter_model.safetensors    "base_model.model.<hf module>.lora_A.weight" [rank, in],
                               "...lora_B.weight" [out, rank], "...lora_magnitude_vector" [out] (DoRA),
                               "base_model.model.classifier.weight" (modules_to_save, HF layout)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxft.config import ConfigError
from jaxft.files import as_path, write_folder, write_json
from jaxft.hub import portable_name
from jaxft.models.heads import (BARE_ENCODER_PEFT_TASK_TYPE, HEADS, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION,
                                TOKEN_CLASSIFICATION, TaskModel)
from jaxft.models.hf import from_hf_array, from_pretrained, hf_key, save_pretrained, to_hf_array
from jaxft.models.paths import dotted, set_module
from jaxft.models.rotary_encoder import from_hf_columns, fused_output_order, to_hf_columns
from jaxft.peft.lora import LoraLinear, PeftParam, linear_modules, merge
from jaxft.peft.methods import LORA_METHODS, PeftConfig, apply_peft, head_modules, peft_info

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LABELS_FILE = "labels.json"            # our sidecar: the head's labels (peft's format has no place for them)
BASE_FILE_OF_ADAPTER = "jaxft_base.json"  # our sidecar: the base model as given (a local path stays on this machine)
JAXFT_PEFT_CONFIG = "jaxft_peft.json"  # non-mergeable methods: our config + weights next to the HF files
JAXFT_PEFT_WEIGHTS = "jaxft_peft.safetensors"


class AdapterFormatError(ValueError):
    """An adapter folder that cannot be read onto this model."""


def peft_task_type(model: nnx.Module) -> str | None:
    """peft's task_type for the model's head (FEATURE_EXTRACTION for a bare encoder)."""
    task = getattr(model, "task", None)
    return HEADS[task].peft_task_type if task else BARE_ENCODER_PEFT_TASK_TYPE


def task_for_peft_type(task_type: str | None) -> str | None:
    """The head an adapter's task_type names; None (the bare encoder) for FEATURE_EXTRACTION or no type."""
    return next((head.task for head in HEADS.values() if task_type and head.peft_task_type == task_type), None)


def _np(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def hf_module_name(model: nnx.Module, path: tuple) -> str:
    """Our module path -> the Hugging Face module name of the family ("bert.encoder.layer.0....query")."""
    key, _ = hf_key(tuple(path) + ("kernel",), model.config)
    return key[: -len(".weight")]


# ---------------------------------------------------------------------------------------------- trained -> model

def load_trained(model: nnx.Module, parts, trainable: dict, frozen: dict) -> nnx.Module:
    """Write a Trainer's flat parameter dicts back into the live model: base params *and* PEFT params."""
    rng = {}
    for path, variable in parts.templates[2]:
        value = variable.get_value()
        rng[dotted(path)] = jax.random.key_data(value) if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key) \
            else value
    merged = parts.merge(trainable, frozen, rng, train=False)
    nnx.update(model, nnx.state(merged, nnx.Any(nnx.Param, PeftParam)))
    return model


# ---------------------------------------------------------------------------------------------- merged export

OnFile = Callable[[Path], None]  # called after each exported file is in place (the trainer's export hook)


def save_merged(model: nnx.Module, folder, tokenizer=None, *, on_file: OnFile | None = None) -> Path:
    """LoRA/DoRA folded into the base weights, saved as an ordinary HF folder (PyTorch transformers loads it)."""
    return save_pretrained(merge(model), folder, tokenizer=tokenizer, on_file=on_file)


# ---------------------------------------------------------------------------------------------- peft format out

def save_peft_adapter(model: nnx.Module, folder, *, base_model: str, tokenizer=None,
                      on_file: OnFile | None = None) -> Path:
    """peft's adapter folder for a LoRA/DoRA model: `PeftModel.from_pretrained(base, folder)` loads it."""
    info = peft_info(model)
    if info is None or info["method"] not in LORA_METHODS:
        raise ValueError("save_peft_adapter needs a model with LoRA or DoRA applied (apply_peft or "
                         f"load_peft_adapter); this one has {info['method'] if info else 'no PEFT method'}")
    tensors, targets = {}, []
    ranks, alphas, rslora, dora = collections.Counter(), {}, set(), set()
    for path, layer in linear_modules(model):
        if not isinstance(layer, LoraLinear):
            continue
        name = hf_module_name(model, path)
        targets.append(name)
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(_np(layer.lora_a[...]).T)
        order = fused_output_order(dotted(path), model.config)  # a fused projection's columns: HF's order
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(
            to_hf_columns(_np(layer.lora_b[...]), order).T)
        if layer.dora:
            tensors[f"{PEFT_PREFIX}{name}.lora_magnitude_vector"] = to_hf_columns(_np(layer.lora_magnitude[...]),
                                                                                  order)
        ranks[layer.rank] += 1
        alphas[name] = (layer.rank, layer.alpha)
        rslora.add(layer.rslora)
        dora.add(layer.dora)
    if len(rslora) > 1 or len(dora) > 1:
        raise ValueError("peft's format needs one rslora/dora setting for all layers")
    rank = ranks.most_common(1)[0][0]
    alpha = collections.Counter(a for _, a in alphas.values()).most_common(1)[0][0]
    saved_modules = info.get("saved_modules", [])
    saved_hf = set()
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = dotted(path)
        if any(name.startswith(m + ".") for m in saved_modules):
            key, _ = hf_key(path, model.config)
            tensors[PEFT_PREFIX + key] = to_hf_array(path, variable.get_value(), model.config)
            saved_hf.add(key.rsplit(".", 1)[0])
    config = {
        "peft_type": "LORA", "task_type": peft_task_type(model),
        "base_model_name_or_path": portable_name(base_model), "revision": None, "inference_mode": True,
        "r": rank, "lora_alpha": alpha, "lora_dropout": float(info.get("dropout", 0.0)),
        "target_modules": sorted(targets), "modules_to_save": sorted(saved_hf) or None,
        "use_rslora": bool(rslora.pop()), "use_dora": bool(dora.pop()), "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {re.escape(n): r for n, (r, _) in alphas.items() if r != rank},
        "alpha_pattern": {re.escape(n): a for n, (_, a) in alphas.items() if a != alpha},
    }

    def write(tmp: Path):
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if isinstance(model, TaskModel) and model.task != QUESTION_ANSWERING:
            (tmp / LABELS_FILE).write_text(json.dumps(list(model.labels)) + "\n")
        (tmp / BASE_FILE_OF_ADAPTER).write_text(json.dumps({"base_model_name_or_path": str(base_model)}) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder(folder, write, on_file)


# ---------------------------------------------------------------------------------------------- peft format in

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")


def read_adapter(folder) -> tuple[dict, dict[str, np.ndarray]]:
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.exists():
        raise AdapterFormatError(f"{folder}: no {ADAPTER_CONFIG} (is this a peft adapter folder?)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{folder}: peft_type {config.get('peft_type')!r}; only LORA adapters load here")
    if (folder / ADAPTER_WEIGHTS).exists():
        weights = load_file(str(folder / ADAPTER_WEIGHTS))
    elif (folder / "adapter_model.bin").exists():
        import torch  # optional: only pickled adapters (adapter_model.bin) need it
        weights = {k: v.float().numpy() for k, v in
                   torch.load(str(folder / "adapter_model.bin"), map_location="cpu", weights_only=True).items()}
    else:
        raise AdapterFormatError(f"{folder}: no {ADAPTER_WEIGHTS} or adapter_model.bin")
    return config, {(k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k): np.asarray(v, np.float32)
                    for k, v in weights.items()}


def _pattern_value(patterns: dict, name: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _align(name: str, known: set, prefix: str | None) -> str | None:
    """A peft key's module name as this model knows it (adapters of task models fit bare encoders and back)."""
    if name in known:
        return name
    if prefix and f"{prefix}.{name}" in known:
        return f"{prefix}.{name}"
    head, _, rest = name.partition(".")
    return rest if rest in known else None


def load_peft_adapter(model: nnx.Module, folder, *, dropout: float | None = None) -> nnx.Module:
    """Put a peft LoRA/DoRA adapter (trained anywhere) onto a model built from its base; returns the model.

    Modules come from the weights' keys (not by re-reading target_modules), rank from their shapes, alpha
    from lora_alpha / alpha_pattern, rsLoRA and DoRA from the config (DoRA also from magnitude keys).
    Non-LoRA keys (modules_to_save, trained biases) replace the model's parameters of the same HF name."""
    config, weights = read_adapter(folder)
    if config.get("fan_in_fan_out"):
        raise AdapterFormatError(f"{folder}: fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to BERT encoders")
    prefix = getattr(model, "prefix", None)
    layers = {hf_module_name(model, path): (path, layer) for path, layer in linear_modules(model)}
    lora, other = collections.defaultdict(dict), {}
    for key, value in weights.items():
        match = _LORA_KEY.match(key) or _MAGNITUDE_KEY.match(key)
        if match:
            which = match.groupdict().get("which") or "m"
            lora[match["module"]][which] = value
        else:
            other[key] = value
    unknown = [m for m in lora if _align(m, set(layers), prefix) is None]
    if unknown:
        raise AdapterFormatError(f"{folder}: adapter modules not in this model: {unknown[:3]} (model has e.g. "
                                 f"{sorted(layers)[:2]})")
    use_dora = bool(config.get("use_dora"))
    rank_default, alpha_default = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    wrapped = []
    for name, parts in sorted(lora.items()):
        if "A" not in parts or "B" not in parts:
            raise AdapterFormatError(f"{folder}: {name} has only lora_{'A' if 'A' in parts else 'B'}")
        path, layer = layers[_align(name, set(layers), prefix)]
        base = layer.plain() if isinstance(layer, LoraLinear) else layer
        rank = parts["A"].shape[0]
        expected = {"A": (rank, base.in_features), "B": (base.out_features, rank)}
        for which, shape in expected.items():
            if parts[which].shape != shape:
                raise AdapterFormatError(f"{folder}: {name}.lora_{which} has shape {parts[which].shape}, "
                                         f"this model needs {shape}")
        alpha = float(_pattern_value(config.get("alpha_pattern"), name, alpha_default))
        new = LoraLinear(base, rank=rank, alpha=alpha, rslora=bool(config.get("use_rslora")),
                         dora=use_dora or "m" in parts,
                         dropout=float(config.get("lora_dropout", 0.0)) if dropout is None else dropout,
                         rngs=nnx.Rngs(0))
        new.lora_a.set_value(jnp.asarray(parts["A"].T))
        order = fused_output_order(dotted(path), model.config)
        new.lora_b.set_value(jnp.asarray(from_hf_columns(parts["B"].T, order)))
        if new.dora:
            if "m" not in parts:
                raise AdapterFormatError(f"{folder}: use_dora but {name} has no lora_magnitude_vector")
            new.lora_magnitude.set_value(jnp.asarray(from_hf_columns(parts["m"], order)))
        set_module(model, path, new)
        wrapped.append(dotted(path))
    _load_other_keys(model, other, folder, prefix)
    saved = sorted({p.split(".")[0] for p in _paths_for_keys(model, other)} & set(head_modules(model)))
    cfg = PeftConfig(method="dora" if use_dora else "lora", rank=rank_default, alpha=alpha_default,
                     dropout=float(config.get("lora_dropout", 0.0)), rslora=bool(config.get("use_rslora")))
    model.peft_json = json.dumps({**dataclasses.asdict(cfg), "wrapped": wrapped, "saved_modules": saved,
                                  "target_modules": "|".join(re.escape(w) for w in wrapped)})
    return model


def _hf_param_table(model, state=None) -> dict[str, tuple[tuple, nnx.Variable, bool]]:
    """HF checkpoint key -> (NNX path, its variable in `state` (default: the model's Params), transposed)."""
    table = {}
    for path, variable in nnx.to_flat_state(state if state is not None else nnx.state(model, nnx.Param)):
        key, transpose = hf_key(path, model.config)
        table[key] = (path, variable, transpose)
    return table


def _paths_for_keys(model, keys) -> list[str]:
    table = _hf_param_table(model)
    prefix = getattr(model, "prefix", None)
    return [dotted(table[k][0]) for k in (_align(k, set(table), prefix) for k in keys) if k is not None]


def _load_other_keys(model, other: dict, folder, prefix) -> None:
    state = nnx.state(model, nnx.Param)
    table = _hf_param_table(model, state)
    for key, value in other.items():
        name = _align(key, set(table), prefix)
        if name is None:
            raise AdapterFormatError(f"{folder}: adapter weight {key} matches no parameter of this model")
        path, variable, _ = table[name]
        array = jnp.asarray(from_hf_array(path, value, model.config), jnp.float32)  # HF layout -> this model's
        if tuple(array.shape) != tuple(variable.get_value().shape):
            raise AdapterFormatError(f"{folder}: {key} has shape {value.shape}; this model's is "
                                     f"{tuple(variable.get_value().shape)} (a head with another number of labels?)")
        variable.set_value(array)
    nnx.update(model, state)


def from_peft_pretrained(adapter_folder, base_model: str | None = None, task: str | None = "infer", *,
                         id2label=None, dtype=jnp.float32):
    """Base model + the adapter, as one jaxft model. The base: `base_model`, else the path in jaxft's sidecar
    when it exists on this machine, else adapter_config's (portable) base_model_name_or_path."""
    config, weights = read_adapter(adapter_folder)
    base = base_model or _local_base(adapter_folder) or config.get("base_model_name_or_path")
    if not base:
        raise AdapterFormatError(f"{adapter_folder}: no base_model_name_or_path; pass base_model=")
    if task == "infer":
        task = task_for_peft_type(config.get("task_type"))
    labels_path = Path(adapter_folder) / LABELS_FILE
    if id2label is None and labels_path.exists():
        id2label = json.loads(labels_path.read_text())
    kwargs = {}
    if task in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION):
        heads = [v for k, v in weights.items() if re.search(r"(^|\.)classifier(\.out_proj)?\.weight$", k)]
        if id2label is not None:
            kwargs["id2label"] = id2label
        elif heads:
            kwargs["num_labels"] = heads[-1].shape[0]
    model = from_pretrained(base, task=task, dtype=dtype, ignore_mismatched_sizes=True, **kwargs)
    return load_peft_adapter(model, adapter_folder)


def _local_base(adapter_folder) -> str | None:
    path = Path(adapter_folder) / BASE_FILE_OF_ADAPTER
    if not path.is_file():
        return None
    base = json.loads(path.read_text()).get("base_model_name_or_path")
    return base if base and Path(base).expanduser().is_dir() else None


# ---------------------------------------------------------------------------------------------- our own format

def save_peft_state(model: nnx.Module, folder, tokenizer=None, *, on_file: OnFile | None = None) -> Path:
    """Methods that cannot merge (adapters, prefixes): the HF folder of base + trained head, plus our PEFT
    config and weights next to it. `load_with_peft(folder)` rebuilds the exact model."""
    info = peft_info(model)
    save_pretrained(model, folder, tokenizer=tokenizer, on_file=on_file)
    tensors = {dotted(p): _np(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, PeftParam))}

    def write(tmp: Path):
        save_file(tensors, str(tmp / JAXFT_PEFT_WEIGHTS))
        (tmp / JAXFT_PEFT_CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    return write_folder(folder, write, on_file)


def load_with_peft(folder, task: str | None = None, **kwargs) -> nnx.Module:
    """from_pretrained, then (if the folder holds jaxft_peft.*) the PEFT method and its trained weights."""
    model = from_pretrained(folder, task=task, **kwargs)
    config_path = Path(folder) / JAXFT_PEFT_CONFIG
    if not config_path.exists():
        return model
    info = json.loads(config_path.read_text())
    apply_peft(model, {**info, "freeze": ""})
    values = load_file(str(Path(folder) / JAXFT_PEFT_WEIGHTS))
    state = nnx.state(model, PeftParam)
    flat = list(nnx.to_flat_state(state))
    missing = [dotted(p) for p, _ in flat if dotted(p) not in values]
    if missing:
        raise AdapterFormatError(f"{folder}: {JAXFT_PEFT_WEIGHTS} lacks {missing[:3]}")
    for path, variable in flat:
        variable.set_value(jnp.asarray(values[dotted(path)]))
    nnx.update(model, state)
    return model


def export_model(model: nnx.Module, workdir: Path, *, base_model: str, tokenizer=None,
                 adapter: bool = True, on_file: OnFile | None = None) -> dict[str, str]:
    """The run's exports: `export/` loads in transformers (merged LoRA/DoRA, or the model itself for
    full/BitFit), plus `export_adapter/` in peft's format for LoRA/DoRA. Adapters and prefixes, which do not
    merge, go to `export/` as base + head with jaxft_peft.* beside them (load with load_with_peft)."""
    info = peft_info(model)
    method = info["method"] if info else "none"
    out = {}
    if method in LORA_METHODS:
        out["export"] = str(save_merged(model, workdir / "export", tokenizer, on_file=on_file))
        if adapter:
            out["export_adapter"] = str(save_peft_adapter(model, workdir / "export_adapter", base_model=base_model,
                                                          tokenizer=tokenizer, on_file=on_file))
    elif any(True for _ in nnx.to_flat_state(nnx.state(model, PeftParam))):
        out["export"] = str(save_peft_state(model, workdir / "export", tokenizer, on_file=on_file))
    else:
        out["export"] = str(save_pretrained(model, workdir / "export", tokenizer=tokenizer, on_file=on_file))
    return out


# ---------------------------------------------------------------------------------------------- base reference

BASE_FILE = "peft_base.json"


def base_fingerprint(frozen: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(frozen):
        array = np.asarray(frozen[key])
        digest.update(f"{key}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def record_base(workdir: Path, frozen: dict, *, base_model: str, method: str, resuming: bool) -> dict:
    """The checkpoints of a PEFT run hold only trainable state; this file names the base they restore onto
    and fingerprints its frozen weights. Resuming onto a different base is refused."""
    path = as_path(workdir) / BASE_FILE
    record = {"base_model": str(base_model), "method": method, "frozen_params": len(frozen),
              "frozen_sha256": base_fingerprint(frozen)}
    if resuming and path.exists():
        old = json.loads(path.read_text())
        if old.get("frozen_sha256") != record["frozen_sha256"]:
            raise ConfigError(f"{workdir}: its checkpoints were trained on base {old.get('base_model')!r} "
                              f"(frozen weights sha256 {old.get('frozen_sha256', '')[:12]}), but this run's base "
                              f"{record['base_model']!r} has {record['frozen_sha256'][:12]}: use a new workdir")
    write_json(path, record)
    return record
