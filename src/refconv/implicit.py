"""Implicit refocusing: Refocusing Learning on the stock model, at the cost of plain training.

For the SGD family (plain, momentum, Nesterov, weight decay), training RT's weight is exactly training the
transformed kernel ``Wt`` with the gradient transform (:mod:`refconv.precondition`)

    g <- g @ M + wd * (Wt - Wb)          (the kernel's own weight decay set to 0 in the optimizer)

after which the stock (fused) optimizer applies momentum and the step unchanged. So the model keeps its original
modules and parameters; there is nothing to fold (the trained weights *are* ``Wt``), no extra parameter, and a step
costs a plain step plus one small matrix product per refocused layer.

The start is the explicit layer's: :meth:`ImplicitRefocusing.from_converted` takes a model that
:func:`refconv.convert` converted (so RT's default init draws its random weights from the same RNG, in the same
order, as an explicit run with the same seed), records each layer's basis and groups, and folds the model back.

Usage (any training loop)::

    refconv.convert(model, init="default")            # or the engine's layer selection
    imp = ImplicitRefocusing.from_converted(model, weight_decay=4e-5)
    opt = torch.optim.SGD(imp.param_groups(model, lr=0.1, weight_decay=4e-5), momentum=0.9)
    imp.attach(opt)                                    # the transform runs before every opt.step()

Not exact for Adam-type optimisers (they normalise per coordinate of RT's weight) or with gradient clipping by
norm (the norm is taken over RT's gradients there): the engine refuses the first and warns about the second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .convert import refconv_layers, reparameterize
from .errors import CheckpointError, ConversionError
from .precondition import PRECONDITIONERS, GroupPreconditioner, build_preconditioner

__all__ = ["ImplicitRefocusing", "ImplicitLayer", "EXACT_OPTIMIZERS", "check_optimizer"]

# timm optimizer names whose update is linear in the gradient (SGD; "momentum" = no Nesterov, "sgd" and
# "nesterov" = Nesterov): the preconditioned form is exact for them and only them.
EXACT_OPTIMIZERS = ("sgd", "nesterov", "momentum")


def check_optimizer(opt: str) -> None:
    """Refuse an optimizer for which implicit refocusing is not the same training as RT's."""
    if opt.lower() not in EXACT_OPTIMIZERS:
        raise ConversionError(
            f"implicit refocusing is exact only for the SGD family ({', '.join(EXACT_OPTIMIZERS)}), not {opt!r}: "
            "Adam-type optimisers normalise per coordinate of RT's weight. Use --opt momentum, or "
            "--refocus-impl explicit to train RT itself."
        )


@dataclass
class ImplicitLayer:
    """One refocused conv: its frozen basis ``Wb``, RT's groups and ``map_k``, and its preconditioner."""

    name: str
    basis: Tensor
    groups: int
    map_k: int
    precond: GroupPreconditioner


def _move(layer: ImplicitLayer, like: Tensor) -> None:
    layer.basis = layer.basis.to(device=like.device, dtype=like.dtype)
    pre = layer.precond
    if pre.matrices is not None:
        pre.matrices = pre.matrices.to(device=like.device, dtype=like.dtype)
    if pre.scale is not None:
        pre.scale = pre.scale.to(device=like.device, dtype=like.dtype)


