"""Dynamic masking for masked-LM training, on device, from an explicit PRNG key.

BERT's recipe: each maskable token (or, with whole-word masking, each word) is selected with probability p
(15%); a selected token becomes [MASK] 80% of the time, a random token 10% and stays itself 10%, and the
model is trained to predict the original token at every selected position. Special tokens ([CLS], [SEP],
padding) are never selected.

Rows carry, per token, `special_mask` (1: never select) and `word_start` (1 on the first sub-token of each
word; every special token and the token after one start a word). Whole-word masking draws one number per word
at its first sub-token and gives it to the word's other sub-tokens.

Every function is a pure function of its key: the train step takes the key from an RNG stream that lives
in the checkpointed train state, so a resumed run masks exactly what an unbroken run masks; evaluation
masks its rows once with a fixed key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.data.batching import IGNORE_INDEX



class Masked(NamedTuple):
    input_ids: jax.Array   # corrupted inputs
    labels: jax.Array      # original id at selected positions, IGNORE_INDEX elsewhere


def max_predictions(length: int, probability: float) -> int:
    """Slots for masked positions in a row of `length` tokens: about twice the expected count + 8, so the cap
    almost never binds (it is 46 for 128 tokens at 15%, where the expected count is 19)."""
    return min(length, 2 * math.ceil(probability * length) + 8)


def _word_start_positions(word_start: jax.Array) -> jax.Array:
    """For each token, the index of the first sub-token of its word."""
    index = jnp.arange(word_start.shape[-1], dtype=jnp.int32)
    return jax.lax.cummax(jnp.where(word_start > 0, index, 0), axis=word_start.ndim - 1)


def _word_end_positions(word_start: jax.Array) -> jax.Array:
    """For each token, the index of the last sub-token of its word."""
    length = word_start.shape[-1]
    index = jnp.arange(length, dtype=jnp.int32)
    next_starts = jnp.concatenate([word_start[..., 1:], jnp.ones_like(word_start[..., :1])], axis=-1)
    return jax.lax.cummin(jnp.where(next_starts > 0, index, length - 1), axis=word_start.ndim - 1, reverse=True)


def select(key: jax.Array, special_mask: jax.Array, word_start: jax.Array, probability: float,
           whole_word: bool, cap: int | None = None) -> jax.Array:
    """Boolean [..., T] of positions to predict. With `cap`, at most that many per row: words are kept in
    order while their last sub-token's running count stays within the cap (whole words either way)."""
    draws = jax.random.uniform(key, special_mask.shape)
    if whole_word:
        draws = jnp.take_along_axis(draws, _word_start_positions(word_start), axis=-1)
    selected = (draws < probability) & (special_mask == 0)
    if cap is not None and not (isinstance(cap, int) and cap >= selected.shape[-1]):  # an int, or [rows, 1]
        running = jnp.cumsum(selected.astype(jnp.int32), axis=-1)
        end = _word_end_positions(word_start) if whole_word else jnp.arange(selected.shape[-1])
        selected &= jnp.take_along_axis(running, jnp.broadcast_to(end, selected.shape), axis=-1) <= cap
    return selected


def mask_tokens(key: jax.Array, input_ids: jax.Array, special_mask: jax.Array, word_start: jax.Array, *,
                mask_id: int, replacement_ids: jax.Array, probability: float = 0.15, mask_fraction: float = 0.8,
                random_fraction: float = 0.1, whole_word: bool = False, cap: int | None = None) -> Masked:
    """Select (see `select`), then per selected token: [MASK] with mask_fraction, a token drawn uniformly from
    `replacement_ids` (the non-special vocabulary) with random_fraction, else unchanged."""
    select_key, kind_key, token_key = jax.random.split(key, 3)
    selected = select(select_key, special_mask, word_start, probability, whole_word, cap)
    kind = jax.random.uniform(kind_key, input_ids.shape)
    random_tokens = replacement_ids[jax.random.randint(token_key, input_ids.shape, 0, replacement_ids.shape[0])]
    corrupted = jnp.where(selected & (kind < mask_fraction), mask_id, input_ids)
    corrupted = jnp.where(selected & (kind >= mask_fraction) & (kind < mask_fraction + random_fraction),
                          random_tokens.astype(input_ids.dtype), corrupted)
    return Masked(corrupted, jnp.where(selected, input_ids, IGNORE_INDEX))


def prediction_slots(labels: jax.Array, slots: int) -> tuple[jax.Array, jax.Array]:
    """(positions [B, slots], targets [B, slots]): the first `slots` labelled positions of each row in order;
    unused slots point at distinct other positions and have target IGNORE_INDEX."""
    length = labels.shape[-1]
    score = jnp.where(labels >= 0, length - jnp.arange(length), 0)
    top, positions = jax.lax.top_k(score, slots)
    targets = jnp.where(top > 0, jnp.take_along_axis(labels, positions, axis=-1), IGNORE_INDEX)
    return positions.astype(jnp.int32), targets


def replacement_vocabulary(tokenizer, vocab_size: int) -> np.ndarray:
    """Ids a random replacement may take: the model's vocabulary without the tokenizer's special tokens."""
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(vocab_size) if i not in special], np.int32)
