"""A linear-chain CRF over word-level tag logits, with IOB2 transition constraints.

Contents:
- `iob2_constraints(labels)`: which tag may follow which, start and end a sequence under IOB2.
- `apply_constraints(...)`: learned potentials plus `CONSTRAINT_PENALTY` where a move is not allowed.
- Pure, batched, jit-able functions: `log_partition`, `sequence_score`, `negative_log_likelihood`,
  `viterbi_decode` (forward algorithm and Viterbi with `jax.lax.scan`, backtracking with a reverse scan),
  `marginals` (per-position tag probabilities: the gradient of log Z), `select_steps` (move chosen positions,
  e.g. each word's first sub-token, to the front of each row, in order).
- `CRF`: an NNX module holding the learned potentials and applying the IOB2 constraints of its labels
  (`nll`, `log_partition`, `decode`, `potentials`), optionally learning `lr_ratio` times faster than the
  rest of the model; `transition_arrays(crf)` / `CRF.from_arrays(labels, arrays)` convert to and from numpy
  arrays.

Conventions (B batch, T time steps, L labels):
- emissions: float [B, T, L], the tag logits of each word. Padding positions may hold anything (even inf or
  nan): they are zeroed before use, so they change neither values nor gradients.
- mask: bool or int [B, T], a prefix mask: the first n_b positions of row b are real, the rest padding;
  n_b = 0 is allowed (score, log partition and NLL are 0, decoded tags all 0). A mask with holes is not
  detected and gives meaningless results.
- tags: int [B, T] in [0, L) at real positions; padding positions may hold anything (e.g. -100).
- transitions: [L, L], `transitions[i, j]` scores moving FROM tag i (at t-1) TO tag j (at t).
  start [L] scores the first tag, end [L] the last real tag; either may also be [B, L], one row each (a chain
  that continues beyond its row, e.g. one window of a longer sentence, gets zeros: no boundary score and no
  boundary constraint).
- A path's score: start[y_0] + sum_t emissions[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}].
Computation is in float32 (float64 stays float64); decoded tags are int32.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Added to every disallowed transition/start/end. Finite on purpose: with -inf, a tag that no path can
# reach makes logsumexp/max see only -inf and its gradients turn into nan (inf - inf), and a gold sequence
# that breaks IOB2 would get an infinite NLL. Not jnp.finfo(float32).min either: two penalties on one
# path (a disallowed start and a disallowed transition) plus a score would overflow to -inf. exp(-1e4)
# is exactly 0 in float32, so disallowed paths carry no probability, and 1e4 is far beyond any
# per-position score gap a trained model produces, so Viterbi never prefers a disallowed path (a
# violation can always be repaired by swapping one I-X for B-X, which costs one emission difference).
CONSTRAINT_PENALTY = -1e4

ARRAY_KEYS = ("transitions", "start_transitions", "end_transitions")


# ---------------------------------------------------------------------------------------------- IOB2 rules

def _parse_iob2(label: str) -> tuple[str, str | None]:
    """'O' -> ('O', None); 'B-PER' -> ('B', 'PER'); anything else raises."""
    if label == "O":
        return "O", None
    prefix, dash, entity = label.partition("-") if isinstance(label, str) else ("", "", "")
    if dash and prefix in ("B", "I") and entity:
        return prefix, entity
    raise ValueError(f"label {label!r} is not an IOB2 tag: expected 'O', 'B-<type>' or 'I-<type>'")


def iob2_constraints(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IOB2 rules as boolean masks (allowed [L, L] from->to, start_allowed [L], end_allowed [L]).

    `I-X` may follow only `B-X` or `I-X` and may not start a sequence; `O` and `B-*` may follow anything;
    every tag may end a sequence. Raises ValueError on a label that is not O/B-X/I-X or on a duplicate.
    """
    labels = list(labels)
    parsed = [_parse_iob2(label) for label in labels]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"duplicate labels {duplicates} in {labels}")
    num = len(labels)
    allowed = np.ones((num, num), dtype=bool)
    start_allowed = np.ones(num, dtype=bool)
    entities = np.array([entity for _, entity in parsed], dtype=object)
    for j, (prefix, entity) in enumerate(parsed):
        if prefix == "I":
            allowed[:, j] = entities == entity  # exactly B-X and I-X carry entity X; O carries None
            start_allowed[j] = False
    end_allowed = np.ones(num, dtype=bool)
    return allowed, start_allowed, end_allowed


