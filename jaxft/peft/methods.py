"""PEFT methods by config: which modules get wrapped and which parameters are trainable.

`apply_peft(model, peft_config, seed=...)` changes the model in place (wraps the targeted layers) and returns
the trainable filter for `Trainer(..., trainable=...)` / `split_model`. Everything the filter leaves out is
frozen: it is passed to the train step as a separate argument, gets no gradient and no optimizer state.

Methods (config `peft.method`):
  none      full fine-tuning (optionally minus `peft.freeze`)
  lora      LoRA on `peft.target_modules` (rank, alpha, dropout, rslora) + `peft.modules_to_save`
  dora      LoRA with DoRA's magnitude vectors
  bitfit    every bias (attention, dense and LayerNorm biases) + the head
  houlsby   bottleneck adapters after the attention output and the feed-forward output of every layer
  pfeiffer  one bottleneck adapter after the feed-forward output of every layer
  prefix    learned key/value prefixes (`peft.prefix_length` virtual tokens) in every attention layer

Module rules (`peft.target_modules`, `peft.modules_to_save`) are regexes over our Hugging Face style module
paths ("bert.encoder.layer.3.attention.self.query"); a rule matches when it matches the end of the path
at a dot: "query|value", "attention\\.self\\.(query|key|value)", "layer\\.(10|11)\\..*query".
`peft.freeze` is a regex searched in parameter paths ("bert.embeddings|layer\\.[0-3]\\.").
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxft.models.attention import masked_attention
from jaxft.models.deberta import DisentangledSelfAttention
from jaxft.models.encoder import Rows, SelfAttention
from jaxft.models.paths import dotted, get_module, set_module
from jaxft.models.rotary_encoder import RotaryAttention, RotaryEncoder
from jaxft.peft.lora import AdapterLinear, LoraLinear, PeftParam, kernel_axes, linear_modules, peft_param

METHODS = ("none", "lora", "dora", "bitfit", "houlsby", "pfeiffer", "prefix")
LORA_METHODS = ("lora", "dora")
ADAPTER_TARGETS = {"houlsby": r"attention\.output\.dense|layer\.\d+\.output\.dense",
                   "pfeiffer": r"layer\.\d+\.output\.dense"}
ADAPTER_ACTIVATION = {"houlsby": "swish", "pfeiffer": "relu"}
# peft's default LoRA targets for the families whose query/value layers are not named "query"/"value" (peft's
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); the default peft.target_modules means these there.
FAMILY_LORA_TARGETS = {"deberta-v2": "query_proj|value_proj"}
# The rotary families (peft has no mapping for them; jaxft's choice): ModernBERT's fused q/k/v projection and
# its attention and MLP output projections (both named Wo); EuroBERT and GTE as peft's Llama, q_proj|v_proj.
FAMILY_LORA_TARGETS.update({"modernbert": "Wqkv|Wo", "eurobert": "q_proj|v_proj", "gte": "q_proj|v_proj"})
# Bottleneck adapters of the families whose attention/MLP output projections have other names than BERT's.
FAMILY_ADAPTER_TARGETS = {
    "modernbert": {"houlsby": r"layers\.\d+\.(attn|mlp)\.Wo", "pfeiffer": r"layers\.\d+\.mlp\.Wo"},
    "eurobert": {"houlsby": r"layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)", "pfeiffer": r"layers\.\d+\.mlp\.down_proj"},
    "gte": {"houlsby": r"layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)", "pfeiffer": r"layers\.\d+\.mlp\.down_proj"},
}


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    method: str = "none"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = "query|value"
    modules_to_save: str = "auto"     # "auto": the task head; "": none; else a module rule
    rslora: bool = False
    adapter_size: int = 64
    adapter_activation: str = ""      # "": the method's own (houlsby swish, pfeiffer relu)
    prefix_length: int = 16
    freeze: str = ""                  # regex searched in parameter paths: frozen whatever the method

    @classmethod
    def from_any(cls, value) -> "PeftConfig":
        if isinstance(value, PeftConfig):
            return value
        items = dict(value.items()) if hasattr(value, "items") else dict(value)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in items.items() if k in names})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"peft.method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method in LORA_METHODS and self.rank <= 0:
            raise ValueError(f"peft.rank must be > 0, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"peft.dropout must be in [0, 1), got {self.dropout}")
        for key in ("target_modules", "modules_to_save", "freeze"):
            value = getattr(self, key)
            if value and value != "auto":
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(f"peft.{key} {value!r} is not a valid regex ({err})") from None


def module_rule(pattern: str):
    """A module rule as a predicate on dotted module paths (matches the end of the path at a dot)."""
    compiled = re.compile(rf"(?:^|\.)(?:{pattern})$")
    return lambda path: bool(compiled.search(path))


class PathIn:
    """nnx filter: variables whose dotted path is in a fixed set."""

    def __init__(self, paths):
        self.paths = frozenset(paths)

    def __call__(self, path, value) -> bool:
        return dotted(path) in self.paths

    def __repr__(self) -> str:
        return f"PathIn({len(self.paths)} paths)"


def param_paths(model: nnx.Module, kind=nnx.Param) -> list[str]:
    return [dotted(p) for p, _ in nnx.to_flat_state(nnx.state(model, kind))]


def head_modules(model: nnx.Module) -> list[str]:
    """Top-level modules outside the backbone ("classifier", "qa_outputs", "pre_classifier")."""
    prefix = getattr(model, "prefix", None)
    if prefix is None:
        return []
    return sorted({path.split(".")[0] for path in param_paths(model) if path.split(".")[0] != prefix})


def saved_module_names(model: nnx.Module, rule: str) -> list[str]:
    if rule == "auto":
        return head_modules(model)
    if not rule:
        return []
    matches = module_rule(rule)
    names = set()
    for path in param_paths(model):
        parts = path.split(".")
        for i in range(1, len(parts)):
            if matches(".".join(parts[:i])):
                names.add(".".join(parts[:i]))
                break
    return sorted(names)


def params_under(model: nnx.Module, modules: list[str]) -> list[str]:
    return [p for p in param_paths(model) if any(p.startswith(m + ".") for m in modules)]


# ---------------------------------------------------------------------------------------------- prefix tuning

def _prefixed_attention(module, q, k, v, rows: Rows, bias, scale=None):
    """Attention of q over the module's learned prefix keys/values followed by the row's own. Prefixes have no
    position: a relative-position score bias [.., T, T] gets zeros in their columns."""
    batch, length = q.shape[0], module.prefix_key.shape[0]

    def prefix(param, like):
        p = module._heads(param[...].astype(like.dtype))
        return jnp.concatenate([jnp.broadcast_to(p, (batch, *p.shape)), like], axis=1)

    k, v = prefix(module.prefix_key, k), prefix(module.prefix_value, v)
    segments = rows.segment_ids
    if rows.packed:
        real_keys = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    else:
        real_keys = jnp.broadcast_to((segments > 0)[:, None, :], (*segments.shape, segments.shape[1]))
    allowed = jnp.concatenate([jnp.ones((*segments.shape, length), bool), real_keys], axis=-1)  # [B, T, P+T]
    if bias is not None:
        bias = jnp.asarray(bias, jnp.float32)
        bias = jnp.concatenate([jnp.zeros((*bias.shape[:-1], length), jnp.float32), bias], axis=-1)
    return masked_attention(q, k, v, allowed[:, None], bias=bias, scale=scale, **module.dropout_arguments())


class PrefixSelfAttention(SelfAttention):
    """SelfAttention whose keys and values start with `length` learned vectors every query may attend to."""

    def __init__(self, base: SelfAttention, prefix_key: jax.Array, prefix_value: jax.Array):
        self.num_heads = base.num_heads
        self.query, self.key, self.value, self.dropout = base.query, base.key, base.value, base.dropout
        axes = (None, kernel_axes(base.key)[1])
        self.prefix_key = peft_param(prefix_key, axes)
        self.prefix_value = peft_param(prefix_value, axes)

    def __call__(self, x, rows: Rows, bias=None):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        context = _prefixed_attention(self, q, k, v, rows, bias)
        return context.reshape(*context.shape[:-2], -1)


class PrefixDisentangledSelfAttention(DisentangledSelfAttention):
    """DeBERTa's attention with learned prefix keys/values: content scores only for the prefixes."""

    def __init__(self, base: DisentangledSelfAttention, prefix_key: jax.Array, prefix_value: jax.Array):
        for name, value in vars(base).items():
            if not name.startswith("_"):  # NNX's own bookkeeping stays this module's
                setattr(self, name, value)
        axes = (None, kernel_axes(base.key_proj)[1])
        self.prefix_key = peft_param(prefix_key, axes)
        self.prefix_value = peft_param(prefix_value, axes)

    def attend(self, q, k, v, rows: Rows, bias):
        return _prefixed_attention(self, q, k, v, rows, bias, self.scale)


