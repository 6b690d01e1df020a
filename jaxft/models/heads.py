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
from jaxft.models.blocks import PredictionHead, linear, masked_mean, norm, pool
from jaxft.models.config import FAMILIES, EncoderConfig
from jaxft.models.deberta import DebertaV2Encoder
from jaxft.models.dropout import Dropout
from jaxft.models.encoder import Encoder, dense
from jaxft.models.mpnet import MPNetEncoder
from jaxft.models.paths import get_module, place, split_dotted
from jaxft.models.rotary_encoder import RotaryEncoder

TOKEN_CLASSIFICATION = "token-classification"
SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"
MASKED_LM = "masked-lm"
BARE_ENCODER_SUFFIX = "Model"  # BertModel, RobertaModel, ...: no task head

# The backbone of the families whose layers are not encoder.Encoder's (by model_type); called alike.
ENCODERS: dict[str, type[nnx.Module]] = {"deberta-v2": DebertaV2Encoder, "mpnet": MPNetEncoder}


ENCODERS.update({name: RotaryEncoder for name, family in FAMILIES.items() if family.layout is not None})


def encoder_class(config: EncoderConfig) -> type[nnx.Module]:
    return ENCODERS.get(config.model_type, Encoder)


def word_embeddings(backbone: nnx.Module) -> nnx.Embed:
    """The word-embedding table of any backbone ("embeddings.word_embeddings"; the rotary families name it
    their own way: ModernBERT "embeddings.tok_embeddings", EuroBERT "embed_tokens")."""
    return backbone.word_embeddings if isinstance(backbone, RotaryEncoder) else backbone.embeddings.word_embeddings


class TaskModel(nnx.Module):
    """Shared plumbing: the backbone lives under the family prefix ("bert", "roberta", ...)."""

    task: str | None = None

    def _init_backbone(self, config: EncoderConfig, labels: tuple[str, ...], hf_config_json: str,
                       add_pooler: bool, dtype, rngs: nnx.Rngs, remat: str = "none"):
        self.prefix = config.family.prefix
        self.labels = tuple(labels)
        self.hf_config_json = hf_config_json  # the source config.json, kept for save_pretrained
        setattr(self, self.prefix, encoder_class(config)(config, add_pooler=add_pooler, dtype=dtype, remat=remat,
                                                         rngs=rngs))

    @property
    def backbone(self) -> Encoder:
        return getattr(self, self.prefix)

    @property
    def config(self) -> EncoderConfig:
        return self.backbone.config

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _init_prediction_head(self, config: EncoderConfig, dtype, rngs: nnx.Rngs) -> None:
        if config.family.prediction_head:  # ModernBERT: every task head starts with `head` (dense, act, norm)
            self.head = PredictionHead(config, dtype=dtype, rngs=rngs)

    def transform(self, hidden):
        return self.head(hidden) if hasattr(self, "head") else hidden