def apply_constraints(transitions, start, end, allowed, start_allowed, end_allowed):
    """(transitions, start, end) with CONSTRAINT_PENALTY added where the boolean masks say False.

    Additive, so the learned values stay differentiable everywhere (their gradient at disallowed
    entries is ~0, as those moves carry no probability).
    """
    def penalize(values, ok):
        return values + jnp.where(jnp.asarray(ok), 0.0, CONSTRAINT_PENALTY).astype(jnp.result_type(values))

    return penalize(transitions, allowed), penalize(start, start_allowed), penalize(end, end_allowed)


# ------------------------------------------------------------------------------------------ pure functions

def _prepare(emissions, mask, transitions, start, end):
    """Checked shapes; float emissions with padding zeroed; bool mask; lengths [B]."""
    emissions = jnp.asarray(emissions)
    emissions = emissions.astype(jnp.promote_types(emissions.dtype, jnp.float32))
    mask = jnp.asarray(mask).astype(bool)
    if emissions.ndim != 3:
        raise ValueError(f"emissions must be [batch, time, labels], got shape {emissions.shape}")
    num = emissions.shape[-1]
    if mask.shape != emissions.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match emissions {emissions.shape[:2]}")
    boundary_shapes = ((num,), (emissions.shape[0], num))
    if (jnp.shape(transitions) != (num, num) or jnp.shape(start) not in boundary_shapes
            or jnp.shape(end) not in boundary_shapes):
        raise ValueError(f"transitions {jnp.shape(transitions)}, start {jnp.shape(start)}, end {jnp.shape(end)} "
                         f"do not fit {num} labels (start/end: [labels] or [batch, labels])")
    emissions = jnp.where(mask[..., None], emissions, 0.0)
    return emissions, mask, mask.sum(axis=-1)


def _time_major(x):
    return jnp.swapaxes(x, 0, 1)


def log_partition(emissions, mask, transitions, start, end) -> jax.Array:
    """log Z [B]: log-sum-exp of the scores of all tag paths over each row's real positions (forward algorithm)."""
    emissions, mask, lengths = _prepare(emissions, mask, transitions, start, end)
    batch, steps, _ = emissions.shape
    if steps == 0:
        return jnp.zeros((batch,), emissions.dtype)

    def forward_step(alpha, step_inputs):
        emission_t, real_t = step_inputs
        advanced = jax.nn.logsumexp(alpha[:, :, None] + transitions, axis=1) + emission_t
        return jnp.where(real_t[:, None], advanced, alpha), None  # padding: alpha carries over unchanged

    alpha, _ = jax.lax.scan(forward_step, start + emissions[:, 0],
                            (_time_major(emissions[:, 1:]), _time_major(mask[:, 1:])))
    return jnp.where(lengths > 0, jax.nn.logsumexp(alpha + end, axis=-1), 0.0)


