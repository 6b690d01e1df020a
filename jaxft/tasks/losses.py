"""Classification losses with label smoothing and class weights, shared by NER (per token) and sequence
classification (per example)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.0, class_weights=None):
    """Per-example cross-entropy [...] of logits [..., K] against integer labels [...] (all valid).

    Label smoothing x: the target is (1 - x) one-hot + x uniform over the K classes (HF Trainer's
    label_smoothing_factor: (1 - x) * NLL + x * mean over classes of -log p). Class weights w scale each
    class's term, as torch's CrossEntropyLoss(weight=w, label_smoothing=x) does before its reduction:
    (1 - x) * w[y] * -log p_y + x * mean_c(w_c * -log p_c)."""
    negative_log_p = -jax.nn.log_softmax(logits, axis=-1)
    weights = jnp.ones(logits.shape[-1], negative_log_p.dtype) if class_weights is None else class_weights
    gold = jnp.take_along_axis(negative_log_p, labels[..., None], axis=-1)[..., 0] * weights[labels]
    return (1.0 - smoothing) * gold + smoothing * jnp.mean(negative_log_p * weights, axis=-1)


def smoothed_binary_cross_entropy(logits, targets, smoothing: float = 0.0, positive_weights=None):
    """Per-label binary cross-entropy [..., K] with targets y (1 - x) + x / 2 (binary label smoothing, as in
    Keras); positive weights scale the positive part, as torch's BCEWithLogitsLoss(pos_weight)."""
    soft = targets * (1.0 - smoothing) + smoothing / 2
    positive = soft if positive_weights is None else soft * positive_weights
    return -(positive * jax.nn.log_sigmoid(logits) + (1.0 - soft) * jax.nn.log_sigmoid(-logits))
