"""Task models: the encoder under its Hugging Face prefix plus each family's own task head.

Calling a model: `model(input_ids, attention_mask, token_type_ids=None, position_ids=None)` returns float32
logits: [batch, seq, labels] for tokens, [batch, labels] for sequences, (start, end) each [batch, seq] for QA.
Dropout is active only after `model.train()` (NNX convention; `model.eval()` turns it off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.models.config import EncoderConfig
from jaxft.models.encoder import Encoder, dense

TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"
TASKS = (TOKEN_CLASSIFICATION, SEQUENCE_CLASSIFICATION, QUESTION_ANSWERING)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class TaskModel(nnx.Module):
    """Shared plumbing: the backbone lives under the family prefix ("bert", "roberta", ...)."""

    task: str | None = None

    def _init_backbone(self, config: EncoderConfig, labels: tuple[str, ...], hf_config_json: str,
                       add_pooler: bool, dtype, rngs: nnx.Rngs, remat: str = "none"):
        self.prefix = config.family.prefix
        self.labels = tuple(labels)
        self.hf_config_json = hf_config_json  # the source config.json, kept for save_pretrained
        setattr(self, self.prefix, Encoder(config, add_pooler=add_pooler, dtype=dtype, remat=remat, rngs=rngs))

    @property
    def backbone(self) -> Encoder:
        return getattr(self, self.prefix)

    @property
    def config(self) -> EncoderConfig:
        return self.backbone.config

    @property
    def num_labels(self) -> int:
        return len(self.labels)


class ForTokenClassification(TaskModel):
    task = TOKEN_CLASSIFICATION

    def __init__(self, config: EncoderConfig, labels, hf_config_json: str = "{}", *, dtype=jnp.float32,
                 remat: str = "none", rngs: nnx.Rngs):
        self._init_backbone(config, labels, hf_config_json, False, dtype, rngs, remat)
        self.dropout = nnx.Dropout(config.classifier_dropout, rngs=rngs)
        self.classifier = dense(config.hidden_size, len(labels), ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        return self.classifier(self.dropout(hidden)).astype(jnp.float32)


class ClassificationHead(nnx.Module):
    """RoBERTa/ELECTRA sequence head on the first token: dropout, dense, act, dropout, out_proj."""

    def __init__(self, config: EncoderConfig, num_labels: int, act: str, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, ("embed", None), dtype=dtype, rngs=rngs)
        self.out_proj = dense(config.hidden_size, num_labels, (None, None), dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.sequence_dropout, rngs=rngs)
        self.act = act

    def __call__(self, hidden):
        x = self.dense(self.dropout(hidden[:, 0]))
        x = jnp.tanh(x) if self.act == "tanh" else jax.nn.gelu(x, approximate=False)
        return self.out_proj(self.dropout(x))


class ForSequenceClassification(TaskModel):
    task = SEQUENCE_CLASSIFICATION

    def __init__(self, config: EncoderConfig, labels, hf_config_json: str = "{}",
                 problem_type: str = "single_label_classification", *, dtype=jnp.float32,
                 remat: str = "none", rngs: nnx.Rngs):
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
        self.head_kind = config.family.sequence_head
        self.problem_type = problem_type
        self._init_backbone(config, labels, hf_config_json, self.head_kind == "pooler_tanh", dtype, rngs, remat)
        hidden, num_labels = config.hidden_size, len(labels)
        if self.head_kind in ("dense_tanh", "dense_gelu"):
            act = "tanh" if self.head_kind == "dense_tanh" else "gelu"
            self.classifier = ClassificationHead(config, num_labels, act, dtype=dtype, rngs=rngs)
            return
        if self.head_kind == "pre_classifier_relu":
            self.pre_classifier = dense(hidden, hidden, ("embed", None), dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.sequence_dropout, rngs=rngs)
        self.classifier = dense(hidden, num_labels, (None, None), dtype=dtype, rngs=rngs)

    def pooled(self, hidden):
        if self.head_kind == "pooler_tanh":
            return self.backbone.pooler(hidden)
        return jax.nn.relu(self.pre_classifier(hidden[:, 0]))

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        if isinstance(self.classifier, ClassificationHead):
            return self.classifier(hidden).astype(jnp.float32)
        return self.classifier(self.dropout(self.pooled(hidden))).astype(jnp.float32)


class ForQuestionAnswering(TaskModel):
    task = QUESTION_ANSWERING

    def __init__(self, config: EncoderConfig, labels=("start", "end"), hf_config_json: str = "{}", *,
                 dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        self._init_backbone(config, labels, hf_config_json, False, dtype, rngs, remat)
        self.dropout = nnx.Dropout(config.qa_dropout, rngs=rngs)
        self.qa_outputs = dense(config.hidden_size, 2, ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.qa_outputs(self.dropout(hidden)).astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


TASK_MODELS = {
    TOKEN_CLASSIFICATION: ForTokenClassification,
    SEQUENCE_CLASSIFICATION: ForSequenceClassification,
    QUESTION_ANSWERING: ForQuestionAnswering,
}

# Hugging Face class-name suffix per task, for config.json "architectures".
HF_ARCHITECTURE_SUFFIX = {
    None: "Model",
    TOKEN_CLASSIFICATION: "ForTokenClassification",
    SEQUENCE_CLASSIFICATION: "ForSequenceClassification",
    QUESTION_ANSWERING: "ForQuestionAnswering",
}