class ForTokenClassification(TaskModel):
    task = TOKEN_CLASSIFICATION

    def __init__(self, config: EncoderConfig, labels, hf_config_json: str = "{}", *, dtype=jnp.float32,
                 remat: str = "none", rngs: nnx.Rngs):
        self._init_backbone(config, labels, hf_config_json, False, dtype, rngs, remat)
        self._init_prediction_head(config, dtype, rngs)
        self.dropout = Dropout(config.classifier_dropout, rngs=rngs)
        self.classifier = dense(config.hidden_size, len(labels), ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
        return self.classifier(self.dropout(self.transform(hidden))).astype(jnp.float32)


class ClassificationHead(nnx.Module):
    """RoBERTa/ELECTRA sequence head on the first token: dropout, dense, act, dropout, out_proj."""

    def __init__(self, config: EncoderConfig, num_labels: int, act: str, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, ("embed", None), dtype=dtype, rngs=rngs)
        self.out_proj = dense(config.hidden_size, num_labels, (None, None), dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.sequence_dropout, rngs=rngs)
        self.act = act

    def __call__(self, hidden):
        x = self.dense(self.dropout(hidden[:, 0]))
        x = jnp.tanh(x) if self.act == "tanh" else jax.nn.gelu(x, approximate=False)
        return self.out_proj(self.dropout(x))


class ContextPooler(nnx.Module):
    """DeBERTa's sequence pooler: act(dense(dropout(first token))) with pooler_dropout and pooler_hidden_act."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, ("embed", None), dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.deberta.pooler_dropout, rngs=rngs)
        self.act = config.deberta.pooler_hidden_act

    def __call__(self, hidden):
        return activation(self.act)(self.dense(self.dropout(hidden[:, 0])))


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
        if self.head_kind == "context_pooler":
            self.pooler = ContextPooler(config, dtype=dtype, rngs=rngs)
        if self.head_kind == "prediction_head":  # ModernBERT: pool (cls | mean), head, dropout, classifier
            self._init_prediction_head(config, dtype, rngs)
        if self.head_kind == "pooled_dense_gelu":  # EuroBERT: pool (bos | mean | late), dense, GELU, classifier
            self.dense = dense(hidden, hidden, ("embed", None), dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.sequence_dropout, rngs=rngs)
        self.classifier = dense(hidden, num_labels, (None, None), dtype=dtype, rngs=rngs)

    def pooled(self, hidden, attention_mask=None):
        if self.head_kind == "pooler_tanh":
            return self.backbone.pooler(hidden)
        if self.head_kind == "context_pooler":
            return self.pooler(hidden)
        if self.head_kind == "prediction_head":
            return self.transform(pool(hidden, attention_mask, self.config.rotary.classifier_pooling))
        if self.head_kind == "pooled_dense_gelu":
            return _gelu(self.dense(pool(hidden, attention_mask, self.config.rotary.classifier_pooling)))
        return jax.nn.relu(self.pre_classifier(hidden[:, 0]))

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
        if isinstance(self.classifier, ClassificationHead):
            return self.classifier(hidden).astype(jnp.float32)
        if self.head_kind == "pooled_dense_gelu" and self.config.rotary.classifier_pooling == "late":
            # EuroBERT's "late" pooling: every token's logits, then their mean over the real tokens
            return masked_mean(self.classifier(_gelu(self.dense(hidden))), attention_mask)
        return self.classifier(self.dropout(self.pooled(hidden, attention_mask))).astype(jnp.float32)


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


class ForQuestionAnswering(TaskModel):
    task = QUESTION_ANSWERING

    def __init__(self, config: EncoderConfig, labels=("start", "end"), hf_config_json: str = "{}", *,
                 dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        self._init_backbone(config, labels, hf_config_json, False, dtype, rngs, remat)
        self._init_prediction_head(config, dtype, rngs)
        self.dropout = Dropout(config.qa_dropout, rngs=rngs)
        self.span_head = config.family.qa_head  # "qa_outputs"; ModernBERT "classifier"
        setattr(self, self.span_head, dense(config.hidden_size, 2, ("embed", None), dtype=dtype, rngs=rngs))

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                 segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, segment_ids)
        logits = getattr(self, self.span_head)(self.dropout(self.transform(hidden))).astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


@dataclasses.dataclass(frozen=True)
class MlmLayout:
    """Where a family keeps its masked-LM head in a Hugging Face checkpoint (module paths, dotted)."""

    dense: str          # transform dense (hidden -> embedding width); "": no transform (EuroBERT)
    norm: str           # LayerNorm after the activation
    bias: str           # module holding the output bias over the vocabulary
    decoder: str        # module holding the decoder weight when it is not tied ("": always tied, no weight)
    activation: str     # "config": the encoder's hidden_act; "classifier": ModernBERT's classifier_activation;
                        # else a fixed activation name
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
    # DeBERTa-v2 with config "legacy" true (transformers' default): BERT's layout
    "deberta": MlmLayout("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                         "cls.predictions", "cls.predictions.decoder", "config",
                         ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")),
    # "legacy": false, the head the DeBERTa-v3 checkpoints carry (always tied to the word embeddings)
    "deberta-lm_predictions": MlmLayout("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm",
                                        "lm_predictions.lm_head", "", "config"),
    "mpnet": MlmLayout("lm_head.dense", "lm_head.layer_norm", "lm_head", "lm_head.decoder", "gelu",
                       ("lm_head.decoder.weight", "lm_head.decoder.bias")),
    # the rotary families, by model_type (ModernBERT and EuroBERT share the prefix "model")
    "modernbert": MlmLayout("head.dense", "head.norm", "decoder", "decoder", "classifier", ("decoder.weight",)),
    "eurobert": MlmLayout("", "", "lm_head", "lm_head", "config", ("lm_head.weight",)),
    "gte": MlmLayout("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.decoder", "gelu",
                     ("lm_head.decoder.weight",)),
}


def mlm_layout_name(config: EncoderConfig) -> str:
    if config.deberta is not None and not config.deberta.legacy_mlm:
        return "deberta-lm_predictions"
    if config.rotary is not None:
        return config.model_type
    return config.family.prefix


class _OutputBias(nnx.Module):
    """The vocabulary bias (and, untied, the decoder kernel [embedding, vocab]) under the family's name."""

    def __init__(self, width: int, vocab: int, tied: bool, *, bias: bool = True, rngs: nnx.Rngs):
        if bias:  # ModernBERT's decoder_bias / EuroBERT's mlp_bias may turn it off
            self.bias = nnx.Param(jnp.zeros((vocab,), jnp.float32), out_sharding=("vocab",), eager_sharding=False)
        if not tied:
            self.kernel = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (width, vocab), jnp.float32),
                                    out_sharding=("embed", "vocab"), eager_sharding=False)


