"""Which examples each step takes, and in what layout: length buckets, or packed rows.

Both plans are pure functions of (seed, epoch), so a resumed run replays the same batches, and both give
a bounded set of array shapes: padded plans one shape per length bucket, packed plans a single shape.
A plan's batches come out as host arrays shaped [grad_accum_steps, rows, length].
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from jaxft import runtime
from jaxft.data import batching


class PaddedBatches:
    """batch_size examples per micro-batch, padded to the smallest length bucket that holds them."""

    packed = False

    def __init__(self, rows: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, accum: int, max_length: int,
                 bucket_multiple: int, pad_values: Mapping[str, int], seed: int,
                 sort_window: int = batching.SORT_WINDOW_BATCHES):
        self.rows, self.batch_size, self.accum, self.seed = rows, batch_size, accum, seed
        self.sort_window = sort_window
        self.pad_values = pad_values
        self.buckets = batching.bucket_lengths(max_length, bucket_multiple)
        self.lengths = [len(row["input_ids"]) for row in rows]

    def epoch(self, epoch: int) -> list:
        return batching.epoch_batches(self.lengths, self.batch_size * self.accum, self.seed, epoch,
                                      sort_window=self.sort_window)

    def collate(self, group) -> dict[str, np.ndarray]:
        batch = batching.collate([self.rows[i] for i in group], self.accum * self.batch_size, self.buckets,
                                 self.pad_values)
        return {k: v.reshape(self.accum, self.batch_size, *v.shape[1:]) for k, v in batch.items()}

    def tokens(self, group) -> int:
        return sum(self.lengths[i] for i in group)

    def predict(self, fn, rows, per_token: bool) -> list:
        return batching.map_batches(fn, rows, self.batch_size * 2, self.buckets, self.pad_values,
                                    per_token=per_token)

    def count_predict_batches(self, rows) -> int:
        """How many calls of fn predict(fn, rows, ...) makes."""
        return math.ceil(len(rows) / (self.batch_size * 2))

    def describe(self) -> str:
        return (f"train batches: {self.batch_size} rows x length buckets {self.buckets} (at most "
                f"{len(self.buckets)} compiled shapes per step)")


def packed_row_length(lengths: Sequence[int], max_length: int, multiple: int) -> int:
    """The shortest multiple of `multiple` that holds the longest example, at most max_length: short examples
    (tweets: 31 sub-tokens on average, 68 at most) then share rows of 80 tokens instead of 128, and the
    attention of a packed row, quadratic in its length, shrinks with it."""
    return min(max_length, -(-max(lengths, default=1) // multiple) * multiple)


class PackedBatches:
    """Rows of pack_length tokens, each holding several examples; about batch_size examples a micro-batch.
    pack_length None: packed_row_length of the training examples (one compiled train shape either way);
    prediction rows are as long as the longest predicted example needs, and at least pack_length."""

    packed = True

    def __init__(self, rows: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, accum: int,
                 pack_length: int | None, max_length: int, length_multiple: int, pad_values: Mapping[str, int],
                 seed: int, position_offset: int, row_multiple: int = 1):
        self.rows, self.accum, self.seed = rows, accum, seed
        self.pad_values, self.position_offset = pad_values, position_offset
        self.max_length, self.length_multiple = max_length, length_multiple
        self.lengths = [len(row["input_ids"]) for row in rows]
        self.pack_length = pack_length or packed_row_length(self.lengths, max_length, length_multiple)
        rows_needed = batching.rows_per_packed_batch(self.lengths, batch_size, self.pack_length)
        self.rows_per_batch = -(-rows_needed // row_multiple) * row_multiple  # a multiple of the batch shards

    def epoch(self, epoch: int) -> list:
        return batching.packed_epoch(self.lengths, self.rows_per_batch * self.accum, self.pack_length,
                                     self.seed, epoch)

    def collate(self, group) -> dict[str, np.ndarray]:
        batch = batching.collate_packed(self.rows, group, self.accum * self.rows_per_batch, self.pack_length,
                                        self.pad_values, self.position_offset)
        return {k: v.reshape(self.accum, self.rows_per_batch, *v.shape[1:]) for k, v in batch.items()}

    def tokens(self, group) -> int:
        return sum(self.lengths[i] for row in group for i in row)

    def describe(self) -> str:
        return (f"train batches: packed, {self.rows_per_batch} rows x {self.pack_length} tokens (one compiled "
                f"shape per step; the longest example has {max(self.lengths, default=0)} tokens)")

    def predict(self, fn, rows, per_token: bool) -> list:
        if not per_token:
            raise ValueError("packed evaluation needs per-token outputs; use data.packing=False for this task")
        return batching.map_packed(fn, rows, self.rows_per_batch * 2, self.predict_length(rows), self.pad_values,
                                   self.position_offset)

    def predict_length(self, rows) -> int:
        longest = packed_row_length([len(row["input_ids"]) for row in rows], self.max_length, self.length_multiple)
        return max(self.pack_length, longest)

    def count_predict_batches(self, rows) -> int:
        """How many calls of fn predict(fn, rows, ...) makes (the rows packed as map_packed packs them)."""
        lengths = [len(row["input_ids"]) for row in rows]
        return len(batching.packed_epoch(lengths, self.rows_per_batch * 2, self.predict_length(rows), seed=0,
                                         epoch=0, shuffle=False))


def plan_batches(rows, data_config, train_config, pad_values, position_offset: int, row_multiple: int):
    if data_config.packing:
        return PackedBatches(rows, batch_size=train_config.batch_size, accum=train_config.grad_accum_steps,
                             pack_length=data_config.pack_length, max_length=data_config.max_length,
                             length_multiple=runtime.bucket_multiple(data_config.bucket_multiple),
                             pad_values=pad_values, seed=train_config.seed, position_offset=position_offset,
                             row_multiple=row_multiple)
    return PaddedBatches(rows, batch_size=train_config.batch_size, accum=train_config.grad_accum_steps,
                         max_length=data_config.max_length,
                         bucket_multiple=runtime.bucket_multiple(data_config.bucket_multiple),
                         pad_values=pad_values, seed=train_config.seed,
                         sort_window=data_config.sort_window_batches)