class ImplicitRefocusing:
    """The gradient transform of every refocused layer of one model.

    Args:
        model: the (stock) model whose conv weights are ``Wt``.
        layers: ``{name: (basis, groups, map_k)}``.
        precond: one of :data:`refconv.precondition.PRECONDITIONERS`.
        weight_decay: RT's weight decay ``wd``, applied as ``wd * (Wt - Wb)`` (decay toward the pretrained kernel).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, tuple[Tensor, int, int]], *, precond: str = "exact",
                 weight_decay: float = 0.0) -> None:
        if precond not in PRECONDITIONERS:
            raise ConversionError(f"unknown refocusing preconditioner {precond!r}; use one of "
                                  f"{', '.join(PRECONDITIONERS)}.")
        if not layers:
            raise ConversionError("implicit refocusing needs at least one refocused convolution; none was given.")
        self.precond = precond
        self.weight_decay = float(weight_decay)
        self.layers: list[ImplicitLayer] = []
        self._params: list[nn.Parameter] = []
        for name, (basis, groups, map_k) in layers.items():
            weight = model.get_submodule(name).weight
            if tuple(weight.shape) != tuple(basis.shape):
                raise CheckpointError(f"implicit refocusing: layer '{name}' has weight {tuple(weight.shape)} but its "
                                      f"recorded basis is {tuple(basis.shape)}. Check the model matches the run.")
            basis = basis.detach().to(device=weight.device, dtype=weight.dtype).contiguous()
            pre = build_preconditioner(basis, map_k, groups, precond, where=name)
            self.layers.append(ImplicitLayer(name, basis, int(groups), int(map_k), pre))
            self._params.append(weight)

    # ------------------------------------------------------------------ building
    @classmethod
    @torch.no_grad()
    def from_converted(cls, model: nn.Module, *, precond: str = "exact", weight_decay: float = 0.0) -> ImplicitRefocusing:
        """Record every RefConv layer of ``model`` (basis, groups, ``map_k``), then fold it in place.

        The folded weight is ``Wt0 = Wb + RT0(Wb)``: with RT's default init, the same random start as the explicit
        layer's (same seed, same draws); with zero init, ``Wb`` itself.
        """
        found = refconv_layers(model)
        if not found:
            raise ConversionError("implicit refocusing needs a converted model: refconv.convert(model) first (no "
                                  "RefConv layer found).")
        layers = {name: (layer.basis.detach().clone(), layer.refocus_groups, layer.map_k)
                  for name, layer in found.items()}
        reparameterize(model, inplace=True)
        return cls(model, layers, precond=precond, weight_decay=weight_decay)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild this (the bases: ``Wt`` itself lives in the model's state_dict)."""
        return {"precond": self.precond, "weight_decay": self.weight_decay,
                "layers": {l.name: {"basis": l.basis.cpu(), "groups": l.groups, "map_k": l.map_k}
                           for l in self.layers}}

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: Mapping[str, Any]) -> ImplicitRefocusing:
        layers = {name: (spec["basis"], int(spec["groups"]), int(spec["map_k"]))
                  for name, spec in state["layers"].items()}
        return cls(model, layers, precond=state["precond"], weight_decay=state["weight_decay"])

    # ------------------------------------------------------------------ training
    def parameters(self) -> list[nn.Parameter]:
        """The refocused kernels (``Wt``): the tensors whose gradients are transformed."""
        return list(self._params)

    def param_groups(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """A minimal optimizer grouping: the refocused kernels with weight decay 0 (it is applied toward the
        basis by the transform), everything else with ``weight_decay``."""
        ids = {id(p) for p in self._params}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "weight_decay": weight_decay, "lr": lr},
                {"params": self.parameters(), "weight_decay": 0.0, "lr": lr}]

    @torch.no_grad()
    def transform_grads_(self) -> None:
        """``g <- g @ M + wd * (Wt - Wb)`` on every refocused kernel, in place (a kernel without gradient is left)."""
        for layer, weight in zip(self.layers, self._params):
            grad = weight.grad
            if grad is None:
                continue
            if layer.basis.device != weight.device or layer.basis.dtype != weight.dtype:
                _move(layer, weight)  # the model moved (.to(device), .double()) after this was built
            n = layer.basis.shape[0] * layer.basis.shape[1]
            rows = grad.reshape(n, -1)
            new = layer.precond.apply(rows, layer.basis)
            if self.weight_decay:
                new = new + self.weight_decay * (weight.detach().reshape(n, -1) - layer.basis.reshape(n, -1))
            grad.copy_(new.reshape(grad.shape))

    def attach(self, optimizer: Optimizer) -> Any:
        """Run :meth:`transform_grads_` before every ``optimizer.step()`` (after backward, DDP's all-reduce, AMP's
        unscale and clipping); returns the hook handle."""
        return optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.transform_grads_())

    def check_optimizer_groups(self, optimizer: Optimizer) -> None:
        """Refuse an optimizer that would also decay the refocused kernels toward zero."""
        ids = {id(p) for p in self._params}
        for group in optimizer.param_groups:
            if group.get("weight_decay", 0.0) and any(id(p) in ids for p in group["params"]):
                raise ConversionError("implicit refocusing: the refocused kernels must have weight_decay 0 in the "
                                      "optimizer (their decay is applied toward the basis by the transform). Use "
                                      "ImplicitRefocusing.param_groups or set their group's weight_decay to 0.")

    def names(self) -> Iterable[str]:
        return [l.name for l in self.layers]
