"""Optimizer and learning-rate schedule: timm's factories, with RefConv's own parameter group.

The only RefConv-specific part is the grouping: ``refocus_weight`` tensors (RT) get their own group with
``lr_scale = refocus_lr_mult`` and ``refocus_weight_decay``, because RT is a new tensor trained from scratch
on top of a pretrained model and users tune it separately. Frozen bases (``requires_grad=False``) are left
out of the optimizer entirely, so they can never move, whatever the weight decay.

The schedule is stepped per optimizer update (``step_update(global_step)`` before every step), so the lr
is a pure function of the global step: resuming mid-epoch lands on the same lr as an uninterrupted run.
"""

from __future__ import annotations

from typing import Any

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.optim import Optimizer

from ..errors import ConfigError
from ..layers import RefConv
from .config import RunConfig

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "FUSED_OPTIMIZERS"]

# timm names of optimizers that timm builds from torch.optim classes with a fused implementation (CPU and CUDA).
FUSED_OPTIMIZERS = ("sgd", "nesterov", "momentum", "adam", "adamw")


def param_groups(model: nn.Module, cfg: RunConfig, implicit: Any = None) -> list[dict[str, Any]]:
    """Split trainable parameters into decay / no-decay / refocus groups.

    No-decay holds 1-d tensors (biases, norm scales) when ``filter_bias_and_bn`` (timm's rule). The refocus
    group carries ``lr_scale``, which timm's schedulers multiply into the scheduled lr. With implicit refocusing
    (``implicit``: a :class:`refconv.implicit.ImplicitRefocusing`) the refocus group holds the refocused kernels
    themselves, with weight decay 0: their decay toward the basis is the gradient transform's.
    """
    refocus_ids = {id(m.refocus_weight) for m in model.modules() if isinstance(m, RefConv)}
    implicit_ids = {id(p) for p in implicit.parameters()} if implicit is not None else set()
    refocus_ids |= implicit_ids
    decay, no_decay, refocus = [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in refocus_ids:
            refocus.append(p)
        elif cfg.filter_bias_and_bn and p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    if refocus:
        wd = cfg.weight_decay if cfg.refocus_weight_decay is None else cfg.refocus_weight_decay
        if implicit_ids:
            wd = 0.0
        groups.append({"params": refocus, "weight_decay": wd, "lr_scale": cfg.refocus_lr_mult, "name": "refocus"})
    if not groups:
        raise ConfigError("the model has no trainable parameter: nothing to optimise.")
    return groups


def build_optimizer(model: nn.Module, cfg: RunConfig, implicit: Any = None) -> Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups` at the recipe lr."""
    kwargs: dict[str, Any] = {}
    if cfg.opt.lower() in ("sgd", "nesterov", "momentum", "rmsprop", "rmsproptf", "lars", "lamb"):
        kwargs["momentum"] = cfg.momentum
    if cfg.fused_optimizer and cfg.opt.lower() in FUSED_OPTIMIZERS:
        # One kernel over all parameters instead of a loop of small ops: 2.5x faster on CPU for the 9.7M
        # parameters of a converted MobileNetV3-Small (RT is most of them), which is 20 % of its step.
        kwargs["fused"] = True
    try:
        return create_optimizer_v2(
            param_groups(model, cfg, implicit), opt=cfg.opt, lr=cfg.recipe_lr(), weight_decay=cfg.weight_decay, **kwargs
        )
    except (ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"cannot build optimizer {cfg.opt!r}: {exc}. Use a timm optimizer name, e.g. momentum, "
                          "sgd (Nesterov), adamw.") from None


def build_scheduler(optimizer: Optimizer, cfg: RunConfig, steps_per_epoch: int) -> Any:
    """timm's ``create_scheduler_v2``, stepped per update, warm-up and decay counted in epochs."""
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=max(cfg.epochs, 1),  # a 0-epoch run (evaluate, fold, export) never steps it
            warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr,
            min_lr=cfg.min_lr,
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
        )
    except (ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"cannot build scheduler {cfg.sched!r}: {exc}.") from None
    if scheduler is None:
        raise ConfigError(f"unknown scheduler {cfg.sched!r}. Use one of timm's: cosine, step, multistep, poly, tanh.")
    return scheduler
