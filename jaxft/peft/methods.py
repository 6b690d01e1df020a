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
from jaxft.models.encoder import Rows, SelfAttention
from jaxft.models.paths import dotted, set_module
from jaxft.peft.lora import AdapterLinear, LoraLinear, PeftParam, kernel_axes, linear_modules, peft_param

METHODS = ("none", "lora", "dora", "bitfit", "houlsby", "pfeiffer", "prefix")
LORA_METHODS = ("lora", "dora")
ADAPTER_TARGETS = {"houlsby": r"attention\.output\.dense|layer\.\d+\.output\.dense",
                   "pfeiffer": r"layer\.\d+\.output\.dense"}
ADAPTER_ACTIVATION = {"houlsby": "swish", "pfeiffer": "relu"}


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

class PrefixSelfAttention(SelfAttention):
    """SelfAttention whose keys and values start with `length` learned vectors every query may attend to."""

    def __init__(self, base: SelfAttention, prefix_key: jax.Array, prefix_value: jax.Array):
        self.num_heads = base.num_heads
        self.query, self.key, self.value, self.dropout = base.query, base.key, base.value, base.dropout
        axes = (None, kernel_axes(base.key)[1])
        self.prefix_key = peft_param(prefix_key, axes)
        self.prefix_value = peft_param(prefix_value, axes)

    def __call__(self, x, rows: Rows):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        batch, length = x.shape[0], self.prefix_key.shape[0]

        def prefix(param, like):
            p = self._heads(param[...].astype(like.dtype))
            return jnp.concatenate([jnp.broadcast_to(p, (batch, *p.shape)), like], axis=1)

        k, v = prefix(self.prefix_key, k), prefix(self.prefix_value, v)
        segments = rows.segment_ids
        if rows.packed:
            real_keys = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
        else:
            real_keys = jnp.broadcast_to((segments > 0)[:, None, :], (*segments.shape, segments.shape[1]))
        allowed = jnp.concatenate([jnp.ones((*segments.shape, length), bool), real_keys], axis=-1)  # [B, T, P+T]
        context = masked_attention(q, k, v, allowed[:, None], **self.dropout_arguments())
        return context.reshape(*context.shape[:-2], -1)


def _add_prefixes(model: nnx.Module, length: int, key: jax.Array) -> list[str]:
    """Every SelfAttention -> PrefixSelfAttention; prefixes start as the layer's own keys/values of the
    (normalised) embeddings of random vocabulary tokens, so they begin at the scale of real ones."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    embeddings = backbone.embeddings
    ids = jax.random.randint(key, (length,), 0, backbone.config.vocab_size)
    hidden = embeddings.LayerNorm(embeddings.word_embeddings(ids))
    if hasattr(backbone, "embeddings_project"):
        hidden = backbone.embeddings_project(hidden)
    hidden = hidden.astype(jnp.float32)
    wrapped = []
    for path, module in list(nnx.iter_modules(model)):
        if type(module) is SelfAttention:
            new = PrefixSelfAttention(module, module.key(hidden).astype(jnp.float32),
                                      module.value(hidden).astype(jnp.float32))
            set_module(model, tuple(path), new)
            wrapped.append(dotted(path))
    return wrapped


# ---------------------------------------------------------------------------------------------- apply

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
            model, ADAPTER_TARGETS[cfg.method],
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
