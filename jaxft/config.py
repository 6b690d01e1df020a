"""Every config key a recipe may set, with its default, and the validation that runs before any work.

Recipes (`configs/*.py`) start from `base_config()` and change values; a key that is not here is a typo
and is refused with the nearest known key. Values "packaged:..." name the offline model and data that
PyPI packages ship (see README).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import ml_collections

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_TWEETS_NER = "packaged:tweets-ner"
PACKAGED_ROTTEN_TOMATOES = "packaged:rotten-tomatoes"
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
TAG_SCHEMES = ("auto", "BIO", "IOB1", "IOBES", "BILOU")
SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16")
FILE_KEYS = ("data.train_file", "data.validation_file", "data.test_file")


class ConfigError(ValueError):
    """A config that cannot work: one line naming the key and what was expected."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "token-classification"

    c.model = ml_collections.ConfigDict()
    c.model.name_or_path = PACKAGED_MINILM
    c.model.dtype = "float32"            # compute dtype; parameters stay float32
    c.model.remat = "none"               # none | full | dots_saveable: recompute layer activations in backward
    c.model.hidden_dropout = -1.0        # < 0: the checkpoint's own value
    c.model.attention_dropout = -1.0

    c.data = ml_collections.ConfigDict()
    c.data.train_file = PACKAGED_TWEETS_NER
    c.data.validation_file = ""          # empty with only a train file: fixed 70/15/15 split of it
    c.data.test_file = ""
    c.data.hf_dataset = ""               # hub dataset id (or a builder such as "json" with data.train_file)
    c.data.hf_config_name = ""
    c.data.train_split = "train"
    c.data.validation_split = "validation"
    c.data.test_split = "test"
    c.data.tokens_column = "tokens"
    c.data.tags_column = "tags"
    c.data.conll_token_column = 0
    c.data.conll_tag_column = -1
    c.data.text_column = "text"
    c.data.text_pair_column = ""
    c.data.label_column = "label"
    c.data.tag_scheme = "auto"
    c.data.max_length = 128
    c.data.label_all_subtokens = False
    c.data.bucket_multiple = 16          # batches are padded to a multiple of this (bounded compiles)
    c.data.sort_window_batches = 50      # train batches: sort by length within windows of this many batches
                                         # (less padding); 1: plain random batches, as a shuffled DataLoader
    c.data.packing = False               # pack several short examples into each row (train and eval)
    c.data.pack_length = 0               # packed row length; 0: data.max_length
    c.data.label_separator = ","         # multi-label labels written as one string: "a,b" (CSV/TSV)

    # sequence classification (task "sequence-classification")
    c.classification = ml_collections.ConfigDict()
    c.classification.problem_type = "single_label_classification"  # | multi_label_classification | regression
    c.classification.class_weights = "none"  # none | balanced | "label:weight,label:weight"
    c.classification.threshold = 0.5     # multi-label decision threshold (start value when tuned)
    c.classification.tune_threshold = True  # multi-label: pick the threshold with the best dev micro F1
    c.classification.main_metric = ""    # dev metric that picks the best checkpoint; "": by problem type

    # extractive question answering (task "question-answering", SQuAD v1/v2 format)
    c.qa = ml_collections.ConfigDict()
    c.qa.doc_stride = 128                # tokens shared by consecutive windows of a long context
    c.qa.max_query_length = 64           # question tokens kept
    c.qa.max_answer_length = 30          # longest predicted answer, in tokens
    c.qa.n_best_size = 20                # start/end candidates per window
    c.qa.null_score_diff_threshold = 0.0  # SQuAD v2: answer "" when null score - best span score > this
    c.qa.tune_null_threshold = True      # SQuAD v2: pick that threshold with the best dev F1

    # masked-LM pretraining (task "masked-lm", jaxft/tasks/mlm.py)
    c.mlm = ml_collections.ConfigDict()
    c.mlm.probability = 0.15             # share of tokens (or words) selected for prediction
    c.mlm.mask_fraction = 0.8            # of the selected: replaced by [MASK]
    c.mlm.random_fraction = 0.1          # of the selected: replaced by a random token (the rest stay)
    c.mlm.whole_word = False             # select whole words (all their sub-tokens) instead of tokens
    c.mlm.source_split = "all"           # all | train: only the first 70% of the lines (the fixed split's train
                                         # part, so a later fine-tune's dev/test text is never seen)
    c.mlm.heldout_fraction = 0.05        # last share of the lines held out for perplexity (no validation_file)
    c.mlm.max_heldout_lines = 1000       # at most this many held-out lines
    c.mlm.eval_seed = 1234               # masks of the held-out lines (fixed for the whole run)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.grad_accum_steps = 1
    c.train.num_epochs = 10
    c.train.max_steps = 0                # > 0: stop after this many optimizer steps
    c.train.seed = 0
    c.train.log_every = 20
    c.train.eval_every = 0               # 0: evaluate on dev at the end of every epoch
    c.train.early_stopping_patience = 0  # evaluations without dev improvement before stopping; 0: never
    c.train.checkpoint_every = 0         # optimizer steps between extra checkpoints; 0: only at evaluations
    c.train.keep_checkpoints = 2
    c.train.stop_after_step = 0          # > 0: checkpoint and end this process at that step (the schedule
                                         # still spans the whole run); re-run the command to continue
    c.train.progress_bar = True
    c.train.wandb = False                # also log the metrics to Weights & Biases (pip install jaxft[wandb];
                                         # WANDB_MODE=offline works without network)
    c.train.wandb_project = "jaxft"
    c.train.skip_nonfinite = False      # NaN/inf loss or gradient: False stops the run; True skips the step
    c.train.ema_decay = 0.0              # > 0: keep an exponential moving average of the trained weights
                                         # (warm-up min(decay, (1+t)/(10+t))); dev, test and export use it

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 0.01
    c.optim.warmup_ratio = 0.1
    c.optim.schedule = "linear"
    c.optim.clip_norm = 1.0              # 0: no clipping
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.moments_dtype = "float32"    # float32 | bfloat16 (first moment; halves its memory)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                     # -1: all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = "embed=fsdp,mlp=tensor,heads=tensor,vocab=tensor"  # logical axis -> mesh axis
    c.mesh.distributed = False           # call jax.distributed.initialize() (multi-host runs)
    c.mesh.coordinator_address = ""      # host:port of process 0; empty: auto-detect (TPU pods, SLURM)
    c.mesh.num_processes = 0             # 0: auto-detect
    c.mesh.process_id = -1               # -1: auto-detect

    c.peft = ml_collections.ConfigDict()
    c.peft.method = "none"
    c.peft.rank = 8
    c.peft.alpha = 16.0
    c.peft.target_modules = "query|value"  # regex matching the end of module paths ("...self.query")
    c.peft.dropout = 0.0                 # LoRA dropout on the low-rank path's input
    c.peft.rslora = False                # scale LoRA by alpha / sqrt(rank) instead of alpha / rank
    c.peft.modules_to_save = "auto"      # fully trained and saved modules: "auto" = the task head; "" = none
    c.peft.adapter_size = 64             # houlsby / pfeiffer bottleneck width
    c.peft.adapter_activation = ""       # "": swish (houlsby), relu (pfeiffer)
    c.peft.prefix_length = 16            # prefix tuning: learned key/value vectors per layer
    c.peft.freeze = ""                   # regex searched in parameter paths: frozen whatever the method
    c.peft.export_adapter = True         # lora/dora: also write export_adapter/ in peft's format
    # training options that go with PEFT (issue 5), kept in their groups
    c.optim.layer_decay = 1.0            # layer-wise LR decay: layer l of L gets lr * decay**(L + 1 - l)
    c.optim.loraplus_lr_ratio = 1.0      # LoRA+: LoRA B matrices get lr * ratio (peft's loraplus_lr_ratio)
    c.optim.head_lr_ratio = 1.0          # pooler and task head get lr * ratio (they start from scratch or near it)
    c.train.adversarial = "none"         # none | fgm | pgd: perturb the word embeddings (loss = clean + adv)
    c.train.adversarial_epsilon = 1.0    # L2 norm of the perturbation of the embedding table
    c.train.adversarial_steps = 3        # pgd: ascent steps
    c.train.adversarial_alpha = 0.3      # pgd: step size (L2 norm) of each ascent step

    # train-split augmentation (jaxft/data/augment.py); dev and test are never augmented
    c.augment = ml_collections.ConfigDict()
    c.augment.methods = ""               # comma-separated; "": off. classification: swap, delete, insert,
                                         # synonym; NER: mention, token
    c.augment.copies = 1                 # augmented copies per train example (unchanged copies are dropped)
    c.augment.swap_rate = 0.1            # EDA alpha: max(1, int(rate * words)) swaps
    c.augment.delete_rate = 0.1          # probability of dropping each word
    c.augment.insert_rate = 0.1          # max(1, int(rate * words)) insertions
    c.augment.synonym_rate = 0.1         # max(1, int(rate * words)) words replaced by a synonym
    c.augment.mention_rate = 0.3         # probability of replacing each entity mention
    c.augment.token_rate = 0.1           # probability of replacing each token by one with the same tag
    c.augment.lexicon_file = ""          # synonyms for insert / synonym (format: jaxft/data/augment.py)
    c.augment.pair_inputs = "first"      # sentence pairs: first | both texts are edited
    c.augment.seed = 0                   # with train.seed, seeds the (fixed, once per run) augmented set
    return c


