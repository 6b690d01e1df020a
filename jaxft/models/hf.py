"""Hugging Face folder <-> NNX model: resolve a path or hub id, read weights, map names, write folders.

Our parameter paths are Hugging Face's BERT names with NNX leaf names ("...query.kernel"); `hf_key` turns
one into the family's checkpoint key ("...query.weight", transposed), so loading and saving are the same
table read in two directions.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization
from safetensors import SafetensorError
from safetensors.flax import load_file as load_flax_tensors
from safetensors.numpy import load_file, save_file

from jaxft.files import write_folder
from jaxft.models.config import FAMILIES, EncoderConfig, UnsupportedModelError, read_hf_config, with_dropout
from jaxft.models.heads import (BARE_ENCODER_SUFFIX, HEADS, MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION,
                                TASKS, ForMaskedLM, TaskModel, encoder_class, head_for_architecture)
from jaxft.models.rotary_encoder import from_hf_columns, fused_output_order, to_hf_columns

log = logging.getLogger("jaxft.models")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "flax_model.msgpack")
HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*")


class ModelLoadError(ValueError):
    """A model folder or hub id that cannot be loaded, with the reason and the place."""


@dataclasses.dataclass
class LoadReport:
    missing: list[str]           # our parameters that the checkpoint lacks (left at their fresh init)
    unexpected: list[str]        # checkpoint keys that no parameter took
    mismatched: list[str]        # keys whose shape differed and were re-initialised (ignore_mismatched_sizes)
    new_head: bool               # the task head was initialised fresh


# ---------------------------------------------------------------------------------------------- finding files

def resolve_model_dir(name_or_path: str | os.PathLike, *, cache_dir: str | None = None,
                      revision: str | None = None) -> Path:
    """A local folder, or a hub id fetched into (or found in) huggingface_hub's cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path}: is a file; expected a folder holding config.json and weights")
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise ModelLoadError(f"{path}: model folder not found")
    return _download_from_hub(text, cache_dir=cache_dir, revision=revision)


def _download_from_hub(repo_id: str, *, cache_dir: str | None, revision: str | None) -> Path:
    import huggingface_hub  # the hub client only when a hub id is asked for
    from huggingface_hub import constants  # (ditto)

    def fetch(local_only: bool, patterns) -> Path:
        return Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(patterns),
            local_files_only=local_only))

    errors = []
    for local_only in (False, True):
        try:
            folder = fetch(local_only, HUB_PATTERNS)
            if not any((folder / name).exists() for name in WEIGHT_FILES):
                folder = fetch(local_only, ("pytorch_model.bin*", "flax_model.msgpack"))
            return folder
        except Exception as err:  # offline, unknown repo, gated repo: all end in the message below
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    cache = cache_dir or constants.HF_HUB_CACHE
    raise ModelLoadError(
        f"{repo_id!r} is not a local folder, and the Hugging Face hub could not provide it "
        f"(not reachable or no such repo, and not in the cache at {cache}). Last error: {errors[-1]}")


# ---------------------------------------------------------------------------------------------- reading weights

def read_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """Flat {Hugging Face key: array} from whichever weight format the folder holds."""
    if (folder / "model.safetensors").exists():
        return _read_safetensors(folder / "model.safetensors")
    if (folder / "model.safetensors.index.json").exists():
        return _read_sharded(folder / "model.safetensors.index.json", _read_safetensors)
    if (folder / "pytorch_model.bin").exists():
        return _read_torch_bin(folder / "pytorch_model.bin")
    if (folder / "pytorch_model.bin.index.json").exists():
        return _read_sharded(folder / "pytorch_model.bin.index.json", _read_torch_bin)
    if (folder / "flax_model.msgpack").exists():
        return _read_flax_msgpack(folder / "flax_model.msgpack")
    raise ModelLoadError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from None
    except TypeError as err:  # bfloat16 tensors: numpy has no such dtype, read through torch-free flax path
        return _read_safetensors_via_jax(path, err)


def _read_safetensors_via_jax(path: Path, cause: Exception) -> dict[str, np.ndarray]:
    try:
        return {k: np.asarray(v, dtype=np.float32) for k, v in load_flax_tensors(str(path)).items()}
    except Exception as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({cause}; {err})") from None


