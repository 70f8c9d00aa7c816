"""A sampler whose order is a pure function of (seed, epoch) and that can start mid-epoch.

``torch``'s ``RandomSampler``/``DistributedSampler`` cannot skip ahead, so a run resumed from a mid-epoch
checkpoint would either replay or reshuffle the epoch. Here epoch ``e`` always draws the same permutation,
cut into *global* batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th slice of each global
batch. So one process and W processes see the same samples in every optimizer step (what makes a DDP run
agree with a single-process run), and ``set_start(k)`` skips the first ``k`` steps exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableSampler", "ShardSampler", "SeededItems"]


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle, global batches split over ranks, incomplete last global batch dropped.

    Args:
        num_items: dataset length.
        batch_size: per-rank batch size.
        seed: base seed of the shuffle.
        rank / world_size: this process's slice of each global batch.
        shuffle: permute per epoch (training) or keep order.
    """

    def __init__(
        self, num_items: int, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_step = 0

    def set_start(self, step: int) -> None:
        """Skip the first ``step`` optimizer steps of the current epoch (resume)."""
        self.start_step = step

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = torch.arange(self.num_items)
        gb = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * gb + self.rank * self.batch_size
            yield from order[lo : lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation order: rank ``r`` takes items ``r, r+W, r+2W...``: every item once, none padded, so summed
    counts over ranks are exact."""

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, num_items, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededItems(Dataset):
    """A dataset whose items draw their random augmentation from a seed that is a pure function of (seed, epoch,
    index), not from whatever RNG stream happens to reach them.

    Read item by item (image files), augmentation otherwise draws from the RNG of the process that reads the item:
    a loader worker's stream, which restarts with every iterator, or the main process's, which a batch that failed
    half-way (an unreadable image) has already advanced. Either way a run resumed mid-epoch would not draw what
    the run that never stopped drew. Seeded per item, it does, whatever the number of workers or processes, and
    the RNG of the reading process is left as it was (torch, Python's ``random`` and numpy, each restored).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index)) % (2**63 - 1)

    def __getitem__(self, index: int) -> Any:
        seed = self.item_seed(index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes (classes, samples...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
