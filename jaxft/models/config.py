"""Encoder hyper-parameters read from a Hugging Face config.json, one family table for all variants.

The NNX modules are written once (BERT's layout and BERT's Hugging Face parameter names); what differs
between BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA is data in `FAMILIES`: the config field names,
how positions are numbered, which pooling the sequence head uses, and how parameter names map to the
family's own checkpoint keys.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from jaxft.config import QUESTION_ANSWERING
from jaxft.models.activations import ACTIVATIONS
from jaxft.models.rotary_families import (EUROBERT, GTE, MODERNBERT, RotaryLayout, RotarySettings,
                                         gte_checkpoint_names, read_eurobert, read_gte, read_modernbert)


class UnsupportedModelError(ValueError):
    """A config.json whose model_type or settings jaxft cannot build."""


@dataclasses.dataclass(frozen=True)
class Family:
    prefix: str                 # Hugging Face base_model_prefix: "bert." in "bert.encoder.layer.0..."
    class_stem: str             # "Bert" -> BertModel, BertForTokenClassification, ...
    positions: str              # "absolute": 0..T-1; "after_padding": RoBERTa's pad_id+1+cumsum(non-pad)
    token_types: bool
    sequence_head: str          # "pooler_tanh" | "dense_tanh" | "dense_gelu" | "pre_classifier_relu" | "context_pooler"
    # (our BERT-style name, the family's checkpoint name) substitutions, applied on dotted keys.
    key_renames: tuple[tuple[str, str], ...] = ()
    # config.json fields of the dropout rates that model.hidden_dropout / model.attention_dropout override
    # (a tuple of fields sets each; an empty tuple: the family has no such dropout)
    dropout_fields: tuple[str | tuple[str, ...], str] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    # rotary families (models/rotary_encoder.py, rotary_families.py): module names, config.json reader,
    # checkpoint-name conversion, ModernBERT's prediction head before every task head, the span head's name,
    # heads transformers lacks for the family, whether the bare <Family>Model has a pooler
    layout: RotaryLayout | None = None
    read: Callable[[dict], dict] | None = None
    convert_checkpoint: Callable[[dict], dict] | None = None
    prediction_head: bool = False
    qa_head: str = "qa_outputs"
    missing_heads: tuple[str, ...] = ()
    bare_pooler: bool = True


_DISTILBERT_RENAMES = (
    (r"\.encoder\.layer\.", ".transformer.layer."),
    (r"^encoder\.layer\.", "transformer.layer."),
    (r"\.attention\.self\.query\.", ".attention.q_lin."),
    (r"\.attention\.self\.key\.", ".attention.k_lin."),
    (r"\.attention\.self\.value\.", ".attention.v_lin."),
    (r"\.attention\.output\.dense\.", ".attention.out_lin."),
    (r"\.attention\.output\.LayerNorm\.", ".sa_layer_norm."),
    (r"\.intermediate\.dense\.", ".ffn.lin1."),
    (r"\.output\.dense\.", ".ffn.lin2."),
    (r"\.output\.LayerNorm\.", ".output_layer_norm."),
)

# MPNet keeps BERT's layer (models/mpnet.py) under its own attention names.
_MPNET_RENAMES = (
    (r"\.attention\.self\.query\.", ".attention.attn.q."),
    (r"\.attention\.self\.key\.", ".attention.attn.k."),
    (r"\.attention\.self\.value\.", ".attention.attn.v."),
    (r"\.attention\.output\.dense\.", ".attention.attn.o."),
    (r"\.attention\.output\.LayerNorm\.", ".attention.LayerNorm."),
)

FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "Bert", "absolute", True, "pooler_tanh"),
    "roberta": Family("roberta", "Roberta", "after_padding", True, "dense_tanh"),
    "xlm-roberta": Family("roberta", "XLMRoberta", "after_padding", True, "dense_tanh"),
    "camembert": Family("roberta", "Camembert", "after_padding", True, "dense_tanh"),
    "electra": Family("electra", "Electra", "absolute", True, "dense_gelu"),
    "distilbert": Family("distilbert", "DistilBert", "absolute", False, "pre_classifier_relu",
                         _DISTILBERT_RENAMES, ("dropout", "attention_dropout")),
    # token types when type_vocab_size > 0 (DeBERTa-v3 has none); layers in models/deberta.py
    "deberta-v2": Family("deberta", "DebertaV2", "absolute", False, "context_pooler"),
    "mpnet": Family("mpnet", "MPNet", "after_padding", False, "dense_tanh", _MPNET_RENAMES),
    "modernbert": Family("model", "ModernBert", "absolute", False, "prediction_head",
                         dropout_fields=(("embedding_dropout", "mlp_dropout"), "attention_dropout"),
                         layout=MODERNBERT, read=read_modernbert, prediction_head=True,
                         qa_head="classifier"),
    "eurobert": Family("model", "EuroBert", "absolute", False, "pooled_dense_gelu",
                       dropout_fields=((), "attention_dropout"), layout=EUROBERT, read=read_eurobert,
                       missing_heads=(QUESTION_ANSWERING,)),
    "gte": Family("gte", "Gte", "absolute", True, "pooler_tanh", layout=GTE, read=read_gte,
                  convert_checkpoint=gte_checkpoint_names, missing_heads=(QUESTION_ANSWERING,),
                  bare_pooler=False),
}


POSITION_ATTENTION_TYPES = ("c2p", "p2c")  # DeBERTa's content->position and position->content terms
MPNET_BUCKETS = 32  # transformers' MPNetEncoder.compute_position_bias always uses 32 buckets (max distance 128)


@dataclasses.dataclass(frozen=True)
class DebertaSettings:
    """DeBERTa-v2/v3's config.json fields that the BERT families do not have (models/deberta.py)."""

    relative_attention: bool
    pos_att_type: tuple[str, ...]   # a subset of POSITION_ATTENTION_TYPES, in config order
    position_buckets: int           # > 0: log-bucketed distances (v3: 256); <= 0: plain clipped distances
    max_relative_positions: int     # resolved: the config's value, or max_position_embeddings when < 1
    share_att_key: bool             # position terms reuse query_proj/key_proj instead of pos_*_proj
    norm_rel_ebd: bool              # LayerNorm on the relative embeddings ("layer_norm" in norm_rel_ebd)
    position_biased_input: bool     # absolute position embeddings added to the input (v3: false)
    pooler_dropout: float
    pooler_hidden_act: str
    conv_kernel_size: int           # > 0: DeBERTa-v2's convolution after the first layer (xlarge/xxlarge)
    conv_act: str
    legacy_mlm: bool                # config "legacy": the cls.predictions masked-LM head (else lm_predictions)

    @property
    def span(self) -> int:
        """Half the number of relative-embedding rows: position_buckets, or max_relative_positions."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @property
    def score_scale_factor(self) -> int:
        """Scores are divided by sqrt(head_dim * this): 1 plus one per position term."""
        return 1 + len(self.pos_att_type)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str) -> "DebertaSettings":
        kinds = hf.get("pos_att_type") or []
        if isinstance(kinds, str):
            kinds = [kind.strip() for kind in kinds.lower().split("|")]
        kinds = [kind for kind in kinds if kind]
        unknown = sorted(set(kinds) - set(POSITION_ATTENTION_TYPES))
        if unknown:
            raise UnsupportedModelError(f"{source}: pos_att_type {unknown} is not supported (only c2p, p2c)")
        max_relative = int(hf.get("max_relative_positions", -1))
        norms = [part.strip() for part in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
        settings = cls(
            relative_attention=bool(hf.get("relative_attention", False)),
            pos_att_type=tuple(dict.fromkeys(kinds)),
            position_buckets=int(hf.get("position_buckets", -1)),
            max_relative_positions=max_relative if max_relative >= 1 else int(hf.get("max_position_embeddings", 512)),
            share_att_key=bool(hf.get("share_att_key", False)),
            norm_rel_ebd="layer_norm" in norms,
            position_biased_input=bool(hf.get("position_biased_input", True)),
            pooler_dropout=float(hf.get("pooler_dropout", 0.0)),
            pooler_hidden_act=str(hf.get("pooler_hidden_act", "gelu")),
            conv_kernel_size=int(hf.get("conv_kernel_size", 0)),
            conv_act=str(hf.get("conv_act", "tanh")),
            legacy_mlm=bool(hf.get("legacy", True)),
        )
        settings._validate(hf, source)
        return settings

    def _validate(self, hf: dict[str, Any], source: str) -> None:
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        for field in ("pooler_hidden_act", "conv_act"):
            if getattr(self, field) not in ACTIVATIONS:
                raise UnsupportedModelError(f"{source}: {field} {getattr(self, field)!r} is not supported "
                                            f"({', '.join(ACTIVATIONS)})")
        head_size = hf.get("attention_head_size")
        if head_size is not None and int(head_size) * heads != hidden:
            raise UnsupportedModelError(f"{source}: attention_head_size {head_size} x {heads} heads != hidden size "
                                        f"{hidden}; only heads of hidden_size / num_attention_heads are supported")
        if int(hf.get("pooler_hidden_size", hidden)) != hidden:
            raise UnsupportedModelError(f"{source}: pooler_hidden_size {hf['pooler_hidden_size']} != hidden size "
                                        f"{hidden} (transformers' classifier would not fit it either)")
        if self.conv_kernel_size > 0 and (int(hf.get("conv_groups", 1)) != 1 or self.conv_kernel_size % 2 == 0):
            raise UnsupportedModelError(f"{source}: conv_kernel_size {self.conv_kernel_size} with conv_groups "
                                        f"{hf.get('conv_groups', 1)}: only odd kernels with one group are supported")
        mid = self.position_buckets // 2
        if self.relative_attention and self.position_buckets > 0 and self.max_relative_positions <= mid + 1:
            raise UnsupportedModelError(f"{source}: max_relative_positions {self.max_relative_positions} must exceed "
                                        f"position_buckets / 2 + 1 = {mid + 1} (the log-bucket scale)")



@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Everything the modules need; frozen and hashable so it can live in an NNX graphdef."""

    model_type: str
    vocab_size: int
    hidden_size: int
    embedding_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout: float
    attention_dropout: float
    classifier_dropout: float   # dropout before the token classifier
    sequence_dropout: float     # dropout in the sequence-classification head
    qa_dropout: float           # dropout before the QA span head (DistilBERT only; 0 elsewhere)
    pad_token_id: int
    attention: str = "auto"     # model.attention: the implementation (models/attention.py); not from config.json
    deberta: DebertaSettings | None = None  # model_type "deberta-v2" only
    relative_attention_num_buckets: int = 0  # MPNet's relative-position bias table rows (0: no such table)
    rotary: RotarySettings | None = None  # the rotary families' own settings (rotary_families.py)

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def score_bias(self) -> bool:
        """Whether attention scores get an additive relative-position bias (only the "xla" path takes one)."""
        if self.deberta is not None:
            return self.deberta.relative_attention and bool(self.deberta.pos_att_type)
        return self.relative_attention_num_buckets > 0

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "EncoderConfig":
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; jaxft builds "
                f"{', '.join(sorted(FAMILIES))}")
        if FAMILIES[model_type].read is not None:
            try:
                config = cls(model_type=model_type, **FAMILIES[model_type].read(hf))
            except ValueError as err:
                raise UnsupportedModelError(f"{source}: {err}") from None
        elif model_type == "distilbert":
            config = cls._from_distilbert(hf)
        elif model_type == "deberta-v2":
            config = cls._from_deberta(hf, source)
        elif model_type == "mpnet":
            config = cls._from_mpnet(hf, source)
        else:
            config = cls._from_bert_like(hf, model_type)
        config._validate(hf, source)
        return config

    @classmethod
    def _from_bert_like(cls, hf: dict[str, Any], model_type: str) -> "EncoderConfig":
        hidden_dropout = float(hf.get("hidden_dropout_prob", 0.1))
        classifier_dropout = hf.get("classifier_dropout")
        return cls(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            embedding_size=int(hf.get("embedding_size") or hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            intermediate_size=int(hf["intermediate_size"]),
            hidden_act=str(hf.get("hidden_act", "gelu")),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            hidden_dropout=hidden_dropout,
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            classifier_dropout=hidden_dropout if classifier_dropout is None else float(classifier_dropout),
            sequence_dropout=hidden_dropout if classifier_dropout is None else float(classifier_dropout),
            qa_dropout=0.0,
            pad_token_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0),
        )

    @classmethod
    def _from_deberta(cls, hf: dict[str, Any], source: str) -> "EncoderConfig":
        # transformers: the token head drops out at hidden_dropout_prob, the sequence head at cls_dropout
        base = cls._from_bert_like(hf, "deberta-v2")
        cls_dropout = hf.get("cls_dropout")
        return dataclasses.replace(
            base, type_vocab_size=int(hf.get("type_vocab_size", 0)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-7)),
            classifier_dropout=base.hidden_dropout,
            sequence_dropout=base.hidden_dropout if cls_dropout is None else float(cls_dropout),
            deberta=DebertaSettings.from_hf(hf, source))

    @classmethod
    def _from_mpnet(cls, hf: dict[str, Any], source: str) -> "EncoderConfig":
        base = cls._from_bert_like(hf, "mpnet")
        buckets = int(hf.get("relative_attention_num_buckets", MPNET_BUCKETS))
        if buckets < MPNET_BUCKETS:
            raise UnsupportedModelError(f"{source}: relative_attention_num_buckets {buckets} < {MPNET_BUCKETS}, the "
                                        "bucket count transformers' MPNet computes positions with")
        if base.pad_token_id != 1:
            raise UnsupportedModelError(f"{source}: pad_token_id {base.pad_token_id}: MPNet numbers positions from "
                                        "padding index 1 (fixed in transformers), so pad_token_id must be 1")
        return dataclasses.replace(base, classifier_dropout=base.hidden_dropout, sequence_dropout=base.hidden_dropout,
                                   relative_attention_num_buckets=buckets)

    @classmethod
    def _from_distilbert(cls, hf: dict[str, Any]) -> "EncoderConfig":
        dropout = float(hf.get("dropout", 0.1))
        return cls(
            model_type="distilbert",
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["dim"]),
            embedding_size=int(hf["dim"]),
            num_layers=int(hf["n_layers"]),
            num_heads=int(hf["n_heads"]),
            intermediate_size=int(hf["hidden_dim"]),
            hidden_act=str(hf.get("activation", "gelu")),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=0,
            layer_norm_eps=1e-12,
            hidden_dropout=dropout,
            attention_dropout=float(hf.get("attention_dropout", 0.1)),
            classifier_dropout=dropout,
            sequence_dropout=float(hf.get("seq_classif_dropout", 0.2)),
            qa_dropout=float(hf.get("qa_dropout", 0.1)),
            pad_token_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0),
        )

    def _validate(self, hf: dict[str, Any], source: str) -> None:
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(
                f"{source}: hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(
                f"{source}: activation {self.hidden_act!r} is not supported ({', '.join(ACTIVATIONS)})")
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UnsupportedModelError(
                f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")


def with_dropout(hf: dict[str, Any], hidden: float | None, attention: float | None) -> dict[str, Any]:
    """The config.json with the family's dropout fields set (None keeps the checkpoint's value): what a run
    trains with and writes into its export."""
    family = FAMILIES.get(hf.get("model_type"))
    if family is None or (hidden is None and attention is None):
        return hf
    updated = dict(hf)
    for fields, rate, key in zip(family.dropout_fields, (hidden, attention), ("hidden_dropout", "attention_dropout")):
        fields = (fields,) if isinstance(fields, str) else fields
        if rate is not None and not fields:
            raise UnsupportedModelError(f"model.{key}: {hf['model_type']} has no such dropout in its config.json")
        for field in fields if rate is not None else ():
            updated[field] = float(rate)
    return updated


def read_hf_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UnsupportedModelError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
