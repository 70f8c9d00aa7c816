"""The image pipelines: the paper's ImageNet recipe and the usual small-image recipe, on torchvision v2.

Small datasets (Fashion-MNIST, CIFAR) arrive as ``uint8`` tensors and are augmented at their native size
(random crop with ``size // 8`` zero padding, horizontal flip) before any resize, which is what the CIFAR
literature does. Image folders follow the authors' ImageNet scripts: ``RandomResizedCrop(size)`` + flip for
training, ``Resize(size * 256 / 224)`` + ``CenterCrop(size)`` for evaluation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from ..normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomPadCrop",
    "SmallImageSpec",
    "draw_pad_crop_flip",
    "pad_crop_flip_batch",
    "small_image_batch",
    "ScaleNormalize",
    "RepeatChannels",
    "channel_stats",
    "small_image_transform",
    "imagefolder_transform",
    "eval_resize_size",
]

# ITU-R 601-2 luma, what PIL and torchvision's Grayscale use.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class RandomPadCrop(nn.Module):
    """Random crop of a zero-padded image back to its size, then a random horizontal flip.

    The same distribution as ``v2.RandomCrop(size, padding=p)`` + ``v2.RandomHorizontalFlip()``, but one RNG
    draw and one copy per item instead of padding the whole image: about 3x cheaper, which is most of the
    per-item cost of a Fashion-MNIST epoch on CPU. Draws from torch's RNG, like the v2 transforms.

    Args:
        padding: maximum shift in pixels (the ``padding`` of RandomCrop).
        flip: also flip horizontally with probability 1/2.
    """

    def __init__(self, padding: int, flip: bool = True) -> None:
        super().__init__()
        self.padding = int(padding)
        self.flip = flip

    def forward(self, image: Tensor) -> Tensor:
        return self.crop(image, int(torch.randint(0, _draw_count(self.padding), (1,))))

    def crop(self, image: Tensor, draw: int) -> Tensor:
        """The crop and flip of outcome ``draw`` (what :func:`pad_crop_flip_batch` does to one item)."""
        p = self.padding
        sy, sx, flip = _decode_draw(draw, p)
        h, w = image.shape[-2:]
        out = torch.zeros_like(image)
        out[..., max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)] = image[
            ..., max(0, sy) : h + min(0, sy), max(0, sx) : w + min(0, sx)
        ]
        if self.flip and flip:
            out = out.flip(-1)
        return out

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}"


def _draw_count(padding: int) -> int:
    """Number of equally likely (shift y, shift x, flip) outcomes of :class:`RandomPadCrop`."""
    span = 2 * padding + 1
    return span * span * 2


def _decode_draw(v: Any, padding: int) -> tuple[Any, Any, Any]:
    """Uniform draws in ``[0, _draw_count(padding))`` -> (shift y, shift x, flip), for one int or a tensor of
    them: the per-item and the batched crop share this decoding, so they have one distribution by
    construction."""
    span = 2 * padding + 1
    flip, v = v % 2, v // 2
    return v // span - padding, v % span - padding, flip


def draw_pad_crop_flip(n: int, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of :class:`RandomPadCrop`'s outcome (int64, decoded by :func:`pad_crop_flip_batch`)."""
    return torch.randint(0, _draw_count(padding), (n,), generator=generator)


