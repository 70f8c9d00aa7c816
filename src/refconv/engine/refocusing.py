"""How a RefConv run refocuses: explicit RT layers or the implicit preconditioned update (refconv.implicit).

The runner asks :func:`setup_refocusing` once, after the task built (and converted) the model: it returns the
gradient transform to attach to the optimizer, or None when plain RT training needs none. Two cases need one:

- ``refocus_impl: implicit``: the converted model is folded back (``Wt0``, the explicit layer's random start
  included) and trained with ``g @ M + wd * (Wt - Wb)`` on the refocused kernels; the checkpoint keeps the bases.
- ``refocus_impl: explicit`` with ``refocus_precond: normalized``: RT's gradient rows of each group are divided
  by the group's ``lambda_max(M)``, which is exactly the preconditioner ``M / lambda_max`` (weight decay untouched).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ..convert import refconv_layers, reparameterize
from ..implicit import ImplicitRefocusing
from ..precondition import group_spectrum
from .config import RunConfig

__all__ = ["setup_refocusing", "ExplicitNormalization", "refocus_weight_decay"]


def refocus_weight_decay(cfg: RunConfig) -> float:
    """RT's weight decay: ``refocus_weight_decay``, else the recipe's."""
    return cfg.weight_decay if cfg.refocus_weight_decay is None else cfg.refocus_weight_decay


class ExplicitNormalization:
    """Divide the gradient of RT's weight, row group by row group, by that group's ``lambda_max(M)``."""

    def __init__(self, model: nn.Module) -> None:
        self.scales: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, layer in refconv_layers(model).items():
            top = group_spectrum(layer.basis, layer.map_k, layer.refocus_groups)["max"]
            if bool((top <= 0).any()):
                from ..errors import ConversionError

                raise ConversionError(
                    f"cannot normalise refocusing of layer '{name}': an RT group has M = 0 (an all-zero basis, which "
                    "refocusing cannot move). Exclude the layer (--exclude NAME) or use --refocus-precond exact.")
            wr = layer.refocus_weight
            rows = top.repeat_interleave(wr.shape[0] // top.numel())
            self.scales.append((wr, (1.0 / rows).to(wr.dtype).reshape(-1, *([1] * (wr.dim() - 1)))))

    @torch.no_grad()
    def transform_grads_(self) -> None:
        for wr, scale in self.scales:
            if wr.grad is not None:
                wr.grad.mul_(scale.to(wr.grad.device))

    def attach(self, optimizer: Optimizer) -> Any:
        return optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.transform_grads_())

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> None:
        return None


def setup_refocusing(model: nn.Module, cfg: RunConfig, ckpt: dict[str, Any] | None
                     ) -> ImplicitRefocusing | ExplicitNormalization | None:
    """The gradient transform of a refconv run (see the module doc), with the model made ready for it."""
    if cfg.method != "refconv":
        return None
    if cfg.refocus_impl == "implicit":
        saved = (ckpt or {}).get("implicit_refocus")
        if saved is not None:  # resume: the bases come from the checkpoint, Wt from its state_dict
            reparameterize(model, inplace=True)
            return ImplicitRefocusing.from_state_dict(model, saved)
        return ImplicitRefocusing.from_converted(model, precond=cfg.refocus_precond,
                                                 weight_decay=refocus_weight_decay(cfg))
    if cfg.refocus_precond == "normalized":
        if ckpt is not None:
            # A resume builds the converted model without its starting weights (the checkpoint holds them): the
            # bases are loaded here first, so each group's lambda_max is the run's, not a random basis's.
            from .modeling import load_format_checked

            load_format_checked(model, ckpt["state_dict"], "the checkpoint")
        return ExplicitNormalization(model)
    return None
