"""Bucketed relative positions for the families whose attention scores carry them: DeBERTa-v2's
log-bucketed distances (models/deberta.py) and MPNet's T5-style bias buckets (models/mpnet.py).

A bucket depends only on the distance between two positions, so each family's bucket function is evaluated
once per row length on every distance -(T-1) .. T-1, in numpy at trace time (`distance_table`), and the
[T, T] (padded rows) or [B, T, T] (packed rows) bucket index is a lookup in that table (`pair_buckets`).
The bucket functions repeat transformers' float32 arithmetic (`make_log_bucket_position`,
`MPNetEncoder.relative_position_bucket`): tests/test_deberta.py and tests/test_mpnet.py check them equal to
the PyTorch functions on every distance up to 8192 for the configurations used there and in released
checkpoints.

Packed rows: distances come from each token's own position id, which restarts at every packed example, so an
example's relative positions are those it has alone in a row; pairs across examples are masked by segment
ids anyway. Distances beyond the row length (only between different examples) are clipped to the table.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def deberta_log_buckets(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' make_log_bucket_position: distances within bucket_size / 2 stay exact, larger ones
    grow logarithmically up to max_position (sign kept)."""
    relative = np.asarray(relative, np.int64)
    sign = np.sign(relative)
    mid = bucket_size // 2
    magnitude = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) in the exact region, discarded below
        log_position = np.ceil(np.log(magnitude.astype(np.float32) / np.float32(mid))
                               / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + np.float32(mid)
    return np.where(magnitude <= mid, relative.astype(np.float32), log_position * sign).astype(np.int64)


def deberta_buckets(relative: np.ndarray, position_buckets: int, max_relative_positions: int) -> np.ndarray:
    """DeBERTa's relative position of (query - key): log buckets when both settings are > 0, else the
    distance itself (transformers' build_relative_position)."""
    if position_buckets > 0 and max_relative_positions > 0:
        return deberta_log_buckets(relative, position_buckets, max_relative_positions)
    return np.asarray(relative, np.int64)


def mpnet_buckets(relative: np.ndarray, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """transformers' MPNetEncoder.relative_position_bucket of (key - query): half the buckets per direction,
    exact up to a quarter of num_buckets, then logarithmic up to max_distance."""
    n = -np.asarray(relative, np.int64)
    half = num_buckets // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) in the exact region, discarded below
        scaled = (np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
                  * np.float32(half - max_exact))
        large = max_exact + np.where(n >= max_exact, scaled, 0).astype(np.int64)
    return bucket + np.where(n < max_exact, n, np.minimum(large, half - 1))


def distance_table(length: int, bucket_of) -> np.ndarray:
    """int32 [2 * length - 1]: bucket_of(d) at index d + length - 1, for d in -(length - 1) .. length - 1."""
    return np.asarray(bucket_of(np.arange(-(length - 1), length)), np.int32)


def pair_buckets(table: np.ndarray, length: int, position_ids=None):
    """Bucket of (position of query i - position of key j): numpy [T, T] for rows numbered 0..T-1 (a
    constant), or [B, T, T] from per-token position ids [B, T] (packed rows)."""
    if position_ids is None:
        steps = np.arange(length)
        return table[steps[:, None] - steps[None, :] + length - 1]
    distance = position_ids[:, :, None].astype(jnp.int32) - position_ids[:, None, :].astype(jnp.int32)
    return jnp.asarray(table)[jnp.clip(distance, -(length - 1), length - 1) + length - 1]
