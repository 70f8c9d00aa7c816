"""Resident, batched input: a tensor dataset held as one ``uint8`` tensor, each batch gathered and augmented at once.

The per-item path (``DataLoader`` over :class:`~refconv.data.ArrayImageDataset`) runs Python and a chain of
small tensor ops for every image: at Fashion-MNIST sizes that costs about as much as a MobileNetV3-Small step
on CPU, and on a GPU it would starve the device. Here the split lives where the model lives (on the GPU when
training there), a batch is one index gather, and the augmentation (:func:`~refconv.data.transforms.
small_image_batch`) has the per-item pipeline's distribution: the same crop/flip outcomes drawn uniformly, the
same torchvision resize, the same normalisation (tested, exactly for evaluation).

Reproducibility: the order comes from the engine's sampler (a function of seed and epoch, able to start
mid-epoch) and the augmentation draws of step ``k`` from a generator seeded by ``(seed, epoch, k, rank)``
only, so a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import ArrayImageDataset, LabeledSubset
from .transforms import SmallImageSpec, draw_pad_crop_flip, small_image_batch

__all__ = ["ResidentImages", "ResidentLoader", "resident_images", "augment_seed"]


def augment_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The seed of step ``step``'s augmentation draws: a function of its arguments only (exact resume)."""
    return (((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(step)) * 8191 + int(rank)) % (2**63 - 1)


class ResidentImages:
    """One split as ``uint8 (N, C, H, W)`` on ``device`` plus its labels and pipeline.

    Args:
        images / targets: the split (already subset).
        spec: the per-item pipeline as data.
        device: where batches are made (the training device).
        channels_last: hand batches out in NHWC.
    """

    def __init__(self, images: Tensor, targets: Tensor, spec: SmallImageSpec, *, device: torch.device,
                 channels_last: bool = False) -> None:
        self.images = images.to(device)
        self.targets = targets.to(device=device, dtype=torch.int64)
        self.spec = spec
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Items ``index`` as the model sees them: augmented (train split) with draws from ``generator``."""
        index = index.to(self.device)
        draws = draw_pad_crop_flip(int(index.numel()), self.spec.padding, generator) if self.spec.train else None
        images = small_image_batch(self.images[index], self.spec, draws=draws, channels_last=self.channels_last)
        return images, self.targets[index]


def resident_images(dataset: Dataset, *, device: torch.device, channels_last: bool = False) -> ResidentImages | None:
    """A :class:`ResidentImages` of ``dataset`` when it is a tensor dataset with a known pipeline, else None
    (image folders, custom datasets: they keep the ``DataLoader`` path)."""
    indices = None
    base = dataset
    if isinstance(dataset, LabeledSubset):
        indices = torch.as_tensor(dataset.indices, dtype=torch.int64)
        base = dataset.dataset
    if not isinstance(base, ArrayImageDataset) or not isinstance(getattr(base, "spec", None), SmallImageSpec):
        return None
    images, targets = base.images, base.targets
    if indices is not None:
        images, targets = images[indices], targets[indices]
    return ResidentImages(images, targets, base.spec, device=device, channels_last=channels_last)


class ResidentLoader:
    """Batches of a :class:`ResidentImages` in the order of a sampler of item indices.

    Drop-in for the engine's ``DataLoader``: iterate it for ``(images, targets)``; the sampler (e.g.
    :class:`~refconv.engine.sampling.ResumableSampler`) decides the order and where an epoch starts, and
    ``epoch`` / ``step`` of the augmentation seed are read from it (``sampler.epoch``, ``sampler.start_step``).

    Args:
        data: the resident split.
        sampler: yields item indices, ``batch_size`` per step.
        batch_size: items per batch (per process).
        seed: base seed of the augmentation draws (training); None for evaluation.
        rank: this process's rank (its draws differ from the other ranks').
    """

    def __init__(self, data: ResidentImages, sampler: Iterable[int], batch_size: int, *, seed: int | None = None,
                 rank: int = 0) -> None:
        self.data = data
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        epoch = int(getattr(self.sampler, "epoch", 0))
        start = int(getattr(self.sampler, "start_step", 0))
        for k, lo in enumerate(range(0, int(order.numel()), self.batch_size)):
            generator = None
            if self.seed is not None and self.data.spec.train:
                generator = torch.Generator().manual_seed(augment_seed(self.seed, epoch, start + k, self.rank))
            yield self.data.batch(order[lo : lo + self.batch_size], generator)
