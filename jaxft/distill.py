"""Knowledge distillation into a smaller student: some of a teacher export's layers, trained on the teacher's
soft targets plus the hard labels (config group `distill`; recipes configs/ner_distill.py and
configs/sentiment_distill.py).

    python -m jaxft.main --config configs/ner_distill.py --config.distill.teacher=runs/ner/export \
        --workdir runs/ner_student

The student is the teacher with fewer encoder layers: its embeddings, its task head and the layers that
`distill.layer_choice` picks (layer_indices), written as an ordinary Hugging Face folder (STUDENT_FOLDER in the
run's folder) that the run loads as its base model. Layers are found by the index in the checkpoint keys
("bert.encoder.layer.3.attention...", "distilbert.transformer.layer.3...", "model.layers.3.attn...": LAYER_INDEX),
and the layer count is the family's config.json field (LAYER_COUNT_FIELDS; num_hidden_layers by default), so a
family whose checkpoint numbers its layers that way needs no code here; config.json lists with one entry per
layer (e.g. layer_types) are cut to the chosen layers. The export is an ordinary HF folder of the student.

The teacher runs inside the jitted train step as a frozen model: attached to the student under
TEACHER_ATTRIBUTE, its parameters reach the step with the frozen parameters (never differentiated, never in the
optimizer state or the checkpoints), it runs in eval mode (no dropout) on exactly the inputs the student gets,
and it is detached before the export. Chosen over precomputed outputs because it serves every task alike:
masked LM draws new masks every step, packing and length buckets change the rows a target belongs to, and
vocabulary-sized (MLM) or [rows, tokens, labels] targets need no storage; the cost is one teacher forward pass
per step (no backward pass).

Loss per target: soft_weight * T^2 * KL(teacher_T || student_T) + (1 - soft_weight) * the task's own loss (its
label smoothing and class weights included), with *_T the distributions at temperature T, summed over the
task's targets and divided by their count as the task's loss is:
- token classification: the label distribution at each trained sub-token (labels >= 0);
- sequence classification: the label softmax per example; multi-label: each label's sigmoid (binary KL,
  averaged over the labels like the task's BCE); regression: the squared difference to the teacher's value
  (a soft target without a distribution, so no temperature);
- question answering: the start and the end distributions over the row's tokens (padding excluded), averaged;
- masked LM: the vocabulary distribution at each masked position (the same masks the task draws).
Unlabelled text (distill.unlabelled_file, token and sequence classification): rows in the train file's format
without labels; the teacher's prediction (argmax tag / label, labels above classification.threshold, its
value) stands in for the hard label, computed in the step from the same teacher pass as the soft targets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxft.config import (DISTILL_LAYER_CHOICES, MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION,
                          TOKEN_CLASSIFICATION, ConfigError)
from jaxft.data import masking
from jaxft.data.ner_encoding import encode_for_training
from jaxft.data.ner_readers import Sentence, read_sentences
from jaxft.data.text_readers import read_text_examples
from jaxft.files import write_folder
from jaxft.models import from_pretrained, task_of
from jaxft.models.config import read_hf_config
from jaxft.models.encoder import model_inputs
from jaxft.models.hf import read_checkpoint
from jaxft.tasks.classification import MULTI, REGRESSION, SINGLE, encode_texts
from jaxft.tasks.mlm import MASKING_STREAM
from jaxft.tasks.qa import MASKED
from jaxft.train.state import split_model

log = logging.getLogger("jaxft.distill")

TEACHER_ATTRIBUTE = "distill_teacher"     # the frozen teacher's attribute on the student while it trains
STUDENT_FOLDER = "distill_student_init"   # the student before training, an HF folder in the run's folder
UNLABELLED_KEY = "distill_unlabelled"     # per-example 1 on rows of distill.unlabelled_file, 0 on the others
# The layer index in a checkpoint key: "...encoder.layer.3.", "...transformer.layer.3.", "model.layers.3.".
LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
# config.json's layer count where it is not num_hidden_layers (by model_type).
LAYER_COUNT_FIELDS = {"distilbert": "n_layers"}
TEACHER_FILES_NOT_COPIED = ("config.json", "README.md", "jaxft_task.json")


# ---------------------------------------------------------------------------------------------- the student

def layer_indices(choice: str, teacher_layers: int, student_layers: int = 0) -> list[int]:
    """The teacher layers the student starts from, in order. choice: "every_other" (0, 2, 4, ...: DistilBERT's
    initialisation), "first" (0 .. N-1), "spread" (evenly over the depth, first and last kept) or a
    comma-separated list of indices ("0,2,5"); student_layers N: 0 means half the teacher's (rounded up)."""
    if re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", choice):
        chosen = [int(part) for part in choice.split(",")]
        if chosen != sorted(set(chosen)) or chosen[-1] >= teacher_layers:
            raise ConfigError(f"distill.layer_choice {choice!r}: expected increasing indices of the teacher's "
                              f"{teacher_layers} layers (0 to {teacher_layers - 1})")
        if student_layers not in (0, len(chosen)):
            raise ConfigError(f"distill.layer_choice names {len(chosen)} layers but distill.student_layers is "
                              f"{student_layers}")
        return chosen
    count = student_layers or (teacher_layers + 1) // 2
    if count > teacher_layers:
        raise ConfigError(f"distill.student_layers {count} is more than the teacher's {teacher_layers} layers")
    if choice == "first":
        return list(range(count))
    if choice == "every_other":
        if 2 * count - 1 > teacher_layers:
            raise ConfigError(f"distill.layer_choice every_other gives at most {(teacher_layers + 1) // 2} of the "
                              f"teacher's {teacher_layers} layers, not {count}")
        return list(range(0, 2 * count - 1, 2))
    if choice == "spread":
        if count == 1:
            return [0]
        return [int(i * (teacher_layers - 1) / (count - 1) + 0.5) for i in range(count)]
    raise ConfigError(f"distill.layer_choice must be one of {', '.join(DISTILL_LAYER_CHOICES)} or a list of "
                      f"layer indices ('0,2,5'), got {choice!r}")


