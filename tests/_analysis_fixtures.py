"""Tiny models and batches the analysis tests (``test_analysis_*.py``) share."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def small_convnet(width: int, middle: Callable[[int], list[nn.Module]], *, seed: int | None = None) -> nn.Sequential:
    """``conv3x3(3 -> width), BN, ReLU, *middle(width), global average pool, flatten, linear(width -> 3)``.

    ``middle`` is built in place (after the first conv), so with ``seed`` every layer's initial weights are
    what ``torch.manual_seed(seed)`` followed by the whole ``nn.Sequential(...)`` expression gives.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *middle(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 3),
    )


def random_batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded ``(inputs (4, 3, 8, 8), targets in [0, 3))`` batches."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]
