"""BatchNorm statistics recomputed before an evaluation ("precise BN").

Why: BN's running statistics are an exponential average over the last ~1/momentum training steps, taken while the
weights were moving. After a short or fast-moving run they describe weights the model no longer has, and an arm
that moved more is scored with staler statistics than one that moved less (a 1-epoch RefConv arm read 66.6 %
with train-mode statistics and 25.5 % with its running ones). Recomputing them on the same training batches for
every arm removes that artefact from a comparison. The global RNG is restored afterwards, so a run with
recalibration trains exactly as one without.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["recalibrate_bn", "batchnorm_layers"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], num_batches: int,
                   forward: Callable[[nn.Module, Any], Any]) -> int:
    """Reset every BN layer's running statistics and recompute them as the plain average over ``num_batches``
    batches of ``batches`` (``forward(model, batch)`` runs the model in train mode); returns the batches used.

    The model's train/eval mode, the BN momenta and the global RNG (CPU and CUDA) are restored.
    """
    layers = batchnorm_layers(model)
    if not layers or num_batches <= 0:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            forward(model, batch)
            used += 1
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return used