def layer_count_field(hf_config: dict) -> str:
    return LAYER_COUNT_FIELDS.get(hf_config.get("model_type"), "num_hidden_layers")


def student_tensors(tensors: dict[str, np.ndarray], layers: list[int], teacher_layers: int,
                    source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The teacher's tensors without the layers not in `layers`, the kept ones renumbered 0 .. len-1."""
    renumber = {old: new for new, old in enumerate(layers)}
    kept, seen = {}, set()
    for key, value in tensors.items():
        match = LAYER_INDEX.search(key)
        if match is None:
            kept[key] = value
            continue
        index = int(match.group(1))
        seen.add(index)
        if index in renumber:
            kept[key[:match.start(1)] + str(renumber[index]) + key[match.end(1):]] = value
    if seen != set(range(teacher_layers)):
        raise ConfigError(f"{source}: the layer indices in its keys ({sorted(seen)[:8]}...) are not the "
                          f"{teacher_layers} layers its config.json declares; jaxft finds layers by "
                          f"'layer.N.' / 'layers.N.' in the keys (jaxft.distill.LAYER_INDEX)")
    return kept


def student_config(hf_config: dict, layers: list[int]) -> dict:
    field = layer_count_field(hf_config)
    total = int(hf_config[field])
    config = dict(hf_config)
    for name, value in hf_config.items():  # per-layer lists (e.g. layer_types) keep the chosen layers' entries
        if isinstance(value, list) and len(value) == total and name != "architectures":
            config[name] = [value[i] for i in layers]
    config[field] = len(layers)
    return config


def write_student_folder(teacher_dir: str | Path, layers: list[int], folder: str | Path) -> Path:
    """An HF folder of the student: the teacher's config.json with len(layers) layers, its weights without the
    other layers, and its tokenizer files."""
    teacher = Path(teacher_dir)
    hf_config = read_hf_config(str(teacher / "config.json"))
    tensors = student_tensors(read_checkpoint(teacher), layers, int(hf_config[layer_count_field(hf_config)]),
                              str(teacher))

    def write(tmp: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(student_config(hf_config, layers), indent=2, sort_keys=True)
                                         + "\n")
        for item in teacher.iterdir():  # the tokenizer files
            if item.is_file() and not item.name.startswith("model") and item.name not in TEACHER_FILES_NOT_COPIED:
                shutil.copy(item, tmp / item.name)

    return write_folder(folder, write)


def teacher_layer_count(teacher_dir: str | Path) -> int:
    hf_config = read_hf_config(str(Path(teacher_dir) / "config.json"))
    return int(hf_config[layer_count_field(hf_config)])


# ---------------------------------------------------------------------------------------------- soft targets

def kl_terms(student_logits, teacher_logits, temperature: float):
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) over the last axis."""
    teacher_log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    student_log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature ** 2 * jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)


def binary_kl_terms(student_logits, teacher_logits, temperature: float):
    """T^2 times the mean over labels of KL(Bernoulli(sigmoid(teacher / T)) || Bernoulli(sigmoid(student / T)))."""
    s = student_logits.astype(jnp.float32) / temperature
    t = teacher_logits.astype(jnp.float32) / temperature
    p = jax.nn.sigmoid(t)
    kl = (p * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s))
          + (1 - p) * (jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s)))
    return temperature ** 2 * jnp.mean(kl, axis=-1)


def _masked_sum(terms, valid):
    return jnp.sum(jnp.where(valid, terms, 0.0)), jnp.sum(valid, dtype=jnp.int32)


def masked_lm_targets(task, key, batch):
    """The targets [B, slots] that MaskedLmTask.loss draws with `key` (IGNORE_INDEX in unused slots)."""
    slots = masking.max_predictions(batch["input_ids"].shape[-1], task.probability)
    masked = masking.mask_tokens(key, batch["input_ids"], batch["special_mask"], batch["word_start"],
                                 replacement_ids=jnp.asarray(task.replacement_ids), cap=slots, **task.options)
    return masking.prediction_slots(masked.labels, slots)[1]


def soft_loss(task_name: str, task, student, teacher, batch, keys: list, temperature: float):
    """(sum, count) of the soft term over the targets the task's own loss counts (see the module doc)."""
    if task_name == TOKEN_CLASSIFICATION:
        return _masked_sum(kl_terms(student, teacher, temperature), batch["labels"] >= 0)
    if task_name == SEQUENCE_CLASSIFICATION:
        real = batch["attention_mask"][:, 0] > 0
        if task.problem_type == SINGLE:
            return _masked_sum(kl_terms(student, teacher, temperature), real)
        if task.problem_type == MULTI:
            return _masked_sum(binary_kl_terms(student, teacher, temperature), real)
        return _masked_sum(jnp.square(student[:, 0] - teacher[:, 0]), real)
    if task_name == QUESTION_ANSWERING:
        valid = batch["attention_mask"] > 0
        (student_start, student_end), (teacher_start, teacher_end) = student, teacher
        masked = lambda logits: jnp.where(valid, logits, MASKED)  # noqa: E731
        terms = (kl_terms(masked(student_start), masked(teacher_start), temperature)
                 + kl_terms(masked(student_end), masked(teacher_end), temperature)) / 2
        return _masked_sum(terms, valid[:, 0])
    if task_name == MASKED_LM:
        return _masked_sum(kl_terms(student, teacher, temperature), masked_lm_targets(task, keys[0], batch) >= 0)
    raise ValueError(f"no soft targets for task {task_name!r}")