def check_against_schema(config: ml_collections.ConfigDict,
                         schema: ml_collections.ConfigDict | None = None, prefix: str = "") -> None:
    """Unknown keys and wrong types, named with the nearest known key."""
    schema = base_config() if schema is None else schema
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in schema:
            known = [f"{prefix}{k}" for k in schema.keys()]
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"unknown config key {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        expected = schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key {name!r} must be a group of keys, got {value!r}")
            check_against_schema(value, expected, f"{name}.")
        elif not _type_ok(value, expected):
            raise ConfigError(f"config key {name!r} must be {type(expected).__name__}, got {value!r}")


def _type_ok(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(expected, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(expected))


def validate(config: ml_collections.ConfigDict) -> None:
    """Everything that can be checked before data or model are touched."""
    check_against_schema(config)
    _one_of(config, "model.dtype", DTYPES)
    _one_of(config, "model.remat", ("none", "full", "dots_saveable"))
    _one_of(config, "optim.moments_dtype", DTYPES)
    _one_of(config, "data.tag_scheme", TAG_SCHEMES)
    _one_of(config, "optim.schedule", SCHEDULES)
    _one_of(config, "classification.problem_type", PROBLEM_TYPES)
    _positive(config, "qa.max_query_length", "qa.max_answer_length", "qa.n_best_size")
    if not 0 < config.classification.threshold < 1:
        raise ConfigError(f"classification.threshold must be in (0, 1), got {config.classification.threshold}")
    if config.task == "question-answering" and not 0 <= config.qa.doc_stride < config.data.max_length:
        raise ConfigError(f"qa.doc_stride must be in [0, data.max_length), got {config.qa.doc_stride}")
    _positive(config, "train.batch_size", "train.grad_accum_steps", "data.bucket_multiple",
              "data.sort_window_batches", "train.log_every", "train.keep_checkpoints")
    _non_negative(config, "data.pack_length", "train.num_epochs", "train.max_steps", "train.eval_every",
                  "train.early_stopping_patience", "train.checkpoint_every", "train.stop_after_step",
                  "optim.weight_decay",
                  "optim.clip_norm")
    if config.train.num_epochs == 0 and config.train.max_steps == 0:
        raise ConfigError("train.num_epochs and train.max_steps are both 0: there is nothing to train")
    if not 0 < config.optim.learning_rate < 1:
        raise ConfigError(f"optim.learning_rate must be in (0, 1), got {config.optim.learning_rate}")
    if not 0 <= config.optim.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {config.optim.warmup_ratio}")
    if not 0 <= config.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off; 0.99-0.9999 are usual), "
                          f"got {config.train.ema_decay}")
    if not 8 <= config.data.max_length <= 8192:
        raise ConfigError(f"data.max_length must be in [8, 8192], got {config.data.max_length}")
    for key in FILE_KEYS:
        _file_exists(config, key)
    _validate_peft(config)
    _validate_mlm(config)
    _validate_augment(config)
    if config.data.hf_dataset and config.data.train_file == PACKAGED_TWEETS_NER:
        raise ConfigError("data.hf_dataset is set while data.train_file is the packaged default: "
                          "set data.train_file='' (or to the data files of a builder such as 'json')")