def pad_crop_flip_batch(images: Tensor, draws: Tensor, padding: int, flip: bool = True) -> Tensor:
    """:class:`RandomPadCrop` applied to a batch ``(B, C, H, W)`` at once, one outcome per item from ``draws``.

    Item ``b`` equals ``RandomPadCrop`` of ``images[b]`` given the same draw: pixel ``(y, x)`` of the output
    reads ``(y + sy, x + sx)`` of the input (zero outside), mirrored in ``x`` when flipped. One gather over the
    zero-padded batch, on whatever device the batch lives.
    """
    b, _, h, w = images.shape
    p = padding
    sy, sx, flips = _decode_draw(draws.to(images.device), p)
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    rows = torch.arange(h, device=images.device).unsqueeze(0) + sy.unsqueeze(1) + p  # (B, H) in padded coords
    cols = torch.arange(w, device=images.device).unsqueeze(0) + sx.unsqueeze(1) + p  # (B, W)
    if flip:
        cols = torch.where(flips.bool().unsqueeze(1), cols.flip(1), cols)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class SmallImageSpec:
    """What :func:`small_image_transform` does to one image, as data, so a whole batch can get the same
    treatment with tensor ops (:func:`small_image_batch`)."""

    native_size: int
    image_size: int
    src_chans: int
    out_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool

    @property
    def padding(self) -> int:
        return max(1, self.native_size // 8)


def small_image_batch(
    images: Tensor,
    spec: SmallImageSpec,
    *,
    draws: Tensor | None = None,
    channels_last: bool = False,
) -> Tensor:
    """:func:`small_image_transform` of a ``uint8`` batch ``(B, C, H, W)``: crop + flip (``spec.train``, from
    ``draws``), resize, channel conversion and normalisation, as batch tensor ops on the batch's device.

    The resize is torchvision's own (``v2.functional.resize`` on the ``uint8`` batch), so an evaluation batch
    equals the per-item pipeline's items exactly; a training batch equals them given the same draws.
    """
    if spec.train:
        if draws is None:
            raise ValueError("a training batch needs its augmentation draws (draw_pad_crop_flip)")
        images = pad_crop_flip_batch(images, draws, spec.padding)
    if spec.image_size != spec.native_size:
        images = v2.functional.resize(images.contiguous(), [spec.image_size, spec.image_size], antialias=True)
    shift, scale = _batch_stats(spec, images.device)
    if spec.src_chans == 3 and spec.out_chans == 1:
        x = (v2.functional.rgb_to_grayscale(images.to(torch.float32) / 255.0) - shift) / scale
    else:
        x = (images.to(torch.float32) - shift) / scale
        if spec.src_chans != spec.out_chans:
            x = x.expand(-1, spec.out_chans, -1, -1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


@functools.lru_cache(maxsize=32)
def _batch_stats(spec: SmallImageSpec, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` of :func:`small_image_batch` as ``(1, C, 1, 1)`` tensors on ``device``, made once per
    pipeline and device rather than per batch: luma output is normalised from [0, 1] (as the per-item path's
    ``ToDtype(scale=True)`` + ``Normalize``), other outputs from ``uint8`` values (as :class:`ScaleNormalize`)."""
    if spec.src_chans == 3 and spec.out_chans == 1:
        shift, scale = spec.mean, spec.std
    else:
        shift, scale = _uint8_stats(spec.mean[: spec.src_chans], spec.std[: spec.src_chans])
    return (torch.tensor(shift, device=device).view(1, -1, 1, 1),
            torch.tensor(scale, device=device).view(1, -1, 1, 1))


def _uint8_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Mean and std on the ``uint8`` scale: normalising raw values by them equals scaling to [0, 1] first."""
    return [255.0 * float(m) for m in mean], [255.0 * float(s) for s in std]


class ScaleNormalize(nn.Module):
    """``uint8`` image to float, scaled to [0, 1] and normalised, in one pass.

    Equal to ``v2.ToDtype(float32, scale=True)`` then ``v2.Normalize(mean, std)`` (to float rounding), at a
    fifth of the cost per small image.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        shift, scale = _uint8_stats(self.mean, self.std)
        self._shift = torch.tensor(shift).view(-1, 1, 1)
        self._scale = torch.tensor(scale).view(-1, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        return (image.to(torch.float32) - self._shift) / self._scale

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class RepeatChannels(nn.Module):
    """Replicate a 1-channel image to ``n`` channels, so a grayscale dataset feeds an RGB model unchanged."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, image: Tensor) -> Tensor:
        if image.shape[-3] == self.n:
            return image
        return image.expand(*image.shape[:-3], self.n, *image.shape[-2:]).contiguous()

    def extra_repr(self) -> str:
        return f"n={self.n}"


def channel_stats(
    mean: Sequence[float], std: Sequence[float], out_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics after converting a dataset's channels to ``out_chans``.

    Grayscale replicated to 3 channels keeps its statistics in every channel. RGB reduced to luma gets the
    luma-weighted mean (exact) and the luma-weighted std, which is exact when the channels are perfectly
    correlated and a slight over-estimate otherwise: good enough to centre and scale the inputs.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) == out_chans:
        return mean, std
    if len(mean) == 1:
        return mean * out_chans, std * out_chans
    if len(mean) == 3 and out_chans == 1:
        m = sum(w * x for w, x in zip(GRAY_WEIGHTS, mean))
        s = sum(w * x for w, x in zip(GRAY_WEIGHTS, std))
        return (m,), (s,)
    raise ValueError(f"cannot convert {len(mean)} channels to {out_chans}")


def _channel_step(src_chans: int, out_chans: int) -> list[nn.Module]:
    if src_chans == out_chans:
        return []
    if src_chans == 1:
        return [RepeatChannels(out_chans)]
    if src_chans == 3 and out_chans == 1:
        return [v2.Grayscale(num_output_channels=1)]
    raise ValueError(f"cannot convert {src_chans} channels to {out_chans}")


def small_image_transform(spec: SmallImageSpec) -> v2.Compose:
    """Pipeline for a ``uint8`` ``(C, H, W)`` tensor of a small dataset, as ``spec`` describes it.

    ``spec.native_size`` is the stored image size (28 or 32); a bilinear, antialiased resize to
    ``spec.image_size`` runs after augmentation when it differs. ``src_chans`` / ``out_chans`` are the stored
    and wanted channels (1 <-> 3); ``mean`` / ``std`` the statistics of the *output* channels (see
    :func:`channel_stats`); ``train`` adds the random crop (padding ``native_size // 8``) and horizontal flip.
    """
    steps: list[nn.Module] = []
    if spec.train:
        steps.append(RandomPadCrop(spec.padding, flip=True))
    if spec.image_size != spec.native_size:
        steps.append(v2.Resize((spec.image_size, spec.image_size), antialias=True))
    if spec.src_chans == 3 and spec.out_chans == 1:
        steps += [v2.ToDtype(torch.float32, scale=True), *_channel_step(3, 1),
                  v2.Normalize(list(spec.mean), list(spec.std))]
    else:
        # Replicated grayscale has the same statistics in every channel: normalise once, then replicate.
        steps.append(ScaleNormalize(spec.mean[: spec.src_chans], spec.std[: spec.src_chans]))
        steps += _channel_step(spec.src_chans, spec.out_chans)
    return v2.Compose(steps)


def eval_resize_size(image_size: int) -> int:
    """Short-side resize before the centre crop: 256 for 224, scaled in proportion for other sizes."""
    return round(image_size * 256 / 224)


def imagefolder_transform(
    *,
    image_size: int,
    out_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
) -> v2.Compose:
    """Pipeline for a PIL RGB image of an image folder (the authors' ImageNet recipe).

    Args:
        image_size: crop size.
        out_chans: 3, or 1 for luma.
        mean / std: statistics of the output channels.
        train: ``RandomResizedCrop`` + flip; otherwise ``Resize(size*256/224)`` + ``CenterCrop``.
    """
    if train:
        steps: list[nn.Module] = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(eval_resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    steps += _channel_step(3, out_chans)
    steps += [v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]
    return v2.Compose(steps)