def with_teacher_labels(task_name: str, task, batch: dict, teacher) -> dict:
    """The batch with the teacher's predictions as the hard targets of its unlabelled rows."""
    unlabelled = batch[UNLABELLED_KEY] > 0
    if task_name == TOKEN_CLASSIFICATION:
        labels = batch["labels"]
        predicted = jnp.argmax(teacher, axis=-1).astype(labels.dtype)
        return {**batch, "labels": jnp.where(unlabelled[:, None] & (labels >= 0), predicted, labels)}
    key = task.target_key
    if task.problem_type == SINGLE:
        predicted = jnp.argmax(teacher, axis=-1)
    elif task.problem_type == MULTI:
        predicted = jax.nn.sigmoid(teacher) > task.threshold
        unlabelled = unlabelled[:, None]
    else:
        predicted = teacher[:, 0]
    return {**batch, key: jnp.where(unlabelled, predicted.astype(batch[key].dtype), batch[key])}


class _Recorder:
    """Stands in for the student inside the task's loss: every call and attribute goes to the student, and
    each call also runs the teacher on the same arguments (or reuses `precomputed`, the teacher's output on the
    batch's own inputs). The masking keys the loss draws (masked LM) are recorded too."""

    def __init__(self, student, teacher, batch_ids, precomputed=None):
        self.__dict__.update(_student=student, _teacher=teacher, _batch_ids=batch_ids, _precomputed=precomputed,
                             calls=[], keys=[])

    def __call__(self, *args, **kwargs):
        student_out = self._student(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if self._precomputed is not None and ids is self._batch_ids and set(kwargs) <= {
                "input_ids", "attention_mask", "token_type_ids", "segment_ids", "position_ids"}:
            teacher_out = self._precomputed
        else:
            teacher_out = self._teacher(*args, **kwargs)
        self.calls.append((student_out, jax.tree.map(jax.lax.stop_gradient, teacher_out)))
        return student_out

    def __getattr__(self, name):
        value = getattr(self._student, name)
        return _RecordingStreams(value, self.keys) if name == MASKING_STREAM else value


class _RecordingStreams:
    def __init__(self, rngs, keys: list):
        self._rngs, self._keys = rngs, keys

    def __getattr__(self, stream):
        draw = getattr(self._rngs, stream)

        def recorded():
            key = draw()
            self._keys.append(key)
            return key
        return recorded


def distillation_loss(hard_loss, task_name: str, task, temperature: float, soft_weight: float):
    """loss_fn(model, batch) -> (sum, count)  ==>  the same signature with the teacher's soft term mixed in."""
    def loss(model, batch):
        teacher = getattr(model, TEACHER_ATTRIBUTE)
        teacher.eval()  # the merged copy of this step only: no dropout in the teacher
        precomputed = None
        if UNLABELLED_KEY in batch:
            precomputed = teacher(**model_inputs(batch))
            batch = with_teacher_labels(task_name, task, batch, precomputed)
        recorder = _Recorder(model, teacher, batch["input_ids"], precomputed)
        hard_sum, count = hard_loss(recorder, batch)
        if len(recorder.calls) != 1:
            raise RuntimeError(f"distillation expects the {task_name} loss to call the model once, it called it "
                               f"{len(recorder.calls)} times")
        student_out, teacher_out = recorder.calls[0]
        soft_sum, _ = soft_loss(task_name, task, student_out, teacher_out, batch, recorder.keys, temperature)
        return soft_weight * soft_sum + (1.0 - soft_weight) * hard_sum, count

    return loss


# ---------------------------------------------------------------------------------------------- unlabelled rows

def unlabelled_rows(task_name: str, task, tokenizer, config) -> list[dict]:
    """Rows of distill.unlabelled_file encoded as the task's train rows, with placeholder targets."""
    path, data = config.distill.unlabelled_file, config.data
    if task_name == TOKEN_CLASSIFICATION:
        sentences = read_sentences(path, token_column=data.conll_token_column, tag_column=None,
                                   tokens_column=data.tokens_column, tags_column=None)
        placeholders = [Sentence(s.tokens, ["O"] * len(s.tokens), s.source, s.document) for s in sentences]
        encoded, _ = encode_for_training(tokenizer, placeholders, task.label2id, data.max_length,
                                         config.ner.label_all_subtokens, context_tokens=config.ner.context_tokens)
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    examples = read_text_examples(path, data.text_column, data.text_pair_column or "", None)
    rows, _ = encode_texts(tokenizer, [e.text for e in examples],
                           [e.text_pair for e in examples] if task.pairs else None, data.max_length)
    placeholder = np.zeros_like(task.train_rows[0][task.target_key])
    return [{**row, task.target_key: placeholder} for row in rows]


# ---------------------------------------------------------------------------------------------- the run's hook

class Distillation:
    """What tasks/run.py calls when distill.teacher is set (NoDistillation otherwise):

        distiller = for_config(config, task_name, folder)      # writes the student folder
        model = from_pretrained(distiller.student_folder, ...)
        task = distiller.wrap(task, tokenizer)                 # the loss; unlabelled rows
        trainable = distiller.attach(model, trainable, dtype)  # the frozen teacher inside the model
        result = distiller.detach(model, result)               # before the export
        results.update(distiller.results())
    """

    def __init__(self, config, task_name: str, folder: str | Path):
        self.config, self.task_name = config, task_name
        self.teacher_dir = Path(config.distill.teacher).expanduser()
        teacher_task = task_of(self.teacher_dir)
        if teacher_task != task_name:
            raise ConfigError(f"distill.teacher {self.teacher_dir} is a {teacher_task} export; this run trains "
                              f"{task_name}")
        self.teacher_layers = teacher_layer_count(self.teacher_dir)
        self.layers = layer_indices(config.distill.layer_choice, self.teacher_layers, config.distill.student_layers)
        self.student_folder = str(write_student_folder(self.teacher_dir, self.layers, Path(folder) / STUDENT_FOLDER))
        self.trainable = None
        self.unlabelled = 0
        log.info("distillation: student of %d layers (teacher layers %s of %d), temperature %g, soft weight %g",
                 len(self.layers), ",".join(map(str, self.layers)), self.teacher_layers,
                 config.distill.temperature, config.distill.soft_weight)

    def wrap(self, task, tokenizer):
        if self.config.distill.unlabelled_file:
            extra = unlabelled_rows(self.task_name, task, tokenizer, self.config)
            self.unlabelled = len(extra)
            task.train_rows = ([{**row, UNLABELLED_KEY: np.int32(0)} for row in task.train_rows]
                               + [{**row, UNLABELLED_KEY: np.int32(1)} for row in extra])
            log.info("distillation: %d unlabelled rows from %s (the teacher's predictions as their labels)",
                     len(extra), self.config.distill.unlabelled_file)
        task.loss = distillation_loss(task.loss, self.task_name, task, float(self.config.distill.temperature),
                                      float(self.config.distill.soft_weight))
        return task

    def attach(self, model, trainable, dtype):
        """The teacher, frozen, under TEACHER_ATTRIBUTE; returns the trainable filter without it."""
        teacher, report = from_pretrained(self.teacher_dir, task=self.task_name, dtype=dtype, hidden_dropout=0.0,
                                          attention_dropout=0.0, attention=self.config.model.attention,
                                          output_loading_info=True)
        if report.missing or report.mismatched:
            raise ConfigError(f"distill.teacher {self.teacher_dir}: not a complete {self.task_name} export "
                              f"(missing {', '.join((report.missing + report.mismatched)[:3])})")
        if tuple(teacher.labels) != tuple(model.labels):
            raise ConfigError(f"distill.teacher {self.teacher_dir} predicts the labels {list(teacher.labels)}, this "
                              f"run's data has {list(model.labels)}: soft targets need the same labels in the same "
                              "order (train the teacher on the same data)")
        if getattr(teacher, "problem_type", None) != getattr(model, "problem_type", None):
            raise ConfigError(f"distill.teacher {self.teacher_dir} is a {teacher.problem_type} model; this run "
                              f"trains {model.problem_type}")
        setattr(model, TEACHER_ATTRIBUTE, teacher)
        self.trainable = nnx.All(trainable if trainable is not None else nnx.Param,
                                 nnx.Not(nnx.PathContains(TEACHER_ATTRIBUTE)))
        return self.trainable

    def detach(self, model, result):
        """The training result without the teacher (what the export and the parameter counts see)."""
        delattr(model, TEACHER_ATTRIBUTE)
        parts = split_model(model, self.trainable)[0]
        frozen = {k: v for k, v in result.frozen.items() if not k.startswith(TEACHER_ATTRIBUTE + ".")}
        return dataclasses.replace(result, parts=parts, frozen=frozen)

    def results(self) -> dict:
        distill = self.config.distill
        summary = {"teacher": str(self.teacher_dir), "teacher_layers": self.teacher_layers,
                   "student_layers": len(self.layers), "layers_kept": self.layers,
                   "layer_choice": distill.layer_choice, "temperature": float(distill.temperature),
                   "soft_weight": float(distill.soft_weight), "unlabelled_rows": self.unlabelled}
        teacher_results = self.teacher_dir.parent / "results.json"
        if teacher_results.is_file():  # the teacher's own run: its test metrics, for the comparison
            test = json.loads(teacher_results.read_text()).get("test") or {}
            summary["teacher_test"] = {k: v for k, v in test.items() if isinstance(v, (int, float))}
        return {"distill": summary}


class NoDistillation:
    """Distillation's hook when distill.teacher is not set: every call leaves things as they are."""

    student_folder = None

    def wrap(self, task, tokenizer):
        return task

    def attach(self, model, trainable, dtype):
        return trainable

    def detach(self, model, result):
        return result

    def results(self) -> dict:
        return {}


def for_config(config, task_name: str, folder: str | Path) -> Distillation | NoDistillation:
    """folder: where the student's starting folder is written (the run's local folder)."""
    return Distillation(config, task_name, folder) if config.distill.teacher else NoDistillation()