def sequence_score(emissions, tags, mask, transitions, start, end) -> jax.Array:
    """The score [B] of the given tag path over each row's real positions (0 for an empty row)."""
    emissions, mask, lengths = _prepare(emissions, mask, transitions, start, end)
    batch, steps, _ = emissions.shape
    if steps == 0:
        return jnp.zeros((batch,), emissions.dtype)
    tags = jnp.where(mask, jnp.asarray(tags), 0).astype(jnp.int32)
    emitted = jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0]
    emission_score = jnp.sum(jnp.where(mask, emitted, 0.0), axis=-1)
    # prefix mask: the move into position t is real exactly when position t is
    moves = transitions[tags[:, :-1], tags[:, 1:]]
    transition_score = jnp.sum(jnp.where(mask[:, 1:], moves, 0.0), axis=-1)
    last_tag = jnp.take_along_axis(tags, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    boundary_score = jnp.where(lengths > 0, _per_row(start, batch, tags[:, 0]) + _per_row(end, batch, last_tag), 0.0)
    return emission_score + transition_score + boundary_score


def _per_row(boundary, batch: int, tag):
    """boundary [L] or [B, L] -> each row's value at its tag [B]."""
    rows = jnp.broadcast_to(boundary, (batch, boundary.shape[-1]))
    return jnp.take_along_axis(rows, tag[:, None], axis=1)[:, 0]


def negative_log_likelihood(emissions, tags, mask, transitions, start, end) -> jax.Array:
    """-log p(tags | emissions) [B] = log_partition - sequence_score; 0 for an empty row."""
    return (log_partition(emissions, mask, transitions, start, end)
            - sequence_score(emissions, tags, mask, transitions, start, end))


def viterbi_decode(emissions, mask, transitions, start, end) -> tuple[jax.Array, jax.Array]:
    """The best tag path: (tags int32 [B, T], 0 beyond each row's length; its score [B], 0 for an empty row)."""
    emissions, mask, lengths = _prepare(emissions, mask, transitions, start, end)
    batch, steps, num = emissions.shape
    if steps == 0:
        return jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch,), emissions.dtype)
    stay = jnp.broadcast_to(jnp.arange(num, dtype=jnp.int32), (batch, num))

    def forward_step(best, step_inputs):
        emission_t, real_t = step_inputs
        candidates = best[:, :, None] + transitions  # [B, from, to]
        backpointer = jnp.argmax(candidates, axis=1).astype(jnp.int32)
        advanced = jnp.max(candidates, axis=1) + emission_t
        # padding: keep the scores and point every tag at itself, so the backtrack crosses it unchanged
        real = real_t[:, None]
        return jnp.where(real, advanced, best), jnp.where(real, backpointer, stay)

    best, backpointers = jax.lax.scan(forward_step, start + emissions[:, 0],
                                      (_time_major(emissions[:, 1:]), _time_major(mask[:, 1:])))
    final = best + end
    last_tag = jnp.argmax(final, axis=-1).astype(jnp.int32)

    def backtrack_step(tag, backpointer):
        previous = jnp.take_along_axis(backpointer, tag[:, None], axis=1)[:, 0]
        return previous, previous

    # backpointers[k] maps the tag at k + 1 to the tag at k, so earlier[k] is the tag at position k
    _, earlier = jax.lax.scan(backtrack_step, last_tag, backpointers, reverse=True)
    tags = jnp.concatenate([_time_major(earlier), last_tag[:, None]], axis=1)
    has_tokens = lengths > 0
    return jnp.where(mask, tags, 0), jnp.where(has_tokens, jnp.max(final, axis=-1), 0.0)


def marginals(emissions, mask, transitions, start, end) -> jax.Array:
    """P(y_t = j | emissions) [B, T, L] at each row's real positions (0 at padding): the gradient of log Z
    with respect to the emissions (forward-backward)."""
    return jax.grad(lambda e: log_partition(e, mask, transitions, start, end).sum())(
        _prepare(emissions, mask, transitions, start, end)[0])


def select_steps(keep) -> tuple[jax.Array, jax.Array]:
    """Where to read a compacted sequence from: (order int32 [B, T], mask bool [B, T]). Row b of
    `take_along_axis(x, order[..., None], axis=1)` holds the positions where `keep` [B, T] is true, in their
    order, first (a prefix mask, as the functions above expect), then the others."""
    keep = jnp.asarray(keep).astype(bool)
    order = jnp.argsort(~keep, axis=1, stable=True).astype(jnp.int32)
    mask = jnp.arange(keep.shape[1])[None, :] < keep.sum(axis=1, keepdims=True)
    return order, mask


# ---------------------------------------------------------------------------------------------- NNX module

