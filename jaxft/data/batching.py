"""Length-bucketed, seeded, resumable batches with a fixed row count.

Every batch has `batch_size` rows and a length from a small set (multiples of `bucket_multiple` up to
max_length), so the jit-compiled step sees a bounded number of shapes. The order of an epoch is a pure
function of (seed, epoch): resuming at (epoch, batch index) replays exactly what an unbroken run sees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import jax

IGNORE_INDEX = -100  # label of positions the loss and the metrics skip (padding, special tokens, unmasked)
SORT_WINDOW_BATCHES = 50  # sort by length within windows of this many batches: little padding, still random


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the training data stream stands: the next batch to take is `batch` of `epoch`."""

    epoch: int = 0
    batch: int = 0


def bucket_lengths(max_length: int, multiple: int) -> list[int]:
    lengths = list(range(multiple, max_length, multiple))
    return lengths + [max_length]


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"sequence of length {length} exceeds the largest bucket {buckets[-1]}")


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True, sort_window: int = SORT_WINDOW_BATCHES) -> list[np.ndarray]:
    """Index groups for one epoch. Shuffled: permute, sort by length inside windows of `sort_window`
    batches, shuffle the batches (sort_window=1: plain random batches, as a PyTorch DataLoader with
    shuffle=True gives; each is still padded only to its own length bucket).

    Unshuffled (evaluation): sorted by length over the whole split, which minimises padding.
    """
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * max(1, sort_window)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(rows: Sequence[Mapping[str, np.ndarray]], batch_size: int, buckets: Sequence[int],
            pad_values: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Stack variable-length rows into [batch_size, bucket] arrays; missing rows are all padding.

    Every key of `pad_values` is a per-token int array in each row; an `attention_mask` is added. Other
    keys are per-example values (a class id, a float target, a multi-hot vector), stacked as they are,
    with zeros in the missing rows.
    """
    length = bucket_for(max(len(row["input_ids"]) for row in rows), buckets)
    batch = {key: np.full((batch_size, length), pad, np.int32) for key, pad in pad_values.items()}
    batch["attention_mask"] = np.zeros((batch_size, length), np.int32)
    for key in rows[0].keys() - pad_values.keys():
        first = np.asarray(rows[0][key])
        batch[key] = np.zeros((batch_size, *first.shape), first.dtype)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        for key, value in row.items():
            if key in pad_values:
                batch[key][i, :n] = value
            else:
                batch[key][i] = value
        batch["attention_mask"][i, :n] = 1
    return batch


def map_batches(fn: Callable[[dict[str, np.ndarray]], Any], rows: Sequence[Mapping[str, np.ndarray]],
                batch_size: int, buckets: Sequence[int], pad_values: Mapping[str, int],
                per_token: bool = True) -> list:
    """fn over length-sorted padded batches; returns one output per row, in row order.

    fn returns an array (or a tuple of arrays) with a leading batch axis; with `per_token` the second axis
    is the sequence, cut back to each row's own length.
    """
    import jax  # only for tree utilities; fn itself decides where it runs

    lengths = [len(row["input_ids"]) for row in rows]
    outputs: list = [None] * len(rows)
    for indices in epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False):
        batch = collate([rows[i] for i in indices], batch_size, buckets, pad_values)
        predicted = jax.device_get(fn(batch))
        for row_in_batch, index in enumerate(indices):
            cut = (lambda x: x[row_in_batch, :lengths[index]]) if per_token else (lambda x: x[row_in_batch])
            outputs[index] = jax.tree.map(cut, predicted)
    return outputs


# ---------------------------------------------------------------------------------------------- packing
# Several short examples share one row: a block-diagonal attention mask (built on device from
# `segment_ids`) keeps them apart and `position_ids` restart at each example, so each example's logits
# are those it would get alone. Every step has the same [rows, pack_length] shape: one compilation.

PACK_WINDOW = 1024  # first-fit-decreasing over windows of this many examples: dense rows, still shuffled


def pack_rows(lengths: Sequence[int], order: Sequence[int], pack_length: int) -> list[list[int]]:
    """Groups of example indices whose lengths sum to at most pack_length (first fit, longest first)."""
    packed: list[list[int]] = []
    for start in range(0, len(order), PACK_WINDOW):
        window = sorted(order[start:start + PACK_WINDOW], key=lambda i: -lengths[i])
        rows: list[list[int]] = []
        room: list[int] = []
        for index in window:
            if lengths[index] > pack_length:
                raise ValueError(f"example of length {lengths[index]} exceeds pack_length {pack_length}")
            for r, free in enumerate(room):
                if lengths[index] <= free:
                    rows[r].append(index)
                    room[r] -= lengths[index]
                    break
            else:
                rows.append([index])
                room.append(pack_length - lengths[index])
        packed.extend(rows)
    return packed


def packed_epoch(lengths: Sequence[int], rows_per_batch: int, pack_length: int, seed: int, epoch: int,
                 shuffle: bool = True) -> list[list[list[int]]]:
    """Batches (lists of rows, each a list of example indices) for one epoch; a pure function of its args."""
    lengths = np.asarray(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths)).tolist()
    else:
        order = list(range(len(lengths)))
    rows = pack_rows(lengths, order, pack_length)
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def rows_per_packed_batch(lengths: Sequence[int], batch_size: int, pack_length: int) -> int:
    """Rows that hold about batch_size examples of mean length: a step sees the tokens it would unpacked."""
    return max(1, math.ceil(batch_size * float(np.mean(lengths)) / pack_length))


def collate_packed(rows: Sequence[Mapping[str, np.ndarray]], groups: Sequence[Sequence[int]], num_rows: int,
                   pack_length: int, pad_values: Mapping[str, int], position_offset: int = 0) -> dict[str, np.ndarray]:
    """[num_rows, pack_length] arrays: per-token keys, segment_ids (1.. per example, 0 = padding),
    position_ids (restarting at position_offset for each example) and attention_mask (1 on tokens)."""
    batch = {key: np.full((num_rows, pack_length), pad, np.int32) for key, pad in pad_values.items()}
    for key in ("segment_ids", "position_ids", "attention_mask"):
        batch[key] = np.zeros((num_rows, pack_length), np.int32)
    for r, group in enumerate(groups):
        start = 0
        for segment, index in enumerate(group, start=1):
            row = rows[index]
            n = len(row["input_ids"])
            for key in pad_values:
                batch[key][r, start:start + n] = row[key]
            batch["segment_ids"][r, start:start + n] = segment
            batch["position_ids"][r, start:start + n] = np.arange(n) + position_offset
            batch["attention_mask"][r, start:start + n] = 1
            start += n
    return batch


def map_packed(fn: Callable[[dict[str, np.ndarray]], Any], rows: Sequence[Mapping[str, np.ndarray]],
               num_rows: int, pack_length: int, pad_values: Mapping[str, int], position_offset: int = 0) -> list:
    """Like map_batches for per-token outputs, over packed rows; each example's output is cut back out."""
    lengths = [len(row["input_ids"]) for row in rows]
    outputs: list = [None] * len(rows)
    for groups in packed_epoch(lengths, num_rows, pack_length, seed=0, epoch=0, shuffle=False):
        batch = collate_packed(rows, groups, num_rows, pack_length, pad_values, position_offset)
        predicted = jax.device_get(fn(batch))
        for r, group in enumerate(groups):
            start = 0
            for index in group:
                outputs[index] = jax.tree.map(lambda x: x[r, start:start + lengths[index]], predicted)
                start += lengths[index]
    return outputs