# attention module type -> (its prefix version, the names of its key and value projections)
PREFIX_VERSIONS = {SelfAttention: (PrefixSelfAttention, "key", "value"),
                   DisentangledSelfAttention: (PrefixDisentangledSelfAttention, "key_proj", "value_proj")}


def _add_prefixes(model: nnx.Module, length: int, key: jax.Array) -> list[str]:
    """Every SelfAttention -> PrefixSelfAttention; prefixes start as the layer's own keys/values of the
    (normalised) embeddings of random vocabulary tokens, so they begin at the scale of real ones."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    if isinstance(backbone, RotaryEncoder):
        return _add_rotary_prefixes(model, backbone, length, key)
    embeddings = backbone.embeddings
    ids = jax.random.randint(key, (length,), 0, backbone.config.vocab_size)
    words = embeddings.word_embeddings(ids)
    if hasattr(embeddings, "embed_proj"):  # DeBERTa projects to the hidden width before its LayerNorm
        words = embeddings.embed_proj(words)
    hidden = embeddings.LayerNorm(words)
    if hasattr(backbone, "embeddings_project"):
        hidden = backbone.embeddings_project(hidden)
    hidden = hidden.astype(jnp.float32)
    wrapped = []
    for path, module in list(nnx.iter_modules(model)):
        if type(module) in PREFIX_VERSIONS:
            version, key_name, value_name = PREFIX_VERSIONS[type(module)]
            new = version(module, getattr(module, key_name)(hidden).astype(jnp.float32),
                          getattr(module, value_name)(hidden).astype(jnp.float32))
            set_module(model, tuple(path), new)
            wrapped.append(dotted(path))
    return wrapped


class PrefixRotaryAttention(RotaryAttention):
    """A rotary family's attention with learned prefix keys/values (no position: they are not rotated, and a
    sliding layer's window does not hide them). Grouped-query k/v heads are repeated to the query heads."""

    def __init__(self, base: RotaryAttention, prefix_key: jax.Array, prefix_value: jax.Array):
        for name, value in vars(base).items():
            if not name.startswith("_"):  # NNX's own bookkeeping stays this module's
                setattr(self, name, value)
        axes = (None, "heads")
        self.prefix_key = peft_param(prefix_key, axes)
        self.prefix_value = peft_param(prefix_value, axes)

    def _heads(self, x):
        """A prefix [P, K * H] -> [P, N, H] (k/v heads repeated for grouped-query attention)."""
        return self._all_heads(x.reshape(*x.shape[:-1], self.num_kv_heads, self.head_dim), axis=-2)

    def _all_heads(self, x, axis):
        return jnp.repeat(x, self.num_heads // self.num_kv_heads, axis=axis)

    def attend(self, q, k, v, rows: Rows):
        bias = None
        if self.window is not None:  # the window as a score bias on the real keys (prefix columns get 0)
            offset = jnp.arange(q.shape[1])[None, :] - jnp.arange(q.shape[1])[:, None]
            inside = (offset >= -self.window[0]) & (offset <= self.window[1])
            bias = jnp.where(inside, 0.0, -1e30)[None, None]
        return _prefixed_attention(self, q, self._all_heads(k, 2), self._all_heads(v, 2), rows, bias)


def _add_rotary_prefixes(model: nnx.Module, backbone: RotaryEncoder, length: int, key: jax.Array) -> list[str]:
    """Every RotaryAttention -> PrefixRotaryAttention; prefixes start as the layer's own (unrotated) keys and
    values of the embeddings of random vocabulary tokens, through the layer's attention norm (pre-norm)."""
    ids = jax.random.randint(key, (1, length), 0, backbone.config.vocab_size)
    hidden = backbone.embed(ids)
    layout = backbone.config.family.layout
    targets = [(tuple(path), module) for path, module in nnx.iter_modules(model) if type(module) is RotaryAttention]
    for path, attention in targets:
        layer = get_module(model, path[:-1])
        pre_normed = layout.pre_norm and layer.has_attention_norm
        _, k, v = attention.project(getattr(layer, layout.attention_norm)(hidden) if pre_normed else hidden)
        flat = lambda x: x[0].reshape(length, -1).astype(jnp.float32)
        set_module(model, path, PrefixRotaryAttention(attention, flat(k), flat(v)))
    return [dotted(path) for path, _ in targets]


# ---------------------------------------------------------------------------------------------- apply

def lora_target_rule(cfg: PeftConfig, model: nnx.Module) -> str:
    """peft.target_modules; its default means the family's own query/value layers (FAMILY_LORA_TARGETS)."""
    config = getattr(model, "config", None)
    if cfg.target_modules != PeftConfig.target_modules or config is None:
        return cfg.target_modules
    return FAMILY_LORA_TARGETS.get(config.model_type, cfg.target_modules)


def adapter_target_rule(method: str, model: nnx.Module) -> str:
    """Where houlsby / pfeiffer adapters go: after the attention and MLP output projections."""
    config = getattr(model, "config", None)
    family_rules = FAMILY_ADAPTER_TARGETS.get(config.model_type, {}) if config is not None else {}
    return family_rules.get(method, ADAPTER_TARGETS[method])


def wrap_linear_layers(model: nnx.Module, rule: str, make, exclude=()) -> list[str]:
    matches = module_rule(rule)
    targets = [(path, layer) for path, layer in linear_modules(model)
               if matches(dotted(path)) and not any(dotted(path).startswith(m + ".") or dotted(path) == m
                                                     for m in exclude)]
    for path, layer in targets:
        set_module(model, path, make(layer))
    return [dotted(path) for path, _ in targets]


def apply_peft(model: nnx.Module, peft_config, *, seed: int = 0):
    """Wrap the model's layers for `peft_config.method` (in place) and return the trainable filter."""
    cfg = PeftConfig.from_any(peft_config)
    cfg.validate()
    cfg = dataclasses.replace(cfg, target_modules=lora_target_rule(cfg, model))
    saved = saved_module_names(model, cfg.modules_to_save) if cfg.method != "none" else []
    rngs = nnx.Rngs(params=seed + 1000, dropout=seed + 2000)
    wrapped: list[str] = []
    if cfg.method in LORA_METHODS:
        def make(layer):
            return LoraLinear(layer, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, rslora=cfg.rslora,
                              dora=cfg.method == "dora", rngs=rngs)
        wrapped = wrap_linear_layers(model, cfg.target_modules, make, exclude=saved)
    elif cfg.method in ADAPTER_TARGETS:
        activation = cfg.adapter_activation or ADAPTER_ACTIVATION[cfg.method]
        wrapped = wrap_linear_layers(
            model, adapter_target_rule(cfg.method, model),
            lambda layer: AdapterLinear(layer, size=cfg.adapter_size, activation=activation, rngs=rngs),
            exclude=saved)
    elif cfg.method == "prefix":
        if cfg.prefix_length <= 0:
            raise ValueError(f"peft.prefix_length must be > 0, got {cfg.prefix_length}")
        wrapped = _add_prefixes(model, cfg.prefix_length, rngs.params())
    if cfg.method in LORA_METHODS + tuple(ADAPTER_TARGETS) + ("prefix",) and not wrapped:
        raise ValueError(f"peft.method={cfg.method}: no module matched (peft.target_modules="
                         f"{cfg.target_modules!r}); module paths look like "
                         f"{[dotted(p) for p, _ in linear_modules(model)][:3]}")

    if cfg.method == "none":
        trainable = nnx.Param
    elif cfg.method == "bitfit":
        biases = [p for p in param_paths(model) if p.endswith(".bias")]
        trainable = PathIn(biases + params_under(model, saved))
    else:
        trainable = nnx.Any(PeftParam, PathIn(params_under(model, saved)))
    if cfg.freeze:
        frozen = [p for p in param_paths(model) if re.search(cfg.freeze, p)]
        trainable = nnx.All(trainable, nnx.Not(PathIn(frozen)))
    model.peft_json = json.dumps({**dataclasses.asdict(cfg), "wrapped": wrapped, "saved_modules": saved})
    return trainable


def peft_info(model: nnx.Module) -> dict[str, Any] | None:
    """What apply_peft recorded on the model (None for a model it never touched)."""
    text = getattr(model, "peft_json", None)
    return json.loads(text) if text else None


def count_params(model: nnx.Module, trainable) -> tuple[int, int]:
    """(trainable, total) parameter counts under a trainable filter."""
    size = lambda state: sum(int(math.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state))
    train = size(nnx.state(model, trainable))
    return train, train + size(nnx.state(model, nnx.All(nnx.Param, nnx.Not(trainable))))


__all__ = ["METHODS", "PeftConfig", "PrefixSelfAttention", "apply_peft", "peft_info", "count_params",
           "module_rule", "head_modules"]
