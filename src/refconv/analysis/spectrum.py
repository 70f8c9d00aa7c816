"""The refocusing spectrum: what Refocusing Learning does to a layer's step, read off the frozen basis alone.

Training RT is training the kernel ``Wt`` with the fixed preconditioner ``M = P.T @ P`` per RT group
(:mod:`refconv.precondition`, ``docs/method.md``, "The preconditioned form"). So before any training:

- ``lambda_max(M)`` is how many times a plain step the longest refocusing step is (at RT's learning rate);
- ``lambda_min(M)`` is the shortest (0 when the group's kernels span less than the ``K`` positions);
- ``trace(M) / K`` is the average step: what the ``isotropic`` preconditioner keeps;
- ``diag(M)`` (as a kernel-shaped map) is the step at each kernel position: RT's zero padding makes it smaller
  at the border, larger in the centre (the "kernel skeleton").

:func:`refocus_spectrum` returns one plain-data record per refocused layer (a layer with several RT groups
summarises them by max / min / mean); :func:`refconv.analysis.plots.plot_spectrum` draws the ``diag(M)`` maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from refconv.analysis._common import takes_options_of
from refconv.convert import plan_conversion, refconv_layers
from refconv.precondition import group_spectrum

__all__ = ["refocus_spectrum", "layer_spectrum"]


def _summary(values: Tensor) -> dict[str, float]:
    return {"max": float(values.max()), "min": float(values.min()), "mean": float(values.mean())}


def layer_spectrum(basis: Tensor, map_k: int, groups: int, *, name: str = "") -> dict[str, Any]:
    """The spectrum record of one layer from its frozen basis ``Wb`` (see :func:`refocus_spectrum`)."""
    spec = group_spectrum(basis, map_k, groups)
    spatial = tuple(basis.shape[2:])
    diag = spec["diag"].mean(dim=0)
    top = float(diag.max())
    return {
        "layer": name,
        "shape": list(basis.shape),
        "kernels": int(basis.shape[0] * basis.shape[1]),
        "refocus_groups": int(groups),
        "map_k": int(map_k),
        "positions": int(diag.numel()),
        "lambda_max": _summary(spec["max"]),
        "lambda_min": _summary(spec["min"]),
        "trace": _summary(spec["trace"]),
        "zero_groups": int((spec["max"] <= 0).sum()),
        "diag": diag.reshape(spatial).tolist(),  # mean over groups
        "diag_relative": (diag / top).reshape(spatial).tolist() if top > 0 else diag.reshape(spatial).tolist(),
    }


@torch.no_grad()
@takes_options_of(plan_conversion)
def refocus_spectrum(model: nn.Module, **options: object) -> list[dict[str, Any]]:
    """Largest / smallest eigenvalue, trace and ``diag(M)`` of the refocusing preconditioner of every layer.

    Args:
        model: a converted model (its RefConv layers' bases, groups and ``map_k`` are used; the other
            arguments are ignored), or a stock model with its pretrained weights loaded (the layers
            :func:`refconv.convert` would convert with ``map_k`` / ``groups`` / ``include`` / ``exclude``).
        options: Those of :func:`refconv.plan_conversion` (``map_k``, ``groups``, ``include``, ``exclude``).

    Returns:
        One record per layer: ``layer``, ``shape``, ``kernels`` (N), ``refocus_groups`` (G), ``map_k``,
        ``positions`` (K), ``lambda_max`` / ``lambda_min`` / ``trace`` (each ``{max, min, mean}`` over the
        layer's G groups), ``zero_groups`` (groups with ``M = 0``: an all-zero basis), ``diag`` (``diag(M)``
        averaged over groups, kernel-shaped nested lists) and ``diag_relative`` (the same over its maximum).

    Raises:
        NoEligibleConvError: a stock model with no convolution ``convert`` would take (the message names the fix).
    """
    found = refconv_layers(model)
    if found:
        return [layer_spectrum(layer.basis, layer.map_k, layer.refocus_groups, name=name)
                for name, layer in found.items()]
    plans = plan_conversion(model, **options)
    return [layer_spectrum(model.get_submodule(p.name).weight, p.map_k, p.refocus_groups, name=p.name)
            for p in plans]