PEFT_METHODS = ("none", "lora", "dora", "bitfit", "houlsby", "pfeiffer", "prefix")
ADVERSARIAL = ("none", "fgm", "pgd")


def _validate_peft(config) -> None:
    import re

    _one_of(config, "peft.method", PEFT_METHODS)
    _one_of(config, "train.adversarial", ADVERSARIAL)
    _positive(config, "peft.rank", "peft.alpha", "peft.adapter_size", "peft.prefix_length",
              "train.adversarial_epsilon", "train.adversarial_steps", "train.adversarial_alpha")
    if not 0 <= config.peft.dropout < 1:
        raise ConfigError(f"peft.dropout must be in [0, 1), got {config.peft.dropout}")
    if config.optim.loraplus_lr_ratio <= 0:
        raise ConfigError(f"optim.loraplus_lr_ratio must be > 0 (1: plain LoRA), got {config.optim.loraplus_lr_ratio}")
    if config.optim.head_lr_ratio <= 0:
        raise ConfigError(f"optim.head_lr_ratio must be > 0 (1: one learning rate), got {config.optim.head_lr_ratio}")
    if not 0 < config.optim.layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], got {config.optim.layer_decay}")
    _one_of(config, "peft.adapter_activation", ("", "relu", "swish", "silu", "gelu", "tanh"))
    for key in ("peft.target_modules", "peft.modules_to_save", "peft.freeze"):
        try:
            re.compile(_get(config, key))
        except re.error as err:
            raise ConfigError(f"config key {key!r}: {_get(config, key)!r} is not a valid regex ({err})") from None