def _read_sharded(index_path: Path, read_one) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{index_path}: not a valid shard index ({type(err).__name__}: {err})") from None
    merged: dict[str, np.ndarray] = {}
    folder = index_path.parent.resolve()
    for shard in shards:
        shard_path = index_path.parent / str(shard)
        # A shard is a file of this folder: an index naming "../x" or "/etc/x" is refused, not followed.
        if not isinstance(shard, str) or not shard_path.resolve().is_relative_to(folder):
            raise ModelLoadError(f"{index_path}: lists shard {shard!r}, which is outside the model folder")
        if not shard_path.exists():
            raise ModelLoadError(f"{index_path}: lists shard {shard}, which is missing")
        merged.update(read_one(shard_path))
    return merged


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """A pickle is read only by torch's weights-only unpickler (tensors and plain containers; any other
    object, e.g. a __reduce__ that would run code, is refused). There is no switch to read it fully.
    predict/serve's safetensors_only refuses pickles altogether."""
    try:
        import torch  # optional: only pickled PyTorch checkpoints need it
    except ImportError:
        raise ModelLoadError(
            f"{path}: a PyTorch pickle checkpoint needs torch installed to read (safely, weights only); "
            "convert it to model.safetensors or install torch") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(f"{path}: could not be read as a weights-only PyTorch checkpoint ({err})") from None
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:
        raise ModelLoadError(f"{path}: not a readable Flax msgpack checkpoint ({err})") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for name, value in node.items():
            key = f"{prefix}.{name}" if prefix else str(name)
            if isinstance(value, dict):
                walk(value, key)
                continue
            array = np.asarray(value, dtype=np.float32)
            head, leaf = key.rsplit(".", 1)
            if leaf == "kernel":  # Flax Dense kernels are [in, out]; store torch's [out, in]
                flat[f"{head}.weight"] = array.T
            elif leaf in ("embedding", "scale"):
                flat[f"{head}.weight"] = array
            else:
                flat[key] = array

    walk(tree, "")
    return flat


