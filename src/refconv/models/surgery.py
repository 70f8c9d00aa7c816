"""Small, generic edits of a classifier: its input convolution and its classification head.

timm builds these for any ``in_chans`` / ``num_classes`` itself; torchvision builders do not (and refuse a
non-default ``num_classes`` together with pretrained weights), so the factory builds the stock model and edits
it here. The same helpers locate the stem and head keys when a local weights file is adapted to a model.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ..errors import ModelError

__all__ = [
    "set_submodule",
    "first_conv_names",
    "classifier_names",
    "adapt_input_weight",
    "replace_first_conv",
    "replace_classifier",
]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` (``features.0.0``), replacing what is there."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _as_names(value: object) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[union-attr]


def first_conv_names(model: nn.Module) -> list[str]:
    """Module names of the input convolution(s).

    timm records them in ``pretrained_cfg["first_conv"]``; otherwise it is the first ``nn.Conv2d`` in
    registration order, which is the stem for every torchvision classifier.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = [n for n in _as_names(cfg.get("first_conv")) if _has_module(model, n)]
    if names:
        return names
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return [name]
    return []


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the classification head(s): what ``num_classes`` changes.

    timm: ``pretrained_cfg["classifier"]`` and ``get_classifier()``. Otherwise the last ``nn.Linear`` in
    registration order, plus auxiliary heads (GoogLeNet's ``aux1.fc2``, Inception's ``AuxLogits.fc``) that
    end in a Linear of the same width; SqueezeNet's head is its last ``Conv2d``.
    """
    names: list[str] = []
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names += [n for n in _as_names(cfg.get("classifier")) if _has_module(model, n)]
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            heads = get_classifier()
        except Exception:  # noqa: BLE001 - a model's own get_classifier may raise anything; fall back
            heads = None
        heads = heads if isinstance(heads, (tuple, list)) else [heads]
        ids = {id(h) for h in heads if isinstance(h, nn.Module)}
        for name, module in model.named_modules(remove_duplicate=False):
            if id(module) in ids and name and name not in names:
                names.append(name)
    if names:
        return names
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        last_name, last = linears[-1]
        names = [last_name]
        for name, module in linears[:-1]:
            if name.split(".")[0].lower().startswith("aux") and module.out_features == last.out_features:
                names.append(name)
        return names
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


@torch.no_grad()
def adapt_input_weight(weight: Tensor, in_chans: int) -> Tensor:
    """Turn a stem kernel ``(Cout, C, k, k)`` trained on ``C`` channels into one for ``in_chans`` channels.

    One channel: the sum over the input channels (three times their mean). A grayscale image replicated to
    RGB gives exactly this response through the original kernel, so the pretrained features carry over
    unchanged at the same scale, which averaging would shrink by ``C``. More channels: the kernel is repeated
    cyclically and scaled by ``C / in_chans``, keeping the response to a constant image (timm's rule too).
    """
    c = weight.shape[1]
    if in_chans == c:
        return weight.clone()
    w = weight.float()
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / c)
        out = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_chans] * (c / in_chans)
    return out.to(weight.dtype)


def replace_first_conv(model: nn.Module, in_chans: int, *, adapt_weights: bool) -> str:
    """Make the model take ``in_chans`` input channels by replacing its stem convolution.

    The new conv is a copy of the old one (same class, stride, padding, dilation, padding_mode, bias...) with
    only ``in_channels`` and the weight changed: pretrained weights adapted by :func:`adapt_input_weight`
    when ``adapt_weights``, else freshly initialised.

    Returns:
        The replaced module's name.

    Raises:
        ModelError: no input convolution found, or it is grouped (its channels cannot change alone).
    """
    names = first_conv_names(model)
    if not names:
        raise ModelError(f"cannot set in_chans={in_chans}: {type(model).__name__} has no Conv2d input layer.")
    name = names[0]
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.modules.conv._ConvNd):
        raise ModelError(f"cannot set in_chans={in_chans}: input layer '{name}' is a {type(conv).__name__}.")
    if conv.in_channels == in_chans:
        return name
    if conv.groups != 1:
        raise ModelError(
            f"cannot set in_chans={in_chans}: input conv '{name}' has groups={conv.groups}; only plain convs adapt."
        )
    new = copy.deepcopy(conv)
    new.in_channels = in_chans
    shape = (conv.out_channels, in_chans, *conv.weight.shape[2:])
    if adapt_weights:
        new.weight = nn.Parameter(adapt_input_weight(conv.weight.detach(), in_chans))
    else:
        new.weight = nn.Parameter(torch.empty(shape, dtype=conv.weight.dtype, device=conv.weight.device))
        new.reset_parameters()
    new.weight.requires_grad_(conv.weight.requires_grad)
    set_submodule(model, name, new)
    return name


def replace_classifier(model: nn.Module, num_classes: int) -> list[str]:
    """Give the model a fresh ``num_classes``-way head (input width, bias, dtype and device kept).

    Returns:
        Names of the replaced modules.

    Raises:
        ModelError: no Linear (or SqueezeNet-style Conv2d) head found.
    """
    names = classifier_names(model)
    replaced = []
    for name in names:
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(
                old.in_features,
                num_classes,
                bias=old.bias is not None,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
        elif isinstance(old, nn.Conv2d):
            new = copy.deepcopy(old)
            new.out_channels = num_classes
            new.weight = nn.Parameter(old.weight.new_empty((num_classes, *old.weight.shape[1:])))
            if old.bias is not None:
                new.bias = nn.Parameter(old.bias.new_empty((num_classes,)))
            new.reset_parameters()
        else:
            continue
        set_submodule(model, name, new)
        replaced.append(name)
    if not replaced:
        raise ModelError(f"cannot set num_classes={num_classes}: no Linear classifier found in {type(model).__name__}.")
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return replaced