@functools.lru_cache(maxsize=64)
def _frozen_constraints(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = iob2_constraints(labels)
    for array in masks:
        array.setflags(write=False)  # shared by every CRF with these labels
    return masks


def _zero_param(shape: tuple[int, ...]) -> nnx.Param:
    # Logical names only (replicated, as every axis is None): eager sharding would demand a mesh now.
    return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=(None,) * len(shape), eager_sharding=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _learning_faster(stored, ratio: float):
    return stored * ratio


def _learning_faster_forward(stored, ratio):
    return stored * ratio, None


def _learning_faster_backward(ratio, _, gradient):
    return (gradient,)  # unscaled: the stored value moves as if it were the potential itself


_learning_faster.defvjp(_learning_faster_forward, _learning_faster_backward)


class CRF(nnx.Module):
    """Learned CRF potentials (zero init) for `labels`, decoded and trained under IOB2 constraints.

    Params: `transitions` [L, L] (from -> to), `start_transitions` [L], `end_transitions` [L], float32.
    The constraint masks are derived from the static `labels` (see `constraints`), not stored as state:
    numpy arrays cannot be NNX static attributes (unhashable), and as data they would enter nnx.state,
    optimizers and checkpoints.

    `lr_ratio`: the potentials are the stored params times `lr_ratio`, while the backward pass hands the
    stored params the potentials' gradient unscaled. An Adam-type optimizer's step on a param does not
    depend on its gradient's scale, so the potentials move `lr_ratio` times as far per step as with
    `lr_ratio=1` (a per-parameter learning rate), and gradient clipping sees their true gradient.
    `transition_arrays` / `from_arrays` work in potentials, whatever the ratio.
    """

    def __init__(self, labels: Sequence[str], lr_ratio: float = 1.0):
        if isinstance(labels, str):
            raise TypeError("labels must be a sequence of tag strings, not one string")
        if not lr_ratio > 0:
            raise ValueError(f"lr_ratio must be > 0, got {lr_ratio}")
        self.labels = tuple(labels)
        self.lr_ratio = float(lr_ratio)
        if not self.labels:
            raise ValueError("a CRF needs at least one label")
        _frozen_constraints(self.labels)  # raises on a non-IOB2 label now, not at the first call
        num = len(self.labels)
        self.transitions = _zero_param((num, num))
        self.start_transitions = _zero_param((num,))
        self.end_transitions = _zero_param((num,))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def constraints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(allowed [L, L], start_allowed [L], end_allowed [L]), read-only boolean numpy arrays."""
        return _frozen_constraints(self.labels)

    def learned(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The learned (transitions, start, end) potentials, without constraints."""
        if self.lr_ratio == 1.0:
            return self.transitions[...], self.start_transitions[...], self.end_transitions[...]
        return tuple(_learning_faster(param[...], self.lr_ratio)
                     for param in (self.transitions, self.start_transitions, self.end_transitions))

    def potentials(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The learned (transitions, start, end) with the IOB2 penalties added."""
        return apply_constraints(*self.learned(), *self.constraints)

    def nll(self, emissions, tags, mask) -> jax.Array:
        """Per-row negative log-likelihood [B] of the gold `tags` (0 for empty rows)."""
        return negative_log_likelihood(emissions, tags, mask, *self.potentials())

    def log_partition(self, emissions, mask) -> jax.Array:
        return log_partition(emissions, mask, *self.potentials())

    def decode(self, emissions, mask) -> tuple[jax.Array, jax.Array]:
        """(tags int32 [B, T], 0 beyond each length; best score [B]): the best IOB2-valid paths."""
        return viterbi_decode(emissions, mask, *self.potentials())

    @classmethod
    def from_arrays(cls, labels: Sequence[str], arrays: Mapping[str, np.ndarray], lr_ratio: float = 1.0) -> CRF:
        """A CRF for `labels` holding `arrays` (the keys of ARRAY_KEYS, as `transition_arrays` returns)."""
        crf = cls(labels, lr_ratio)
        if set(arrays) != set(ARRAY_KEYS):
            raise ValueError(f"CRF arrays need exactly the keys {list(ARRAY_KEYS)}, got {sorted(arrays)}")
        for key in ARRAY_KEYS:
            param = getattr(crf, key)
            value = np.asarray(arrays[key])
            if value.shape != param.shape:
                raise ValueError(f"CRF array {key!r} has shape {value.shape}, expected {param.shape} "
                                 f"for {crf.num_labels} labels")
            param[...] = jnp.asarray(value / crf.lr_ratio, jnp.float32)
        return crf


def transition_arrays(crf: CRF) -> dict[str, np.ndarray]:
    """The learned (unconstrained) potentials as float32 numpy arrays under the ARRAY_KEYS names."""
    return {key: np.array(jax.device_get(getattr(crf, key)[...]) * crf.lr_ratio, dtype=np.float32)
            for key in ARRAY_KEYS}