def _normalise_legacy_names(checkpoint: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    renamed = {}
    for key, value in checkpoint.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        renamed[key] = value
    return renamed


# ---------------------------------------------------------------------------------------------- name mapping

def hf_key(path: tuple, config: EncoderConfig) -> tuple[str, bool]:
    """NNX parameter path -> (family checkpoint key, whether the array is transposed)."""
    *module, leaf = (str(p) for p in path)
    dotted = ".".join(module) + "."
    for pattern, replacement in config.family.key_renames:
        dotted = re.sub(pattern, replacement, dotted)
    transpose = leaf == "kernel"
    name = "bias" if leaf == "bias" else "weight"
    return f"{dotted}{name}", transpose


def module_path(path: tuple) -> str:
    """A parameter path's module, dotted ("model.layers.0.attn.Wqkv" of "...Wqkv.kernel")."""
    return ".".join(str(p) for p in path[:-1])


def to_hf_array(path: tuple, array: np.ndarray, config: EncoderConfig) -> np.ndarray:
    """One parameter's value in the family checkpoint's layout: kernels transposed to [out, in], and a fused
    projection's output columns in Hugging Face's order (models/blocks.py)."""
    array = to_hf_columns(np.asarray(array, dtype=np.float32), fused_output_order(module_path(path), config))
    return np.ascontiguousarray(array.T if hf_key(path, config)[1] else array)


def from_hf_array(path: tuple, array: np.ndarray, config: EncoderConfig) -> np.ndarray:
    """The inverse of to_hf_array: a checkpoint array (of the parameter's shape, once transposed) -> ours."""
    array = array.T if hf_key(path, config)[1] else array
    return from_hf_columns(array, fused_output_order(module_path(path), config))


def param_items(model: nnx.Module):
    """(path, Variable) for every parameter of the model, in a stable order."""
    return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def to_hf_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    config = model.config
    tensors = {}
    for path, variable in param_items(model):
        tensors[hf_key(path, config)[0]] = to_hf_array(path, variable.get_value(), config)
    return tensors


# ---------------------------------------------------------------------------------------------- loading

def from_pretrained(name_or_path: str | os.PathLike, task: str | None = None, *, num_labels: int | None = None,
                    id2label: dict[int, str] | list[str] | None = None, problem_type: str | None = None,
                    dtype: Any = jnp.float32, seed: int = 0, ignore_mismatched_sizes: bool = False,
                    cache_dir: str | None = None, revision: str | None = None, remat: str = "none",
                    hidden_dropout: float | None = None, attention_dropout: float | None = None,
                    attention: str = "auto", output_loading_info: bool = False):
    """Build a jaxft model from a Hugging Face folder or hub id and load its weights.

    task: "token-classification", "sequence-classification", "question-answering", "masked-lm", or None for the bare
    encoder. Labels come from `id2label` (or `num_labels`), else from the checkpoint's config.json.
    remat: "none", "full" or "dots_saveable" rematerialisation of each encoder layer in the backward pass.
    hidden_dropout / attention_dropout: override the checkpoint's dropout rates (None keeps them); the model's
    config.json, and so its export, carries the rates it was built with.
    attention: the attention implementation ("auto", "xla", "cudnn", "pallas"; models/attention.py).
    A head absent from the checkpoint is initialised fresh and reported, as transformers does.
    """
    if task not in (None, *TASKS):
        raise ValueError(f"task {task!r} is not one of {TASKS} (or None for the bare encoder)")
    folder = resolve_model_dir(name_or_path, cache_dir=cache_dir, revision=revision)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    hf_config = with_dropout(read_hf_config(str(config_path)), hidden_dropout, attention_dropout)
    config = dataclasses.replace(EncoderConfig.from_hf(hf_config, source=str(config_path)), attention=attention)
    _check_head(config, task, config_path)
    labels = _resolve_labels(task, hf_config, num_labels, id2label)
    dtype = jnp.dtype(dtype)
    checkpoint = _family_names(_normalise_legacy_names(read_checkpoint(folder)), config)
    if task == MASKED_LM:
        model = _build_masked_lm(config, hf_config, checkpoint, dtype, seed, remat)
    else:
        model = _build(config, task, labels, hf_config, problem_type, dtype, seed, remat)
    report = _load_weights(model, config, checkpoint, folder, ignore_mismatched_sizes)
    if task == MASKED_LM:  # copies of tied weights that older saves carry: nothing was left unused
        report.unexpected = [k for k in report.unexpected if k not in model.mlm_layout.tied_aliases]
    _log_report(report, folder, task)
    model.eval()
    return (model, report) if output_loading_info else model


def from_tensors(folder: str | os.PathLike, tensors: dict[str, np.ndarray], task: str,
                 dtype: Any = jnp.float32) -> tuple[nnx.Module, LoadReport]:
    """The model that `folder`'s config.json describes (labels from it too), loaded from `tensors` in the
    family's checkpoint names instead of the folder's weight files: the path of from_pretrained, for
    weights that arrive another way (e.g. dequantized from jaxft.quantize). Missing keys are reported,
    not initialised silently: check report.missing."""
    folder = Path(folder)
    hf_config = read_hf_config(str(folder / "config.json"))
    config = EncoderConfig.from_hf(hf_config, source=str(folder / "config.json"))
    _check_head(config, task, folder / "config.json")
    labels = _resolve_labels(task, hf_config, None, None)
    model = _build(config, task, labels, hf_config, None, jnp.dtype(dtype), 0, "none")
    return model, _load_weights(model, config, _family_names(tensors, config), folder, False)


def _check_head(config: EncoderConfig, task: str | None, source) -> None:
    if task in config.family.missing_heads:
        raise UnsupportedModelError(
            f"{source}: {config.model_type} has no {task} head in transformers (no {config.family.class_stem}"
            f"{HEADS[task].architecture_suffix}), so jaxft builds none; heads for it: "
            f"{', '.join(t for t in TASKS if t not in config.family.missing_heads)}")


def _family_names(checkpoint: dict[str, np.ndarray], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Checkpoint keys in the family's transformers names (GTE's original remote-code names are converted)."""
    convert = config.family.convert_checkpoint
    return convert(checkpoint) if convert is not None else checkpoint


def _resolve_labels(task, hf_config, num_labels, id2label) -> tuple[str, ...]:
    if task == QUESTION_ANSWERING:
        return ("start", "end")
    if task == MASKED_LM:
        return ()
    if id2label is not None:
        labels = list(id2label) if isinstance(id2label, (list, tuple)) else [
            id2label[i] for i in sorted(int(k) for k in id2label)]
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(f"num_labels={num_labels} but id2label has {len(labels)} labels")
        return tuple(str(label) for label in labels)
    if num_labels is not None:
        return tuple(f"LABEL_{i}" for i in range(num_labels))
    saved = hf_config.get("id2label") or {}
    if saved:
        return tuple(saved[k] for k in sorted(saved, key=int))
    return ("LABEL_0", "LABEL_1")


def _build(config, task, labels, hf_config, problem_type, dtype, seed, remat) -> nnx.Module:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    hf_json = json.dumps(hf_config, sort_keys=True)
    if task is None:
        add_pooler = config.family.sequence_head == "pooler_tanh" and config.family.bare_pooler
        return encoder_class(config)(config, add_pooler=add_pooler, dtype=dtype, hf_config_json=hf_json, remat=remat,
                                     rngs=rngs)
    module = HEADS[task].module
    if task == SEQUENCE_CLASSIFICATION:
        problem_type = problem_type or hf_config.get("problem_type") or "single_label_classification"
        return module(config, labels, hf_json, problem_type, dtype=dtype, remat=remat, rngs=rngs)
    return module(config, labels, hf_json, dtype=dtype, remat=remat, rngs=rngs)


def _build_masked_lm(config, hf_config, checkpoint, dtype, seed, remat) -> ForMaskedLM:
    """The decoder is tied unless the config says otherwise; BERT's pooler is kept when the checkpoint has one
    (a base model's), so it reaches the export unchanged for a later sequence-classification fine-tune."""
    has_pooler = any(k.startswith(("pooler.", f"{config.family.prefix}.pooler.")) for k in checkpoint)
    return ForMaskedLM(config, (), json.dumps(hf_config, sort_keys=True), dtype=dtype, remat=remat,
                       add_pooler=has_pooler and config.family.sequence_head == "pooler_tanh",
                       tied=bool(hf_config.get("tie_word_embeddings", True)),
                       rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _align_prefix(checkpoint: dict[str, np.ndarray], prefix: str | None) -> dict[str, np.ndarray]:
    """Base-model checkpoints have no "bert." prefix; task checkpoints do. Match the model being built."""
    has_prefix = any(k.startswith(f"{p}.") for k in checkpoint for p in _KNOWN_PREFIXES)
    if prefix is not None and not has_prefix:
        return {f"{prefix}.{k}": v for k, v in checkpoint.items()}
    if prefix is None and has_prefix:
        stripped = {}
        for k, v in checkpoint.items():
            head, _, rest = k.partition(".")
            stripped[rest if head in _KNOWN_PREFIXES else k] = v
        return stripped
    return checkpoint


_KNOWN_PREFIXES = tuple(sorted({family.prefix for family in FAMILIES.values()}))


def _load_weights(model, config, checkpoint, folder, ignore_mismatched_sizes) -> LoadReport:
    prefix = model.prefix if isinstance(model, TaskModel) else None
    checkpoint = _align_prefix(checkpoint, prefix)
    unused = set(checkpoint)
    missing, mismatched, head_missing = [], [], False
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        key, transpose = hf_key(path, config)
        in_head = prefix is not None and not key.startswith(f"{prefix}.")
        if key not in checkpoint:
            missing.append(key)
            head_missing |= in_head
            continue
        unused.discard(key)
        array = checkpoint[key].T if transpose else checkpoint[key]
        expected = tuple(variable.get_value().shape)
        if tuple(array.shape) != expected:
            if not ignore_mismatched_sizes:
                raise ModelLoadError(_mismatch_message(folder, key, array.shape, expected, in_head, model))
            mismatched.append(key)
            head_missing |= in_head
            continue
        variable.set_value(jnp.asarray(from_hf_array(path, checkpoint[key], config), dtype=jnp.float32))
    nnx.update(model, state)
    return LoadReport(missing=missing, unexpected=sorted(unused), mismatched=mismatched,
                      new_head=head_missing)


def _mismatch_message(folder, key, got, expected, in_head, model) -> str:
    message = f"{folder}: weight {key} has shape {tuple(got)} in the checkpoint, the model expects {expected}"
    if in_head and isinstance(model, TaskModel):
        message += (f". The checkpoint's head has {got[-1]} labels, not the {model.num_labels} asked for; "
                    "pass ignore_mismatched_sizes=True to start a new head")
    return message


def _log_report(report: LoadReport, folder: Path, task: str | None) -> None:
    if report.unexpected:
        log.info("%s: checkpoint weights not used by the %s model: %s", folder, task or "bare encoder",
                 ", ".join(report.unexpected))
    if report.missing or report.mismatched:
        log.warning("%s: newly initialised (not in the checkpoint%s): %s", folder,
                    " or of another shape" if report.mismatched else "",
                    ", ".join(report.missing + report.mismatched))


# ---------------------------------------------------------------------------------------------- saving

def hf_config_for(model: nnx.Module) -> dict[str, Any]:
    """config.json of `model`: the source checkpoint's, with this model's architecture, labels, the installed
    transformers version, and `_name_or_path` set to `model.name_or_path` (a training run sets it to its base
    model's hub id or folder name); without one the source's `_name_or_path` is dropped, as transformers 5 does."""
    hf_config = json.loads(model.hf_config_json)
    hf_config.pop("_name_or_path", None)
    if getattr(model, "name_or_path", None):
        hf_config["_name_or_path"] = str(model.name_or_path)
    try:
        hf_config["transformers_version"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # no transformers here: say nothing rather than the source's
        hf_config.pop("transformers_version", None)
    task = getattr(model, "task", None)
    suffix = HEADS[task].architecture_suffix if task else BARE_ENCODER_SUFFIX
    hf_config["architectures"] = [model.config.family.class_stem + suffix]
    if isinstance(model, TaskModel) and task not in (QUESTION_ANSWERING, MASKED_LM):
        hf_config["id2label"] = {str(i): label for i, label in enumerate(model.labels)}
        hf_config["label2id"] = {label: i for i, label in enumerate(model.labels)}
    if task == SEQUENCE_CLASSIFICATION:
        hf_config["problem_type"] = model.problem_type
    hf_config.pop("num_labels", None)  # derived from id2label by transformers
    return hf_config


def save_pretrained(model: nnx.Module, folder: str | os.PathLike, tokenizer=None, *,
                    on_file: Callable[[Path], None] | None = None) -> Path:
    """Write config.json, model.safetensors (and the tokenizer) so PyTorch `transformers` loads them.

    Files are written to a temporary folder next to the target and moved in one by one (jaxft.files), so an
    interrupted save never leaves a half-written weights file under its real name. `on_file(path)` is called
    after each file is in place (the trainer's export hook).
    """
    def write(tmp: Path) -> None:
        save_file(to_hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_for(model), indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder(folder, write, on_file)


# ---------------------------------------------------------------------------------------------- which task

def task_of(name_or_path: str | os.PathLike) -> str:
    """The task of an exported model folder (or hub id), from its config.json "architectures"; a one-line
    error for a bare encoder or an architecture without a jaxft head."""
    folder = resolve_model_dir(name_or_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    architectures = read_hf_config(str(config_path)).get("architectures") or []
    if not architectures:
        raise ModelLoadError(f"{config_path}: no \"architectures\" entry, so the model's task is unknown")
    name = str(architectures[0])
    head = head_for_architecture(name)
    if head is not None:
        return head.task
    known = ", ".join(f"*{h.architecture_suffix}" for h in HEADS.values())
    if name.endswith(BARE_ENCODER_SUFFIX):
        raise UnsupportedModelError(f"{config_path}: {name} is a bare encoder without a task head; predict, serve "
                                    f"and explain need an export of a fine-tuned model ({known})")
    raise UnsupportedModelError(f"{config_path}: architecture {name!r} has no jaxft task head (known: {known})")
