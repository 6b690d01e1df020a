"""Encoder hyper-parameters read from a Hugging Face config.json, one family table for all variants.

The NNX modules are written once (BERT's layout and BERT's Hugging Face parameter names); what differs
between BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA is data in `FAMILIES`: the config field names,
how positions are numbered, which pooling the sequence head uses, and how parameter names map to the
family's own checkpoint keys.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxft.models.activations import ACTIVATIONS


class UnsupportedModelError(ValueError):
    """A config.json whose model_type or settings jaxft cannot build."""


@dataclasses.dataclass(frozen=True)
class Family:
    prefix: str                 # Hugging Face base_model_prefix: "bert." in "bert.encoder.layer.0..."
    class_stem: str             # "Bert" -> BertModel, BertForTokenClassification, ...
    positions: str              # "absolute": 0..T-1; "after_padding": RoBERTa's pad_id+1+cumsum(non-pad)
    token_types: bool
    sequence_head: str          # "pooler_tanh" | "dense_tanh" | "dense_gelu" | "pre_classifier_relu"
    # (our BERT-style name, the family's checkpoint name) substitutions, applied on dotted keys.
    key_renames: tuple[tuple[str, str], ...] = ()
    # config.json fields of the dropout rates that model.hidden_dropout / model.attention_dropout override
    dropout_fields: tuple[str, str] = ("hidden_dropout_prob", "attention_probs_dropout_prob")


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

FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "Bert", "absolute", True, "pooler_tanh"),
    "roberta": Family("roberta", "Roberta", "after_padding", True, "dense_tanh"),
    "xlm-roberta": Family("roberta", "XLMRoberta", "after_padding", True, "dense_tanh"),
    "camembert": Family("roberta", "Camembert", "after_padding", True, "dense_tanh"),
    "electra": Family("electra", "Electra", "absolute", True, "dense_gelu"),
    "distilbert": Family("distilbert", "DistilBert", "absolute", False, "pre_classifier_relu",
                         _DISTILBERT_RENAMES, ("dropout", "attention_dropout")),
}



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

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "EncoderConfig":
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; jaxft builds "
                f"{', '.join(sorted(FAMILIES))}")
        if model_type == "distilbert":
            config = cls._from_distilbert(hf)
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
    hidden_field, attention_field = family.dropout_fields
    updated = dict(hf)
    if hidden is not None:
        updated[hidden_field] = float(hidden)
    if attention is not None:
        updated[attention_field] = float(attention)
    return updated


def read_hf_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UnsupportedModelError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
