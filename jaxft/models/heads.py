"""Task models: the encoder under its Hugging Face prefix plus each family's own task head.

Calling a model: `model(input_ids, attention_mask, token_type_ids=None, position_ids=None, inputs_embeds=None,
segment_ids=None)` (segment_ids and position_ids for packed rows, see Encoder.__call__)
returns float32 logits: [batch, seq, labels] for tokens, [batch, labels] for sequences, (start, end) each
[batch, seq] for QA. `inputs_embeds` replaces the word-embedding lookup (see Encoder.__call__).
Dropout is active only after `model.train()` (NNX convention; `model.eval()` turns it off).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.config import PROBLEM_TYPES
from jaxft.models.activations import activation
from jaxft.models.config import EncoderConfig
from jaxft.models.encoder import Encoder, dense, layer_norm
from jaxft.models.paths import get_module, split_dotted

TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"
MASKED_LM = "masked-lm"
BARE_ENCODER_SUFFIX = "Model"  # BertModel, RobertaModel, ...: no task head


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

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
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

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
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

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
        logits = self.qa_outputs(self.dropout(hidden)).astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


@dataclasses.dataclass(frozen=True)
class MlmLayout:
    """Where a family keeps its masked-LM head in a Hugging Face checkpoint (module paths, dotted)."""

    dense: str          # transform dense (hidden -> embedding width)
    norm: str           # LayerNorm after the activation
    bias: str           # module holding the output bias over the vocabulary
    decoder: str        # module holding the decoder weight when it is not tied to the word embeddings
    activation: str     # "config": the encoder's hidden_act; else a fixed activation name
    tied_aliases: tuple[str, ...] = ()  # checkpoint keys that are copies of tied weights (never needed)


MLM_LAYOUTS = {
    "bert": MlmLayout("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions",
                      "cls.predictions.decoder", "config",
                      ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")),
    "roberta": MlmLayout("lm_head.dense", "lm_head.layer_norm", "lm_head", "lm_head.decoder", "gelu",
                         ("lm_head.decoder.weight", "lm_head.decoder.bias")),
    "distilbert": MlmLayout("vocab_transform", "vocab_layer_norm", "vocab_projector", "vocab_projector", "config",
                            ("vocab_projector.weight",)),
    "electra": MlmLayout("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head",
                         "generator_lm_head", "gelu", ("generator_lm_head.weight",)),
}


class _Node(nnx.Module):
    """An empty module: the intermediate names of a Hugging Face path ("cls", "predictions")."""


class _OutputBias(nnx.Module):
    """The vocabulary bias (and, untied, the decoder kernel [embedding, vocab]) under the family's name."""

    def __init__(self, width: int, vocab: int, tied: bool, *, rngs: nnx.Rngs):
        self.bias = nnx.Param(jnp.zeros((vocab,), jnp.float32), out_sharding=("vocab",), eager_sharding=False)
        if not tied:
            self.kernel = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (width, vocab), jnp.float32),
                                    out_sharding=("embed", "vocab"), eager_sharding=False)