class ForMaskedLM(TaskModel):
    """Encoder + the family's masked-LM head: dense -> activation -> LayerNorm -> decoder (tied to the word
    embeddings unless the config says tie_word_embeddings=false) + bias. Parameter paths are the family's
    Hugging Face names (BERT "cls.predictions.*", RoBERTa "lm_head.*", DistilBERT "vocab_*", ELECTRA
    "generator_*", ModernBERT "head.*" + "decoder", EuroBERT "lm_head" alone, GTE "lm_head.*"), so weights load
    from and save to *ForMaskedLM checkpoints.

    `masked_positions` [batch, k] (optional): logits only at those positions, [batch, k, vocab] - the
    training loss needs the ~15% masked positions, not a [batch, seq, vocab] tensor.
    `add_pooler`: keep BERT's pooler (not used here) so that a base checkpoint's pooler survives into the
    export and a later sequence-classification fine-tune starts from it.
    """

    task = MASKED_LM

    def __init__(self, config: EncoderConfig, labels=(), hf_config_json: str = "{}", *, dtype=jnp.float32,
                 remat: str = "none", add_pooler: bool = False, tied: bool = True, rngs: nnx.Rngs):
        if mlm_layout_name(config) not in MLM_LAYOUTS:
            raise ValueError(f"no masked-LM head layout for {config.model_type}")
        self._init_backbone(config, (), hf_config_json, add_pooler, dtype, rngs, remat)
        layout = self.mlm_layout
        tied = tied or not layout.decoder
        width, hidden = config.embedding_size, config.hidden_size
        settings = config.rotary  # the rotary families' biases; the others have all of them
        # the bias module first: BERT's transform lives inside it ("cls.predictions" + ".transform.dense")
        self._place(layout.bias, _OutputBias(width, config.vocab_size, tied or layout.decoder != layout.bias,
                                             bias=settings.decoder_bias if settings else True, rngs=rngs))
        if layout.dense:
            self._place(layout.dense, linear(hidden, width, ("embed", None), dtype=dtype, rngs=rngs,
                                             bias=settings.classifier_bias if settings else True))
            self._place(layout.norm, norm("layer", width, config.layer_norm_eps, dtype=dtype, rngs=rngs,
                                          bias=settings.norm_bias if settings else True))
        self.tied = tied
        self.separate_decoder = not tied and layout.decoder != layout.bias
        if self.separate_decoder:
            # transformers 5 untied: the decoder Linear has its own bias and the head's bias goes unused
            self._place(layout.decoder, dense(width, config.vocab_size, (None, "vocab"), dtype=dtype, rngs=rngs))

    @property
    def mlm_layout(self) -> MlmLayout:
        return MLM_LAYOUTS[mlm_layout_name(self.config)]

    def _place(self, dotted: str, module: nnx.Module) -> None:
        place(self, dotted, module)

    def _find(self, dotted: str):
        return get_module(self, split_dotted(dotted))

    def _activation(self, layout: MlmLayout):
        if layout.activation == "config":
            return activation(self.config.hidden_act)
        if layout.activation == "classifier":
            return activation(self.config.rotary.classifier_activation)
        return activation(layout.activation)

    def vocabulary_logits(self, hidden):
        """Hidden states [..., hidden] -> vocabulary logits [..., vocab] (float32)."""
        layout = self.mlm_layout
        x = hidden
        if layout.dense:
            x = self._find(layout.norm)(self._activation(layout)(self._find(layout.dense)(hidden)))
        output = self._find(layout.bias)
        if self.tied:
            logits = word_embeddings(self.backbone).attend(x)
        elif self.separate_decoder:
            return self._find(layout.decoder)(x).astype(jnp.float32)
        else:
            logits = x @ output.kernel.get_value().astype(x.dtype)
        logits = logits.astype(jnp.float32)
        return logits + output.bias.get_value() if hasattr(output, "bias") else logits

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_positions=None, segment_ids=None):
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, segment_ids=segment_ids)
        if masked_positions is not None:
            hidden = jnp.take_along_axis(hidden, masked_positions[..., None].astype(jnp.int32), axis=1)
        return self.vocabulary_logits(hidden)


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
