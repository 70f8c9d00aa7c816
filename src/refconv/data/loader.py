"""``build_loader``: a DataLoader whose order depends on a seed only, with an optional DistributedSampler."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError

__all__ = ["build_loader", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a worker from its torch seed.

    torch seeds each worker from the loader's generator; third-party transforms that draw from ``random`` or
    numpy would otherwise repeat the same numbers in every worker (the classic forked-RNG bug).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def _distributed_sampler(dataset: Dataset, *, num_replicas: int | None, rank: int | None, shuffle: bool,
                         seed: int) -> Sampler:
    from torch.utils.data.distributed import DistributedSampler

    try:
        return DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=False
        )
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"distributed=True needs an initialised torch.distributed process group (or explicit "
            f"num_replicas and rank): {e}"
        ) from e


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool | None = None,
    sampler: Sampler | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """Make the loader an engine iterates, reproducible from ``seed``.

    Args:
        dataset: any map-style dataset.
        batch_size: items per batch (per process when distributed).
        train: shuffle (seeded) and, by default, drop the last incomplete batch; eval keeps order and items.
        workers: loader worker processes (0 = in the main process; best on small CPU machines).
        seed: seeds the shuffle order and the per-worker RNG seeds. With ``workers > 0`` augmentation is
            then reproducible too; with ``workers == 0`` it draws from the global torch RNG, so seed that
            (``torch.manual_seed``) for reproducible augmentation.
        distributed: use a :class:`~torch.utils.data.distributed.DistributedSampler` (needs an initialised
            process group unless ``num_replicas``/``rank`` are given). Call ``loader.sampler.set_epoch(epoch)``
            every epoch, or every epoch shuffles the same way. In eval it pads the last batch with repeated
            items so every rank gets the same count: reduce metrics accordingly.
        drop_last: None = ``train`` when at least one full batch exists (a last batch of one item breaks
            BatchNorm in training; an empty epoch would be worse).
        num_replicas / rank: passed to the DistributedSampler (default: from the process group).
        pin_memory: None = when CUDA is available.
        sampler: an explicit order (e.g. the engine's resumable sampler, which can start mid-epoch); it
            replaces shuffling and ``distributed``'s sampler, and ``drop_last`` defaults to False with it.
        collate_fn: how items become a batch (detection: lists of images and targets); default: stacking.
        persistent_workers: keep workers alive across epochs (None = when ``workers > 0``). The engine passes
            False: it re-creates the iterator at a resumable sampler position each epoch.

    Raises:
        ConfigError: bad batch size or workers, or ``distributed`` without a process group.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an int >= 0, got {workers!r}.")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if sampler is not None:
        if distributed:
            raise ConfigError("give either sampler or distributed=True, not both: the sampler decides the order.")
        if drop_last is None:
            drop_last = False
    elif distributed:
        sampler = _distributed_sampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed)
    if drop_last is None:
        n = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
        drop_last = bool(train) and n >= batch_size
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(train) and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=workers > 0 if persistent_workers is None else persistent_workers and workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None,
        collate_fn=collate_fn,
    )