class ForMaskedLM(TaskModel):
    """Encoder + the family's masked-LM head: dense -> activation -> LayerNorm -> decoder (tied to the word
    embeddings unless the config says tie_word_embeddings=false) + bias. Parameter paths are the family's
    Hugging Face names (BERT "cls.predictions.*", RoBERTa "lm_head.*", DistilBERT "vocab_*", ELECTRA
    "generator_*"), so weights load from and save to *ForMaskedLM checkpoints.

    `masked_positions` [batch, k] (optional): logits only at those positions, [batch, k, vocab] - the
    training loss needs the ~15% masked positions, not a [batch, seq, vocab] tensor.
    `add_pooler`: keep BERT's pooler (not used here) so that a base checkpoint's pooler survives into the
    export and a later sequence-classification fine-tune starts from it.
    """

    task = MASKED_LM

    def __init__(self, config: EncoderConfig, labels=(), hf_config_json: str = "{}", *, dtype=jnp.float32,
                 remat: str = "none", add_pooler: bool = False, tied: bool = True, rngs: nnx.Rngs):
        if config.family.prefix not in MLM_LAYOUTS:
            raise ValueError(f"no masked-LM head layout for {config.model_type}")
        self._init_backbone(config, (), hf_config_json, add_pooler, dtype, rngs, remat)
        layout = self.mlm_layout
        width, hidden = config.embedding_size, config.hidden_size
        # the bias module first: BERT's transform lives inside it ("cls.predictions" + ".transform.dense")
        self._place(layout.bias, _OutputBias(width, config.vocab_size, tied or layout.decoder != layout.bias,
                                             rngs=rngs))
        self._place(layout.dense, dense(hidden, width, ("embed", None), dtype=dtype, rngs=rngs))
        self._place(layout.norm, layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs))
        self.tied = tied
        self.separate_decoder = not tied and layout.decoder != layout.bias
        if self.separate_decoder:
            # transformers 5 untied: the decoder Linear has its own bias and the head's bias goes unused
            self._place(layout.decoder, dense(width, config.vocab_size, (None, "vocab"), dtype=dtype, rngs=rngs))

    @property
    def mlm_layout(self) -> MlmLayout:
        return MLM_LAYOUTS[self.config.family.prefix]

    def _place(self, dotted: str, module: nnx.Module) -> None:
        node = self
        *parents, name = dotted.split(".")
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, _Node())
            node = getattr(node, part)
        setattr(node, name, module)

    def _find(self, dotted: str):
        return get_module(self, split_dotted(dotted))

    def head(self, hidden):
        """Hidden states [..., hidden] -> vocabulary logits [..., vocab] (float32)."""
        layout = self.mlm_layout
        act = activation(self.config.hidden_act if layout.activation == "config" else layout.activation)
        x = self._find(layout.norm)(act(self._find(layout.dense)(hidden)))
        output = self._find(layout.bias)
        if self.tied:
            logits = self.backbone.embeddings.word_embeddings.attend(x)
        elif self.separate_decoder:
            return self._find(layout.decoder)(x).astype(jnp.float32)
        else:
            logits = x @ output.kernel.get_value().astype(x.dtype)
        return logits.astype(jnp.float32) + output.bias.get_value()

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_positions=None, segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, segment_ids=segment_ids)
        if masked_positions is not None:
            hidden = jnp.take_along_axis(hidden, masked_positions[..., None].astype(jnp.int32), axis=1)
        return self.head(hidden)


@dataclasses.dataclass(frozen=True)
class Head:
    """A task head: its module, the suffix of its Hugging Face class name (BertFor...) and peft's task_type.
    A new head is one entry here; tasks (jaxft/tasks/) name the head they train."""

    task: str
    module: type[TaskModel]
    architecture_suffix: str
    peft_task_type: str | None


HEADS: dict[str, Head] = {head.task: head for head in (
    Head(TOKEN_CLASSIFICATION, ForTokenClassification, "ForTokenClassification", "TOKEN_CLS"),
    Head(SEQUENCE_CLASSIFICATION, ForSequenceClassification, "ForSequenceClassification", "SEQ_CLS"),
    Head(QUESTION_ANSWERING, ForQuestionAnswering, "ForQuestionAnswering", "QUESTION_ANS"),
    Head(MASKED_LM, ForMaskedLM, "ForMaskedLM", None),
)}
TASKS = tuple(HEADS)
BARE_ENCODER_PEFT_TASK_TYPE = "FEATURE_EXTRACTION"


def head_for_architecture(architecture: str) -> Head | None:
    """The head of a Hugging Face class name ("BertForTokenClassification"), None if it has none we build."""
    for head in HEADS.values():
        if architecture.endswith(head.architecture_suffix):
            return head
    return None
