"""Deterministic batches by step number, so a resumed run sees exactly the data it would have."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Yields the index lists of micro-batches ``start, start + 1, ...`` forever.

    Micro-batch ``i`` of the global stream takes ``global_batch`` indices of epoch
    ``i // per_epoch`` from a permutation seeded by ``(seed, epoch)``; each rank takes its
    slice, so data-parallel ranks see disjoint data and a resumed run continues the stream.

    Args:
        size (int): dataset length.
        batch_size (int): micro-batch size per rank.
        seed (int): shuffling seed.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of ranks. Default: 1.
        start (int): first micro-batch to yield. Default: 0.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if size < batch_size * world_size:
            raise ValueError(f"dataset of {size} items is smaller than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.global_batch = batch_size * world_size
        self.per_epoch = size // self.global_batch
        self._epoch, self._perm = -1, None

    def batch(self, i: int) -> list[int]:
        epoch, j = divmod(i, self.per_epoch)
        if self._epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.size, generator=g), epoch
        perm = self._perm
        lo = j * self.global_batch + self.rank * self.batch_size
        return perm[lo: lo + self.batch_size].tolist()

    def __iter__(self):
        i = self.start
        while True:
            yield self.batch(i)
            i += 1

    def __len__(self) -> int:  # infinite stream; DataLoader only needs it for len()
        return 2**62
