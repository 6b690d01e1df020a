"""The rotary-position families as data: each one's module names and structure (`RotaryLayout`), how its
config.json reads into EncoderConfig fields, and GTE's original checkpoint names.

models/config.py's FAMILIES table points at these; models/rotary_encoder.py builds any of them from its
layout. Only models/activations.py is imported here (config.py imports this module). A reader returns the
EncoderConfig keyword arguments (all but model_type; the family's own settings in `rotary`) and raises
ValueError, naming the field and the value, for a setting jaxft cannot build.

Config fields read (transformers 5 names; older names in brackets):
  modernbert  hidden_activation, norm_eps, norm_bias, attention_bias, mlp_bias, local_attention,
              layer_types [global_attn_every_n_layers], rope_parameters.{full,sliding}_attention
              [global_rope_theta, local_rope_theta, rope_scaling], embedding_dropout, mlp_dropout,
              attention_dropout, classifier_{pooling,dropout,bias,activation}, decoder_bias
  eurobert    hidden_act, rms_norm_eps, num_key_value_heads, head_dim, attention_bias, mlp_bias,
              attention_dropout, rope_parameters [rope_theta, rope_scaling], classifier_pooling [clf_pooling]
  gte         hidden_act, layer_norm_eps, type_vocab_size, hidden_dropout_prob,
              attention_probs_dropout_prob, classifier_dropout, rope_parameters [rope_theta, rope_scaling]
RoPE types: "default" and "linear" (positions / factor); others are refused.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from jaxft.models.activations import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class RotaryLayout:
    """Module names (Hugging Face's, dotted under the backbone) and the structure of a rotary encoder."""

    norm: str                        # "layer": LayerNorm (bias per config.norm_bias) | "rms": RMSNorm
    pre_norm: bool                   # norm -> sublayer -> + residual; else sublayer -> + residual -> norm
    word_embeddings: str
    embedding_norm: str | None
    token_type_embeddings: str | None
    layers: str
    attention: str                   # the attention module of a layer
    qkv: tuple[str, ...]             # ("Wqkv",): one fused Linear; else (q, k, v) Linears
    attention_output: str
    attention_norm: str              # the norm before (pre-norm) or after (post-norm) the attention sublayer
    mlp: str
    mlp_names: tuple[str, ...]       # (fused, out) or (gate, up, out): GatedMLP's names
    mlp_norm: str
    final_norm: str | None
    first_attention_norm: bool = True  # False: layer 0 has no attention norm (ModernBERT: the embeddings' norm)

    def fused_modules(self) -> dict[str, str]:
        """{dotted module suffix under a layer: what it fuses} for the fused projections."""
        fused = {}
        if len(self.qkv) == 1:
            fused[f"{self.attention}.{self.qkv[0]}"] = "qkv"
        if len(self.mlp_names) == 2:
            fused[f"{self.mlp}.{self.mlp_names[0]}"] = "glu"
        return fused


MODERNBERT = RotaryLayout(
    norm="layer", pre_norm=True, word_embeddings="embeddings.tok_embeddings", embedding_norm="embeddings.norm",
    token_type_embeddings=None, layers="layers", attention="attn", qkv=("Wqkv",), attention_output="Wo",
    attention_norm="attn_norm", mlp="mlp", mlp_names=("Wi", "Wo"), mlp_norm="mlp_norm", final_norm="final_norm",
    first_attention_norm=False)

EUROBERT = RotaryLayout(
    norm="rms", pre_norm=True, word_embeddings="embed_tokens", embedding_norm=None, token_type_embeddings=None,
    layers="layers", attention="self_attn", qkv=("q_proj", "k_proj", "v_proj"), attention_output="o_proj",
    attention_norm="input_layernorm", mlp="mlp", mlp_names=("gate_proj", "up_proj", "down_proj"),
    mlp_norm="post_attention_layernorm", final_norm="norm")

GTE = RotaryLayout(
    norm="layer", pre_norm=False, word_embeddings="embeddings.word_embeddings", embedding_norm="embeddings.LayerNorm",
    token_type_embeddings="embeddings.token_type_embeddings", layers="layers", attention="self_attn",
    qkv=("q_proj", "k_proj", "v_proj"), attention_output="o_proj", attention_norm="post_attention_layernorm",
    mlp="mlp", mlp_names=("gate_proj", "up_proj", "down_proj"), mlp_norm="post_mlp_layernorm", final_norm=None)


# ---------------------------------------------------------------------------------------------- config.json

def _int(hf: dict, key: str, default=None) -> int:
    value = hf.get(key, default)
    if value is None:
        raise ValueError(f"{key} is missing")
    return int(value)


def _pad_id(hf: dict) -> int:
    return int(hf["pad_token_id"]) if hf.get("pad_token_id") is not None else 0


def _rope(params: dict | None, theta_default: float) -> tuple[float, float]:
    """(theta, linear factor) of one RoPE parameter dict (new `rope_parameters` or old `rope_scaling` form)."""
    params = dict(params or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    theta = float(params.get("rope_theta", theta_default))
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta, float(params["factor"])
    raise ValueError(f"rope_type {rope_type!r} is not supported (jaxft builds 'default' and 'linear' RoPE)")


def _single_rope(hf: dict, theta_default: float) -> tuple[float, float]:
    if isinstance(hf.get("rope_parameters"), dict):
        return _rope(hf["rope_parameters"], theta_default)
    return _rope({**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", theta_default)},
                 theta_default)


@dataclasses.dataclass(frozen=True)
class RotarySettings:
    """What a rotary family's modules need beyond the BERT fields of EncoderConfig (its `rotary` field)."""

    num_kv_heads: int                   # k/v heads (< num_heads: grouped-query attention)
    head_dim: int
    norm_bias: bool                     # LayerNorms with a bias (ModernBERT: norm_bias; GTE: always)
    attention_bias: bool                # q/k/v and attention output projections
    mlp_in_bias: bool                   # the gate/up (or fused Wi) projections
    mlp_out_bias: bool                  # the down (Wo) projection
    classifier_bias: bool               # ModernBERT's prediction-head dense
    decoder_bias: bool                  # the masked-LM decoder's vocabulary bias
    embedding_dropout: float
    attention_output_dropout: float     # after the attention output projection
    mlp_dropout: float                  # on act(gate) * up
    mlp_output_dropout: float           # after the down projection
    classifier_pooling: str             # ModernBERT cls | mean; EuroBERT bos | mean | late
    classifier_activation: str          # ModernBERT's prediction-head activation
    layer_windows: tuple[int, ...]      # per layer: 0 global attention, w > 0 a sliding window of w tokens
    rope_thetas: tuple[float, ...]      # per layer
    rope_factors: tuple[float, ...]     # per layer: linear position scaling (1.0: none)


def _common(hf: dict, act_key: str, eps_key: str, eps_default: float) -> dict[str, Any]:
    return dict(vocab_size=_int(hf, "vocab_size"), hidden_size=_int(hf, "hidden_size"),
                embedding_size=_int(hf, "hidden_size"), num_layers=_int(hf, "num_hidden_layers"),
                num_heads=_int(hf, "num_attention_heads"), intermediate_size=_int(hf, "intermediate_size"),
                hidden_act=str(hf.get(act_key, "gelu")),
                max_position_embeddings=_int(hf, "max_position_embeddings", 8192),
                layer_norm_eps=float(hf.get(eps_key, eps_default)), pad_token_id=_pad_id(hf))


def _head_dim(hf: dict) -> int:
    return int(hf.get("head_dim") or _int(hf, "hidden_size") // _int(hf, "num_attention_heads"))


def _modernbert_layer_types(hf: dict, layers: int) -> list[str]:
    types = hf.get("layer_types")
    if types is None:
        every = int(hf.get("global_attn_every_n_layers", 3))
        types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
        raise ValueError(f"layer_types {types!r} must name full_attention or sliding_attention for each of the "
                         f"{layers} layers")
    return list(types)


def _modernbert_ropes(hf: dict) -> dict[str, tuple[float, float]]:
    defaults = {"full_attention": float(hf.get("global_rope_theta", 160_000.0)),
                "sliding_attention": float(hf.get("local_rope_theta", 10_000.0))}
    params = hf.get("rope_parameters")
    if not isinstance(params, dict) or not {"full_attention", "sliding_attention"} & set(params):
        scaling = hf.get("rope_scaling") or {}
        return {kind: _rope({**scaling, "rope_theta": theta}, theta) for kind, theta in defaults.items()}
    return {kind: _rope(params.get(kind), theta) for kind, theta in defaults.items()}


def read_modernbert(hf: dict) -> dict[str, Any]:
    fields = _common(hf, "hidden_activation", "norm_eps", 1e-5)
    types = _modernbert_layer_types(hf, fields["num_layers"])
    ropes = _modernbert_ropes(hf)
    window = _int(hf, "local_attention", 128)
    classifier_dropout = float(hf.get("classifier_dropout") or 0.0)
    attention_dropout = float(hf.get("attention_dropout", 0.0))
    mlp_bias = bool(hf.get("mlp_bias", False))
    rotary = RotarySettings(
        num_kv_heads=fields["num_heads"], head_dim=_head_dim(hf), norm_bias=bool(hf.get("norm_bias", False)),
        attention_bias=bool(hf.get("attention_bias", False)), mlp_in_bias=mlp_bias, mlp_out_bias=mlp_bias,
        classifier_bias=bool(hf.get("classifier_bias", False)), decoder_bias=bool(hf.get("decoder_bias", True)),
        embedding_dropout=float(hf.get("embedding_dropout", 0.0)), attention_output_dropout=attention_dropout,
        mlp_dropout=float(hf.get("mlp_dropout", 0.0)), mlp_output_dropout=0.0,
        classifier_pooling=_choice(hf, "classifier_pooling", "cls", ("cls", "mean")),
        classifier_activation=str(hf.get("classifier_activation", "gelu")),
        layer_windows=tuple(window if kind == "sliding_attention" else 0 for kind in types),
        rope_thetas=tuple(ropes[kind][0] for kind in types), rope_factors=tuple(ropes[kind][1] for kind in types))
    return _validated(dict(fields, type_vocab_size=0, hidden_dropout=rotary.mlp_dropout,
                           attention_dropout=attention_dropout, classifier_dropout=classifier_dropout,
                           sequence_dropout=classifier_dropout, qa_dropout=classifier_dropout, rotary=rotary))


def read_eurobert(hf: dict) -> dict[str, Any]:
    fields = _common(hf, "hidden_act", "rms_norm_eps", 1e-5)
    theta, factor = _single_rope(hf, 10_000.0)
    layers = fields["num_layers"]
    mlp_bias = bool(hf.get("mlp_bias", False))
    pooling_key = "classifier_pooling" if "classifier_pooling" in hf else "clf_pooling"
    rotary = RotarySettings(
        num_kv_heads=int(hf.get("num_key_value_heads") or fields["num_heads"]), head_dim=_head_dim(hf),
        norm_bias=False, attention_bias=bool(hf.get("attention_bias", False)), mlp_in_bias=mlp_bias,
        mlp_out_bias=mlp_bias, classifier_bias=True, decoder_bias=mlp_bias, embedding_dropout=0.0,
        attention_output_dropout=0.0, mlp_dropout=0.0, mlp_output_dropout=0.0,
        classifier_pooling=_choice(hf, pooling_key, "late", ("bos", "mean", "late")), classifier_activation="gelu",
        layer_windows=(0,) * layers, rope_thetas=(theta,) * layers, rope_factors=(factor,) * layers)
    return _validated(dict(fields, type_vocab_size=0, hidden_dropout=0.0,
                           attention_dropout=float(hf.get("attention_dropout", 0.0)), classifier_dropout=0.0,
                           sequence_dropout=0.0, qa_dropout=0.0, rotary=rotary))


def read_gte(hf: dict) -> dict[str, Any]:
    fields = _common(hf, "hidden_act", "layer_norm_eps", 1e-12)
    theta, factor = _single_rope(hf, 160_000.0)
    layers = fields["num_layers"]
    hidden_dropout = float(hf.get("hidden_dropout_prob", 0.1))
    classifier_dropout = hf.get("classifier_dropout")
    classifier_dropout = hidden_dropout if classifier_dropout is None else float(classifier_dropout)
    rotary = RotarySettings(
        num_kv_heads=fields["num_heads"], head_dim=_head_dim(hf), norm_bias=True, attention_bias=True,
        mlp_in_bias=False, mlp_out_bias=True, classifier_bias=True, decoder_bias=True,
        embedding_dropout=hidden_dropout, attention_output_dropout=hidden_dropout, mlp_dropout=hidden_dropout,
        mlp_output_dropout=hidden_dropout, classifier_pooling="cls", classifier_activation="gelu",
        layer_windows=(0,) * layers, rope_thetas=(theta,) * layers, rope_factors=(factor,) * layers)
    return _validated(dict(fields, type_vocab_size=int(hf.get("type_vocab_size", 1) or 0),
                           hidden_dropout=hidden_dropout,
                           attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.0)),
                           classifier_dropout=classifier_dropout, sequence_dropout=classifier_dropout,
                           qa_dropout=classifier_dropout, rotary=rotary))


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields, or ValueError for settings the modules cannot build (config.py adds the file name)."""
    rotary = fields["rotary"]
    heads = fields["num_heads"]
    if heads % rotary.num_kv_heads:
        raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {rotary.num_kv_heads}")
    if rotary.head_dim % 2:
        raise ValueError(f"head_dim {rotary.head_dim} is odd; rotary embeddings rotate pairs of dimensions")
    if any(w < 0 for w in rotary.layer_windows):
        raise ValueError(f"local_attention must be >= 0, got {min(rotary.layer_windows)}")
    if rotary.classifier_activation not in ACTIVATIONS:
        raise ValueError(f"classifier_activation {rotary.classifier_activation!r} is not supported "
                         f"({', '.join(ACTIVATIONS)})")
    return fields


def _choice(hf: dict, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(hf.get(key) or default)
    if value not in choices:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(choices)}")
    return value


# ---------------------------------------------------------------------------------------------- GTE's old names

_GTE_RENAMES = ((r"^new\.", "gte."), (r"(^|\.)encoder\.layer\.", r"\1layers."),
                (r"\.attention\.o_proj\.", ".self_attn.o_proj."), (r"\.attn_ln\.", ".post_attention_layernorm."),
                (r"\.mlp_ln\.", ".post_mlp_layernorm."), (r"(^|\.)lm_head\.norm\.", r"\1lm_head.layer_norm."))
_GTE_FUSED = ((re.compile(r"^(.*)\.attention\.qkv_proj\.(weight|bias)$"), ("self_attn.q_proj", "self_attn.k_proj",
                                                                          "self_attn.v_proj")),
              (re.compile(r"^(.*)\.mlp\.up_gate_proj\.(weight|bias)$"), ("mlp.up_proj", "mlp.gate_proj")))


def gte_checkpoint_names(checkpoint: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A GTE checkpoint in the original remote-code names ("new.encoder.layer.N.attention.qkv_proj", ...) ->
    transformers' Gte names (the renames and splits transformers' conversion mapping applies: qkv_proj into
    q/k/v, up_gate_proj into up then gate). Keys already in Gte names pass through unchanged."""
    renamed = {}
    for key, value in checkpoint.items():
        for pattern, replacement in _GTE_RENAMES:
            key = re.sub(pattern, replacement, key)
        for pattern, targets in _GTE_FUSED:
            match = pattern.match(key)
            if match:
                for target, chunk in zip(targets, np.split(value, len(targets), axis=0)):
                    renamed[f"{match[1]}.{target}.{match[2]}"] = chunk
                break
        else:
            renamed[key] = value
    return renamed