AUGMENT_METHODS = {"sequence-classification": ("swap", "delete", "insert", "synonym"),
                   "token-classification": ("mention", "token")}


def _validate_augment(config) -> None:
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
    for method in AUGMENT_METHODS["sequence-classification"] + AUGMENT_METHODS["token-classification"]:
        if not 0 < aug[f"{method}_rate"] <= 1:
            raise ConfigError(f"config key 'augment.{method}_rate' must be in (0, 1], got {aug[f'{method}_rate']}")
    _one_of(config, "augment.pair_inputs", ("first", "both"))
    if aug.lexicon_file and not os.path.isfile(os.path.expanduser(aug.lexicon_file)):
        raise ConfigError(f"config key 'augment.lexicon_file': file not found: {aug.lexicon_file}")
    needing = [m for m in methods if m in ("insert", "synonym")]
    if needing and not aug.lexicon_file:
        raise ConfigError(f"augment.methods {', '.join(needing)} need a synonym lexicon: set augment.lexicon_file")


def _validate_mlm(config) -> None:
    mlm = config.mlm
    _one_of(config, "mlm.source_split", ("all", "train"))
    for key in ("probability", "heldout_fraction"):
        if not 0 < mlm[key] < 1:
            raise ConfigError(f"config key 'mlm.{key}' must be in (0, 1), got {mlm[key]}")
    if not (0 <= mlm.mask_fraction and 0 <= mlm.random_fraction and mlm.mask_fraction + mlm.random_fraction <= 1):
        raise ConfigError(f"mlm.mask_fraction + mlm.random_fraction must be fractions summing to at most 1, got "
                          f"{mlm.mask_fraction} + {mlm.random_fraction}")
    _positive(config, "mlm.max_heldout_lines")


# What a run writes inside its workdir, and may therefore replace or delete.
WORKDIR_OUTPUTS = ("export", "export_adapter", "checkpoints", "checkpoints_damaged")


def validate_workdir(config: ml_collections.ConfigDict, workdir) -> None:
    """Where a run may write: `workdir` and the fixed folders under it, nothing chosen by a config value.
    Refused: a workdir that is an existing file, and inputs (model folder, data files) that lie inside a
    folder the run overwrites, e.g. re-training `runs/x/export` with --workdir runs/x would replace the
    model being read."""
    from pathlib import Path

    root = Path(os.path.expanduser(str(workdir)))
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--workdir {workdir}: exists and is not a folder")
    outputs = [(root / name).resolve() for name in WORKDIR_OUTPUTS]
    for key in ("model.name_or_path",) + FILE_KEYS:
        value = _get(config, key)
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


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _one_of(config, key: str, allowed: tuple) -> None:
    if _get(config, key) not in allowed:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(allowed)}; got {_get(config, key)!r}")


def _positive(config, *keys: str) -> None:
    for key in keys:
        if _get(config, key) <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {_get(config, key)}")


def _non_negative(config, *keys: str) -> None:
    for key in keys:
        if _get(config, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {_get(config, key)}")


def _file_exists(config, key: str) -> None:
    value = _get(config, key)
    if not value or value.startswith("packaged:") or config.data.hf_dataset:
        return
    if not os.path.isfile(os.path.expanduser(value)):
        raise ConfigError(f"config key {key!r}: file not found: {value}")
