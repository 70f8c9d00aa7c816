"""Models for a run: build the stock model, load starting weights, apply the method, rebuild from checkpoints.

The stock architecture always comes from :func:`refconv.models.get_model` by name, so every artefact a
run writes can be turned back into a model from ``(name, num_classes, in_chans)`` alone: plain weights load
into it directly, and a RefConv checkpoint loads after :func:`rebuild_converted` has re-applied the
per-layer conversion recorded in it (``refconv.conversion_config``). Weights go in through the one loader,
:func:`refconv.models.load_checkpoint`.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..convert import convert, plan_conversion
from ..errors import ConfigError, NoEligibleConvError
from ..models import get_model, load_checkpoint, read_state_dict, rebuild_converted, resolve_weights_path
from ..runlayout import DONE_FILE, deployable_weights
from ..transform import capped_groups, default_groups, num_kernels
from .config import RunConfig

__all__ = [
    "create_stock_model",
    "convert_kwargs",
    "groups_spec",
    "apply_conversion",
    "rebuild_converted",
    "load_format_checked",
    "load_start_weights",
    "count_params",
    "check_input_size",
]

# The names engine/publish.py imports from here; the layout itself is refconv.runlayout's.
RUN_DONE_FILE = DONE_FILE
resolve_run_weights = deployable_weights


def create_stock_model(name: str, *, num_classes: int, in_chans: int, pretrained: bool = False) -> nn.Module:
    """The plain architecture by name (``timm/<name>`` or ``tv/<name>``): :func:`refconv.models.get_model`."""
    return get_model(name, num_classes=num_classes, in_chans=in_chans, weights="DEFAULT" if pretrained else None)


_TRY_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 192, 224)


def _forward_fails(model: nn.Module, in_chans: int, size: int) -> str | None:
    """The first line of the error a forward pass at ``size`` raises, or None when it runs."""
    try:
        model(torch.zeros(1, in_chans, size, size))
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return None


@torch.no_grad()
def check_input_size(model: nn.Module, name: str, *, in_chans: int, image_size: int) -> None:
    """Run one eval-mode forward pass on a zero image, so an input too small for the architecture is refused
    before training starts (not as ``Output size is too small`` from deep inside the first step).

    On failure the smallest working size from a short list is named in the fix (only tried then: the
    check costs one forward pass of a single image when the size is fine).

    Raises:
        ConfigError: the model cannot take ``in_chans x image_size x image_size`` inputs.
    """
    was_training = model.training
    model.eval()
    try:
        reason = _forward_fails(model, in_chans, image_size)
        if reason is None:
            return
        works = next((s for s in _TRY_SIZES if s > image_size and _forward_fails(model, in_chans, s) is None), None)
    finally:
        model.train(was_training)
    hint = f"use --image-size {works} or larger" if works else "use a larger --image-size (ImageNet models expect 224)"
    raise ConfigError(
        f"{name} cannot take {in_chans}x{image_size}x{image_size} inputs: a forward pass fails ({reason}). The image "
        f"is too small for the architecture's downsampling: {hint}, or choose a model for small images."
    )


def convert_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The ``refconv.convert`` arguments of a config, as plain JSON-able values (stored in checkpoints)."""
    return {
        "map_k": cfg.map_k,
        "groups": cfg.groups,
        "max_group_size": cfg.max_group_size,
        "init": cfg.init,
        "include": list(cfg.include),
        "exclude": list(cfg.exclude),
        "layers": cfg.layers,
        "basis": cfg.basis,
    }


def groups_spec(groups: int | None, max_group_size: int | None) -> Any:
    if max_group_size is None:
        return groups

    def capped(name: str, conv: nn.Module) -> int:
        n = num_kernels(conv.weight.shape)
        return capped_groups(n, default_groups(conv.in_channels, conv.out_channels, conv.groups), max_group_size)

    return capped


def select_layers(model: nn.Module, kwargs: Mapping[str, Any]) -> list[str]:
    """Names of the convs to convert: ``plan_conversion`` with include/exclude, then the ``layers`` filter.

    ``depthwise``: convs with ``groups == in_channels > 1``; ``dense``: ``groups == 1``; ``no-stem``: all but the
    first eligible conv in module order.
    """
    groups = groups_spec(kwargs.get("groups"), kwargs.get("max_group_size"))
    plans = plan_conversion(model, map_k=kwargs["map_k"], groups=groups, include=kwargs.get("include") or None,
                            exclude=kwargs.get("exclude") or None)
    which = kwargs.get("layers", "all")
    if which == "depthwise":
        plans = [p for p in plans if p.conv_groups > 1 and p.weight_shape[1] == 1]
    elif which == "dense":
        plans = [p for p in plans if p.conv_groups == 1]
    elif which == "no-stem":
        plans = plans[1:]
    if not plans:
        raise NoEligibleConvError(f"layers={which!r} leaves no convolution of this model to convert. Use layers=all.")
    return [p.name for p in plans]


def apply_conversion(model: nn.Module, kwargs: Mapping[str, Any]) -> nn.Module:
    """``refconv.convert`` with :func:`convert_kwargs` (``max_group_size`` becomes a capped-groups rule).

    ``basis="random"`` re-initialises each selected kernel with PyTorch's default conv init before it becomes
    the frozen basis: the paper's ablation of whether the pretrained prior matters.
    """
    names = select_layers(model, kwargs)
    if kwargs.get("basis", "pretrained") == "random":
        with torch.no_grad():
            for name in names:
                nn.init.kaiming_uniform_(model.get_submodule(name).weight, a=math.sqrt(5))
    return convert(
        model,
        map_k=kwargs["map_k"],
        groups=groups_spec(kwargs.get("groups"), kwargs.get("max_group_size")),
        init=kwargs.get("init", "default"),
        include=[glob.escape(n) for n in names],
    )


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def load_format_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """The engine's strict load: :func:`refconv.models.load_checkpoint` (the format check of
    :func:`refconv.convert.check_state_dict_format` first, then keys, shapes, class-count and channel hints),
    never half-loading."""
    load_checkpoint(model, state_dict, source=source, strict=True)


def load_start_weights(model: nn.Module, weights: str | Path) -> str:
    """Load the starting weights of a run into the (plain) ``model``; returns the file loaded, for the log.

    Accepts a pretrained model of the registry (``fmnist/mobilenetv3_small_100``, SHA-256 checked), a finished
    run directory of this engine (its deployable weights), any file or run directory
    :func:`refconv.models.read_state_dict` reads (``.safetensors``, ``.pth``, timm / torchvision / refconv
    checkpoints).

    Raises:
        StateDictFormatError: a RefConv (unfolded) checkpoint where plain weights are needed.
        CheckpointError: missing or corrupt file, unfinished run, weights that do not fit (classes, keys).
    """
    # A registry name becomes its verified weights file (its card's fit was checked by the config), a run
    # directory its deployable weights (refconv.runlayout).
    path = resolve_weights_path(weights)
    load_checkpoint(model, read_state_dict(path), source=str(path), strict=True)
    return str(path)
