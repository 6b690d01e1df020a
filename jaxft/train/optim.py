"""AdamW with warmup + linear/cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import math
import re

import jax
import optax

NO_DECAY_LEAVES = ("bias", "scale")  # biases and LayerNorm (incl. the embeddings' LayerNorm) scales


def decays(path: str) -> bool:
    """Hugging Face's rule: no weight decay on biases and LayerNorm weights."""
    parts = path.split(".")
    return parts[-1] not in NO_DECAY_LEAVES and "LayerNorm" not in parts


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    peak = optim.learning_rate
    warmup = warmup_steps(total_steps, optim.warmup_ratio)
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "linear":
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    elif optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(optim, total_steps: int, params: dict) -> optax.GradientTransformation:
    mask = {path: decays(path) for path in params}
    adamw = optax.adamw(learning_rate_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=optim.weight_decay, mask=mask, mu_dtype=optim.moments_dtype)
    factors = update_factors(params, getattr(optim, "layer_decay", 1.0), getattr(optim, "loraplus_lr_ratio", 1.0),
                             getattr(optim, "head_lr_ratio", 1.0))
    if any(f != 1.0 for f in factors.values()):
        adamw = optax.chain(adamw, scale_updates(factors))
    if optim.clip_norm > 0:
        return optax.chain(clip_by_global_norm(optim.clip_norm), adamw)
    return adamw


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm's rule; `tx.update(..., grad_norm=norm)` passes a norm the step already
    computed (its non-finite check needs one), which saves a second pass over every gradient."""
    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        within = norm < max_norm
        return jax.tree.map(lambda g: jax.lax.select(within, g, (g / norm.astype(g.dtype)) * max_norm),
                            updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


# ---------------------------------------------------------------------------------------------- layer-wise LR decay

# "encoder.layer.N." (BERT-style), "transformer.layer.N." (DistilBERT), "layers.N." (the rotary families)
_LAYER = re.compile(r"(?:^|\.)(?:(?:encoder|transformer)\.layer|layers)\.(\d+)\.")
# The rotary families' embeddings not under ".embeddings" (EuroBERT), and the final norm after the last layer
_ROTARY_EMBEDDINGS = re.compile(r"(?:^|\.)embed_tokens\.")
_FINAL_NORM = re.compile(r"^(?:model\.)?(?:final_norm|norm)\.")
# Relative-position tables every layer reads (DeBERTa's rel_embeddings and their LayerNorm, MPNet's bias):
# they sit with the embeddings, at the bottom. DeBERTa-v2's convolution runs with the first layer.
_SHARED_BY_LAYERS = re.compile(r"(?:^|\.)encoder\.(?:rel_embeddings|LayerNorm|relative_attention_bias)\.")
_FIRST_LAYER_CONV = re.compile(r"(?:^|\.)encoder\.conv\.")


def layer_depth(path: str, num_layers: int) -> int:
    """0 for the embeddings (and the relative-position tables), i + 1 for encoder layer i (DeBERTa's
    convolution: 1), num_layers + 1 for everything above (pooler, head)."""
    match = _LAYER.search(path)
    if match:
        return int(match.group(1)) + 1
    if _FIRST_LAYER_CONV.search(path):
        return 1
    if _ROTARY_EMBEDDINGS.search(path):
        return 0
    if _FINAL_NORM.search(path):
        return num_layers
    return 0 if ".embeddings" in f".{path}" or _SHARED_BY_LAYERS.search(path) else num_layers + 1


def encoder_depth(params: dict) -> int:
    """Number of encoder layers, read from the parameter paths."""
    depths = [int(m.group(1)) for m in (_LAYER.search(p) for p in params) if m]
    return max(depths) + 1 if depths else 0


def update_factors(params: dict, layer_decay: float, loraplus_lr_ratio: float,
                   head_lr_ratio: float = 1.0) -> dict[str, float]:
    """Per-parameter learning-rate multipliers: layer-wise decay (layer_decay ** (num_layers + 1 - depth), as
    in ELECTRA/BEiT), times LoRA+'s ratio on every LoRA B matrix (Hayou et al. 2024; peft's
    loraplus_lr_ratio: B learns ratio x faster than A), times head_lr_ratio on everything above the encoder
    (pooler and task head)."""
    num_layers = encoder_depth(params)

    def factor(path: str) -> float:
        depth = layer_depth(path, num_layers)
        return (layer_decay ** (num_layers + 1 - depth)
                * (loraplus_lr_ratio if path.endswith(".lora_b") else 1.0)
                * (head_lr_ratio if depth == num_layers + 1 else 1.0))

    return {path: factor(path) for path in params}


def scale_updates(factors: dict[str, float]) -> optax.GradientTransformation:
    """Multiply each parameter's update (AdamW's lr-scaled step, decoupled weight decay included) by its
    factor: the same as a per-parameter learning rate."""

    def init(_):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return {path: u * factors[path] for path, u in updates.items()}, state

    return optax.GradientTransformation(init, update)
