"""AdamW with warmup + linear/cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import math

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
    if optim.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw)
    return adamw
