"""The data order: which examples each training step visits, as a pure function of ``(seed, epoch, position)``.

The permutation of epoch ``e`` comes from its own generator seeded with :func:`derive_seed` ``(seed, "data",
e)``, never from global RNG state, so resuming needs only ``(epoch, position)`` and every rank agrees on the
global batch. Here, below :mod:`rlhfkit.data`, because the collators need it too; the seeds of the other
streams and the RNG state live in :mod:`rlhfkit.engine.determinism`.

Imports only torch, numpy and the standard library.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch


def derive_seed(seed: int, *stream: str | int, bits: int = 63) -> int:
    """A ``bits``-bit seed for the named ``stream`` of ``seed``: ``sha256("seed/stream/…") mod 2**bits``."""
    text = "/".join(["rlhfkit", str(seed), *map(str, stream)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**bits)


def epoch_permutation(seed: int, epoch: int, num_examples: int, shuffle: bool = True) -> list[int]:
    """The order in which epoch ``epoch`` visits the dataset: a permutation of ``range(num_examples)``.

    A pure function of its arguments (its own ``torch.Generator``, never the global RNG).
    """
    if not shuffle:
        return list(range(num_examples))
    generator = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
    return torch.randperm(num_examples, generator=generator).tolist()


@dataclass(frozen=True)
class DataOrder:
    """Which dataset indices each step uses, as a pure function of ``(epoch, position)``.

    A *step* takes the next ``global_batch_size`` (= per-device batch × grad-accum steps × processes)
    indices of the epoch's permutation. When the dataset size is not a multiple of the global batch, the
    epoch's last step is smaller (``drop_last=False``: no sample skipped, none repeated) or is dropped
    (``drop_last=True``). The position never straddles an epoch: a step ending the epoch moves to
    ``(epoch + 1, 0)``, so a checkpoint written at an epoch boundary resumes at the next epoch's start.
    """

    num_examples: int
    global_batch_size: int
    seed: int
    shuffle: bool = True
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.num_examples <= 0:
            raise ValueError("the training dataset is empty")
        if self.drop_last and self.num_examples < self.global_batch_size:
            raise ValueError(
                f"the dataset has {self.num_examples} examples, fewer than one global batch "
                f"({self.global_batch_size}), and drop_last=true would drop them all; lower "
                "per_device_batch_size or grad_accum_steps, or set drop_last=false"
            )

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_examples // self.global_batch_size
        return math.ceil(self.num_examples / self.global_batch_size)

    def step_indices(self, epoch: int, position: int) -> list[int]:
        """Dataset indices of the step starting at ``position`` of epoch ``epoch`` (all processes)."""
        if not 0 <= position < self.num_examples:
            raise ValueError(f"data position {position} outside an epoch of {self.num_examples} examples")
        order = epoch_permutation(self.seed, epoch, self.num_examples, self.shuffle)
        return order[position : position + self.global_batch_size]

    def advance(self, epoch: int, position: int, consumed: int) -> tuple[int, int]:
        """The ``(epoch, position)`` after a step that used ``consumed`` examples from ``position``."""
        position += consumed
        remaining = self.num_examples - position
        if remaining <= 0 or (self.drop_last and remaining < self.global_batch_size):
            return epoch + 1, 0
        return epoch, position


def shard_step(
    indices: list[int], num_processes: int, rank: int, per_device_batch_size: int
) -> list[list[int]]:
    """This rank's micro-batches (lists of dataset indices) for a step whose global indices are ``indices``.

    The step is cut into ``num_processes`` contiguous equal shards; rank ``r`` takes shard ``r`` and splits
    it into ``ceil(len(shard) / per_device_batch_size)`` near-equal micro-batches — the same count on every
    rank, as DDP needs. A full step gives every rank ``grad_accum_steps`` micro-batches of exactly
    ``per_device_batch_size``. When a (last, partial) step does not divide evenly among the processes it is
    padded by repeating its first indices (at most ``num_processes - 1`` repeats, as torch's
    ``DistributedSampler`` does); with one process nothing is ever padded.
    """
    if not indices:
        raise ValueError("a step needs at least one example")
    padded = list(indices)
    while len(padded) % num_processes:
        padded.append(indices[(len(padded) - len(indices)) % len(indices)])
    shard_size = len(padded) // num_processes
    shard = padded[rank * shard_size : (rank + 1) * shard_size]
    count = math.ceil(shard_size / per_device_batch_size)
    return [part.tolist() for part in np.array_split(np.asarray(shard, dtype=np.int64), count)]
