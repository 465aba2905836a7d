"""Index streams: which examples each training step and each evaluation batch reads.

Everything here is plain numpy on integer indices, so a run's data order is a pure function of
``(seed, step)`` and resuming from a checkpoint at step ``s`` needs nothing but ``s``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator

import numpy as np

__all__ = ["eval_batches", "process_slice", "train_indices"]


def _positive(value, what: str) -> int:
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _non_negative(value, what: str) -> int:
    value = operator.index(value)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Epoch ``epoch``'s permutation, cached: consecutive steps mostly read the same epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.flags.writeable = False  # shared between calls
    return order


def train_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of training step ``step``.

    The training stream is the concatenation of per-epoch permutations, epoch ``e`` being
    ``np.random.default_rng([seed, e]).permutation(num_examples)``; step ``s`` reads stream
    positions ``[s * B, (s + 1) * B)``. Seeding each epoch by ``[seed, e]`` (rather than drawing
    epochs one after another from one generator) is what lets a batch be computed without
    replaying earlier epochs, so resuming at step ``s`` needs only ``s``: only the epochs the
    batch touches are computed (two at most when ``batch_size <= num_examples``). A batch may
    straddle an epoch boundary (its tail then comes from the next epoch), so every epoch is seen
    exactly once and no example is dropped.

    Args:
        step: the training step, ``>= 0``.
        num_examples: size of the training set, ``>= 1``.
        batch_size: global batch size ``B``, ``>= 1`` (may exceed ``num_examples``).
        seed: a non-negative integer; the same seed gives the same stream in every process.

    Returns:
        int64 ``[batch_size]`` indices into the training set.
    """
    step = _non_negative(step, "step")
    num_examples = _positive(num_examples, "num_examples")
    batch_size = _positive(batch_size, "batch_size")
    seed = _non_negative(seed, "seed")
    # Python ints: step * batch_size can exceed int64 in principle, never silently wraps here.
    start, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    for epoch in range(start // num_examples, (stop - 1) // num_examples + 1):
        offset = epoch * num_examples
        lo, hi = max(start - offset, 0), min(stop - offset, num_examples)
        parts.append(_epoch_order(seed, epoch, num_examples)[lo:hi])
    return np.concatenate(parts).astype(np.int64, copy=False)


def process_slice(global_indices, *, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous block of a global batch.

    Process ``p`` of ``P`` gets ``global_indices[p * B / P : (p + 1) * B / P]``, the layout
    ``jax.make_array_from_process_local_data`` expects for a batch sharded along its first axis.

    Args:
        global_indices: ``[B]`` indices of the whole (global) batch.
        process_index: this process, ``0 <= process_index < process_count``.
        process_count: number of processes; must divide ``B``.

    Returns:
        ``[B / process_count]``, a view into ``global_indices``.
    """
    global_indices = np.asarray(global_indices)
    if global_indices.ndim != 1:
        raise ValueError(f"global_indices must be 1-D, got shape {global_indices.shape}")
    process_count = _positive(process_count, "process_count")
    process_index = _non_negative(process_index, "process_index")
    if process_index >= process_count:
        raise ValueError(
            f"process_index {process_index} out of range for {process_count} processes"
        )
    size = global_indices.shape[0]
    if size % process_count:
        raise ValueError(
            f"global batch of {size} is not divisible by process_count {process_count}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    per_process = size // process_count
    return global_indices[process_index * per_process : (process_index + 1) * per_process]


def eval_batches(num_examples: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sequential fixed-size batches covering ``0 .. num_examples - 1`` exactly once.

    Every batch has ``batch_size`` entries so that a jitted evaluation step compiles once; the
    last batch is padded with index 0 and its mask is False there. Weight per-example metrics
    by ``mask`` (and divide by ``mask.sum()``) to ignore the padding.

    Yields:
        ``(indices, mask)``: int64 ``[batch_size]`` and bool ``[batch_size]``;
        ``ceil(num_examples / batch_size)`` batches (none when ``num_examples == 0``).
    """
    # Validate now, not at the first next(): a plain generator would defer these errors.
    num_examples = _non_negative(num_examples, "num_examples")
    batch_size = _positive(batch_size, "batch_size")

    def batches():
        for start in range(0, num_examples, batch_size):
            positions = np.arange(start, start + batch_size, dtype=np.int64)
            mask = positions < num_examples
            yield np.where(mask, positions, 0), mask

    return batches()
