"""What every analysis needs from a model, over the public core API: its RefConv layers, the kernels it really
applies, the convolutions an analysis looks at, and whether two models can be compared layer by layer.

Why it matters: a training-time RefConv layer stores the frozen basis ``Wb`` in its child ``.conv`` but applies
``Wt = Wb + RT(Wb)``; an analysis that read ``.conv.weight`` would measure the wrong kernel. So RefConv layers
are recognised by :func:`refconv.refconv_layers` (the core's own definition, not a look-alike test) and folded by
:func:`refconv.reparameterize` on a copy before any weight is read.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

from refconv.convert import refconv_layers, reparameterize
from refconv.errors import CheckpointError, ConfigError, NoEligibleConvError
from refconv.layers import RefConv

__all__ = ["has_refconv_layers", "fold_for_analysis", "eligible_convs", "require_convs", "check_same_architecture",
           "device_of", "check_int", "check_float", "first_batches", "takes_options_of"]

T = TypeVar("T")
Fn = TypeVar("Fn", bound=Callable)


def has_refconv_layers(model: nn.Module) -> bool:
    """Whether ``model`` holds training-time RefConv layers (which must be folded before weight analysis)."""
    return bool(refconv_layers(model))


def fold_for_analysis(model: nn.Module) -> tuple[nn.Module, bool]:
    """Return a model whose convolutions hold the weights the network really applies.

    Models with RefConv layers are folded on a deep copy (the caller's model is untouched); plain models are
    returned as they are.

    Returns:
        ``(model_to_analyse, folded)`` where ``folded`` says whether a folded copy was made.
    """
    if not has_refconv_layers(model):
        return model, False
    return reparameterize(model, inplace=False), True


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s tensors live (CPU for a model without any): inputs must be moved there."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def first_batches(batches: Iterable[T], max_batches: int | None) -> Iterator[T]:
    """The batches of ``batches`` before index ``max_batches`` (all of them for ``None``)."""
    for b, batch in enumerate(batches):
        if max_batches is not None and b >= max_batches:
            break
        yield batch


def takes_options_of(source: Callable) -> Callable[[Fn], Fn]:
    """Decorator: the function (``f(a, b, *, own=..., **options)``) takes exactly ``source``'s keyword-only options,
    with the same names and defaults.

    A side-by-side function (``compare_x``) that only forwards the options of the one-model function (``x``)
    declares them once, there. The decorated function shows the combined signature (its positional
    parameters, then ``source``'s options), refuses an unknown keyword with ``TypeError`` as any call does,
    and receives every option with its default applied (its own keyword-only ones by name, the rest in
    ``options``).
    """
    shared = [p for p in inspect.signature(source).parameters.values() if p.kind is p.KEYWORD_ONLY]

    def decorate(fn: Fn) -> Fn:
        own = inspect.signature(fn)
        positional = [p for p in own.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        sig = own.replace(parameters=[*positional, *shared])

        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> object:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:  # as a plain call says it, naming the function
                raise TypeError(f"{fn.__name__}() {exc}") from None
            bound.apply_defaults()
            return fn(*bound.args, **bound.kwargs)

        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _is_plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd)


def _named_modules_outside_refconv(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` that does not descend into RefConv layers (their ``.conv`` is only a basis)."""
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        yield name, module
        if isinstance(module, RefConv):
            continue
        for child_name, child in reversed(list(module.named_children())):
            stack.append((f"{name}.{child_name}" if name else child_name, child))


def eligible_convs(
    model: nn.Module, *, min_kernel_size: int = 3, min_out_channels: int = 1
) -> dict[str, nn.modules.conv._ConvNd]:
    """Name -> convolution for every convolution the weight analyses look at.

    Eligible: ``nn.Conv1d/2d/3d`` and their subclasses (timm's ``Conv2dSame``...; transposed convolutions
    excluded) whose kernel is at least ``min_kernel_size`` in every spatial dimension and that have at least
    ``min_out_channels`` output channels. The default ``min_kernel_size=3`` selects the layers RefConv
    converts with its default ``map_k=3``; pass 1 to include pointwise convolutions. The basis inside a
    RefConv layer is never eligible (fold the model first: :func:`fold_for_analysis`).

    Args:
        model: A model without RefConv layers (see :func:`fold_for_analysis`).
        min_kernel_size: Smallest kernel size, in every spatial dimension, of an eligible layer (>= 1).
        min_out_channels: Smallest number of output channels of an eligible layer (>= 1).

    Returns:
        Ordered mapping of qualified module names to convolutions.

    Raises:
        ConfigError: A bound is out of range.
    """
    check_int("min_kernel_size", min_kernel_size, 1, 1_000)
    check_int("min_out_channels", min_out_channels, 1, 1_000_000)
    return {name: module for name, module in _named_modules_outside_refconv(model)
            if _is_plain_conv(module) and min(module.kernel_size) >= min_kernel_size
            and module.out_channels >= min_out_channels}


def require_convs(
    model: nn.Module, *, min_kernel_size: int, min_out_channels: int, what: str
) -> dict[str, nn.modules.conv._ConvNd]:
    """:func:`eligible_convs`, refusing a model with none (naming the bound to lower)."""
    convs = eligible_convs(model, min_kernel_size=min_kernel_size, min_out_channels=min_out_channels)
    if not convs:
        n_conv = sum(1 for m in model.modules() if _is_plain_conv(m))
        raise NoEligibleConvError(
            f"{what}: the model ({type(model).__name__}) has no convolution with a kernel of at least "
            f"{min_kernel_size} in every spatial dimension and at least {min_out_channels} output channels "
            f"({n_conv} convolution(s) in total); pass a smaller min_kernel_size (1 includes pointwise convs) "
            "or a model with convolutions"
        )
    return convs


def check_same_architecture(
    a: nn.Module, b: nn.Module, *, names: tuple[str, str] = ("baseline", "refconv")
) -> None:
    """Raise if two (folded) models do not have the same parameters and buffers with the same shapes.

    Comparisons (redundancy per layer, interpolation between the models) are only meaningful layer by layer;
    the error lists which entries differ so a mismatched checkpoint is easy to spot.

    Args:
        a: First model (folded, see :func:`fold_for_analysis`).
        b: Second model (folded).
        names: How the two models are called in the error message.

    Raises:
        CheckpointError: Names or shapes differ; the message lists up to 10 differences of each kind.
    """
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    only_a = [k for k in sa if k not in sb]
    only_b = [k for k in sb if k not in sa]
    shapes = [f"{k}: {sa[k]} vs {sb[k]}" for k in sa if k in sb and sa[k] != sb[k]]
    if not (only_a or only_b or shapes):
        return
    parts = []
    for label, items in (
        (f"only in {names[0]}", only_a),
        (f"only in {names[1]}", only_b),
        (f"shape differs ({names[0]} vs {names[1]})", shapes),
    ):
        if items:
            shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
            parts.append(f"{label}: {shown}")
    raise CheckpointError(
        f"the {names[0]} and {names[1]} models have different architectures; " + "; ".join(parts)
        + ". Load both checkpoints into the same architecture (and fold RefConv checkpoints first)"
    )


def check_int(name: str, value: int, low: int, high: int) -> None:
    """Refuse an option that is not an integer in ``[low, high]`` (one line naming it and the range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is out of range: expected an integer in [{low}, {high}]")


def check_float(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """Refuse an option that is not a number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (low < v if low_open else low <= v) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name}={value!r} is out of range: expected a number in {bracket}{low}, {high}]")
