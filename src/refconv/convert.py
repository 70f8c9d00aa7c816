"""Model surgery: turn a pretrained model's convolutions into RefConv layers and fold them back.

``convert`` works on any ``nn.Module``: it walks a snapshot of ``named_modules()`` (so it never recurses
into what it creates), validates the whole plan before touching the model (so a bad layer leaves nothing
half-converted), then swaps each selected convolution for a :class:`~refconv.layers.RefConv` that adopts
it. ``reparameterize`` swaps each RefConv for ``layer.fuse()``: a module of the original class holding
``Wt``, under the original attribute name, so the folded model's state_dict is the stock model's.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from .errors import AlreadyConvertedError, ConversionError, NoEligibleConvError, StateDictFormatError
from .layers import INITS, RefConv, _validate_conv, is_convertible_conv
from .transform import check_map_k, default_groups, num_kernels

__all__ = [
    "convert",
    "reparameterize",
    "plan_conversion",
    "LayerPlan",
    "refconv_layers",
    "conversion_config",
    "state_dict_format",
    "check_state_dict_format",
    "load_state_dict",
    "RefConvWarning",
]

Patterns = Union[str, Iterable[str], None]
GroupsSpec = Union[int, Callable[[str, nn.Module], Union[int, None]], None]


class RefConvWarning(UserWarning):
    """Something worth knowing that is not an error (e.g. folding a model with nothing to fold)."""


@dataclass(frozen=True)
class LayerPlan:
    """What ``convert`` will do to one convolution (also what ``refconv convert-info`` prints)."""

    name: str
    module_class: str
    weight_shape: tuple[int, ...]
    conv_groups: int
    kernels: int  # N = Cout * Cin / g
    refocus_groups: int  # G
    map_k: int

    @property
    def refocus_params(self) -> int:
        """Trainable weights RT adds: ``N * N/G * map_k**d``."""
        spatial = len(self.weight_shape) - 2
        return self.kernels * (self.kernels // self.refocus_groups) * self.map_k**spatial

    @property
    def basis_params(self) -> int:
        out = 1
        for s in self.weight_shape:
            out *= s
        return out


def _as_patterns(patterns: Patterns, arg: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    if not all(isinstance(p, str) for p in out):
        raise ConversionError(f"{arg} must be a glob pattern or a list of them, got {patterns!r}.")
    return out


def _ancestry(name: str) -> list[str]:
    """``'a.b.c'`` -> ``['a', 'a.b', 'a.b.c']``: a pattern naming a container selects every conv inside it."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))] if name else [""]


def _matches(name: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if any(fnmatch.fnmatchcase(a, p) for a in _ancestry(name))]


def _inside_refconv(name: str, refconv_names: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in refconv_names)


def _check_patterns_match(model: nn.Module, modules: list[tuple[str, nn.Module]],
                          convs: list[tuple[str, nn.Module]], inc: list[str], exc: list[str]) -> None:
    """Refuse an include / exclude pattern that matches no module (naming a few convolutions as examples)."""
    all_names = [n for n, _ in modules]
    for arg, pats in (("include", inc), ("exclude", exc)):
        for p in pats:
            if not any(fnmatch.fnmatchcase(n, p) for n in all_names):
                sample = ", ".join(repr(n) for n, _ in convs[:5]) or "(none)"
                raise ConversionError(
                    f"{arg} pattern {p!r} matches no module of this {type(model).__name__}. Patterns are globs "
                    f"over qualified names as in named_modules(); convolutions here are named like {sample}."
                )


def _is_selected(name: str, conv: nn.Module, map_k: int, inc: list[str], exc: list[str]) -> bool:
    """Whether the patterns and the kernel size select ``conv``; a conv named by ``include`` but smaller than
    ``map_k`` is an error."""
    if exc and _matches(name, exc):
        return False
    weight = getattr(conv, "weight", None)
    spatial = tuple(weight.shape[2:]) if isinstance(weight, torch.Tensor) else ()
    too_small = not spatial or any(k < map_k for k in spatial)
    if not inc:
        return not too_small
    if not _matches(name, inc):
        return False
    # Named explicitly (not just through a container): a kernel too small for map_k is the user's
    # error, not a silent skip.
    if any(fnmatch.fnmatchcase(name, p) for p in inc):
        if spatial and any(k < map_k for k in spatial):
            raise ConversionError(
                f"layer '{name}' was selected by include but its kernel {spatial} is smaller than "
                f"map_k={map_k}. Use map_k <= {min(spatial)}, or exclude it."
            )
        return True
    return not too_small


def _refuse_empty_selection(model: nn.Module, convs: list[tuple[str, nn.Module]], refconv_names: list[str],
                            map_k: int, inc: list[str], exc: list[str]) -> None:
    """Raise the error that says why nothing was selected: already converted, or no eligible convolution."""
    if refconv_names and not _convs_selectable(convs, map_k, exc):
        raise AlreadyConvertedError(
            f"the model is already converted ({len(refconv_names)} RefConv layers, e.g. '{refconv_names[0]}') "
            "and has no other eligible convolution. Train it, or fold it with refconv.reparameterize() "
            "before converting again."
        )
    kernels = sorted({tuple(m.weight.shape[2:]) for _, m in convs if hasattr(m, "weight")})
    raise NoEligibleConvError(
        f"no convolution of this {type(model).__name__} can be converted with map_k={map_k}"
        + (f", include={inc}" if inc else "")
        + (f", exclude={exc}" if exc else "")
        + f". Found {len(convs)} unconverted nn.Conv1d/2d/3d"
        + (f" with kernels {kernels}" if kernels else "")
        + ". RefConv needs kernels at least map_k in every spatial dim; lower map_k (odd) or check the patterns."
    )


def _layer_plan(name: str, conv: nn.Module, groups: GroupsSpec, map_k: int) -> LayerPlan:
    g = _resolve_groups(groups, name, conv)
    return LayerPlan(
        name=name,
        module_class=type(conv).__name__,
        weight_shape=tuple(conv.weight.shape),
        conv_groups=conv.groups,
        kernels=num_kernels(conv.weight.shape),
        refocus_groups=g,
        map_k=map_k,
    )


def plan_conversion(
    model: nn.Module,
    *,
    map_k: int = 3,
    groups: GroupsSpec = None,
    include: Patterns = None,
    exclude: Patterns = None,
) -> list[LayerPlan]:
    """Decide, without changing the model, which convolutions ``convert`` would turn into RefConv layers.

    Raises the same errors ``convert`` would; see :func:`convert` for the arguments.
    """
    check_map_k(map_k)
    inc = _as_patterns(include, "include")
    exc = _as_patterns(exclude, "exclude")
    modules = list(model.named_modules())  # snapshot
    refconv_names = [n for n, m in modules if isinstance(m, RefConv)]
    convs = [
        (n, m) for n, m in modules if is_convertible_conv(m) and not _inside_refconv(n, refconv_names)
    ]
    _check_patterns_match(model, modules, convs, inc, exc)
    selected: list[tuple[str, nn.Module]] = []
    for name, conv in convs:
        if _is_selected(name, conv, map_k, inc, exc):
            _validate_conv(conv, f"'{name}'")
            selected.append((name, conv))
    if not selected:
        _refuse_empty_selection(model, convs, refconv_names, map_k, inc, exc)
    return [_layer_plan(name, conv, groups, map_k) for name, conv in selected]


def _convs_selectable(convs: list[tuple[str, nn.Module]], map_k: int, exc: list[str]) -> bool:
    """Whether any unconverted conv would be eligible by kernel size (used to tell 'already converted' apart)."""
    return any(
        all(k >= map_k for k in m.weight.shape[2:]) and not (exc and _matches(n, exc))
        for n, m in convs
        if hasattr(m, "weight")
    )


def _resolve_groups(groups: GroupsSpec, name: str, conv: nn.Module) -> int:
    g = groups(name, conv) if callable(groups) else groups
    if g is None:
        g = default_groups(conv.in_channels, conv.out_channels, conv.groups)
    n = num_kernels(conv.weight.shape)
    if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or n % g:
        raise ConversionError(
            f"groups={g!r} for layer '{name}' does not divide its N={n} kernels (Cout*Cin/g). Use a divisor "
            f"of {n}, None for the authors' rule (here {default_groups(conv.in_channels, conv.out_channels, conv.groups)}), "
            "or a callable returning refconv.capped_groups(N, base_groups, max_group_size) to bound RT's size "
            "(`refconv train --max-group-size K` does this)."
        )
    return g


def convert(
    model: nn.Module,
    *,
    map_k: int = 3,
    groups: GroupsSpec = None,
    init: str = "default",
    include: Patterns = None,
    exclude: Patterns = None,
    inplace: bool = True,
) -> nn.Module:
    """Turn every eligible convolution of ``model`` into a :class:`RefConv` layer with its weight as frozen basis.

    Eligible by default: every ``nn.Conv1d/2d/3d`` (subclasses included) whose every spatial kernel dim is at
    least ``map_k``, and that is not already inside a RefConv layer (so a second call never double-wraps;
    it may convert further layers selected by ``include``).

    The model is changed **in place** and returned (with ``inplace=False`` a deep copy is converted and the
    original is left alone). When ``model`` itself is a convolution, the new RefConv layer is returned.

    Args:
        model: any module holding convolutions, with its pretrained weights loaded.
        map_k: RT's kernel size: a positive odd int (authors: 3).
        groups: RT's groups. ``None``: the authors' rule ``G = Cin*Cout/g**2`` per layer. An int: that ``G``
            for every layer (must divide each layer's ``N``). A callable ``(name, conv) -> int | None`` per layer.
        init: ``"default"`` (PyTorch conv init, the authors' choice) or ``"zeros"`` (the converted model starts
            computing exactly what the pretrained one did).
        include: glob pattern(s) over qualified module names (``named_modules()``); a pattern that names a
            container selects every conv inside it. Explicitly included convs smaller than ``map_k`` are an error.
        exclude: glob pattern(s) of modules to leave plain; wins over ``include``.
        inplace: convert ``model`` itself (default) or a deep copy.

    Returns:
        The converted model.

    Raises:
        ConversionError: invalid ``map_k``/``groups``/``init``, a pattern matching nothing, a meta or
            non-float weight. Raised before anything is changed.
        AlreadyConvertedError: the model is already converted and nothing else is selected.
        NoEligibleConvError: nothing to convert.
    """
    if init not in INITS:
        raise ConversionError(f"init must be one of {INITS}, got {init!r}.")
    if isinstance(model, RefConv):
        raise AlreadyConvertedError("this module is already a RefConv layer; fold it with reparameterize() first.")
    if is_convertible_conv(model):
        plans = plan_conversion(model, map_k=map_k, groups=groups, include=include, exclude=exclude)
        return RefConv(model if inplace else copy.deepcopy(model), map_k=map_k, groups=plans[0].refocus_groups, init=init)

    plans = plan_conversion(model, map_k=map_k, groups=groups, include=include, exclude=exclude)
    if not inplace:
        model = copy.deepcopy(model)
    # Build every layer first: any failure (dtype, meta...) leaves the model untouched.
    built: dict[int, RefConv] = {}
    try:
        for plan in plans:
            conv = model.get_submodule(plan.name)
            if id(conv) not in built:  # a conv shared by two parents is converted once and stays shared
                built[id(conv)] = _build(conv, plan, init)
    except Exception:
        for layer in built.values():  # undo the freezing RefConv.__init__ did
            layer.conv.weight.requires_grad_(layer.basis_requires_grad)
        raise
    _swap(model, lambda m: built.get(id(m)))
    return model


def _build(conv: nn.Module, plan: LayerPlan, init: str) -> RefConv:
    return RefConv(conv, map_k=plan.map_k, groups=plan.refocus_groups, init=init, name=plan.name)


def _swap(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every child ``c`` for which ``replacement(c)`` is a module; returns how many were replaced."""
    count = 0
    parents = [m for _, m in model.named_modules(remove_duplicate=False)]
    seen: set[int] = set()
    for parent in parents:
        if id(parent) in seen:
            continue
        seen.add(id(parent))
        for child_name, child in list(parent._modules.items()):  # not named_children(): it hides shared ones
            new = replacement(child) if child is not None else None
            if new is not None:
                setattr(parent, child_name, new)
                count += 1
    return count


def reparameterize(model: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Fold every RefConv layer into a plain convolution of the original class holding ``Wt``.

    The result has exactly the original model's state_dict keys, shapes, module classes and parameter
    count, loads with ``strict=True`` into a freshly built stock model, and reproduces the converted
    model's outputs. Folding is computed in float64 and cast back to the weights' dtype.

    The model is changed **in place** and returned (``inplace=False`` folds a deep copy). When ``model``
    itself is a RefConv layer, the folded convolution is returned. A model with nothing to fold is
    returned unchanged with a :class:`RefConvWarning`.
    """
    if isinstance(model, RefConv):
        return model.fuse()
    layers = refconv_layers(model)
    if not layers:
        warnings.warn(
            f"reparameterize: this {type(model).__name__} has no RefConv layer, nothing to fold; returned unchanged.",
            RefConvWarning,
            stacklevel=2,
        )
        return model
    if not inplace:
        model = copy.deepcopy(model)
    folded: dict[int, nn.Module] = {}

    def _fold(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, RefConv):
            return None
        if id(m) not in folded:
            folded[id(m)] = m.fuse()
        return folded[id(m)]

    _swap(model, _fold)
    return model


def refconv_layers(model: nn.Module) -> dict[str, RefConv]:
    """The model's RefConv layers by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RefConv)}


def conversion_config(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-layer ``{"map_k", "groups"}`` of a converted model: enough to rebuild it with :func:`convert`."""
    return {n: {"map_k": m.map_k, "groups": m.refocus_groups} for n, m in refconv_layers(model).items()}


def state_dict_format(state_dict: Mapping[str, Any]) -> str:
    """``"refconv"`` for a converted model's state_dict (holds ``*.refocus_weight`` keys), else ``"plain"``."""
    return "refconv" if any(k.endswith(".refocus_weight") or k == "refocus_weight" for k in state_dict) else "plain"


def check_state_dict_format(model: nn.Module, state_dict: Mapping[str, Any], *, source: str = "the state_dict") -> None:
    """Refuse a state_dict whose format (folded vs RefConv) is not the model's: the one format check of refconv
    (``load_state_dict``, :func:`refconv.models.load_state_dict_checked`, the engine and the downstream loaders
    all call it), so every place says the same thing and names the same fixes.

    Raises:
        StateDictFormatError: naming ``source``, the format found and what to do instead.
    """
    found = state_dict_format(state_dict)
    if found == state_dict_format(model.state_dict()):  # the model's format is its own state_dict's
        return
    if found == "refconv":
        raise StateDictFormatError(
            f"{source} is a RefConv (unfolded) checkpoint (it holds '*.refocus_weight' keys), but the model is plain. "
            "Fold it (`refconv fold` on its run, or refconv.reparameterize on the converted model) and load the folded "
            "weights, or convert the model first with refconv.convert(model, ...) using the same map_k/groups."
        )
    raise StateDictFormatError(
        f"{source} is a folded (plain) checkpoint, but the model holds RefConv layers. Load it into the plain model "
        "before refconv.convert(), or fold the model with refconv.reparameterize() first."
    )


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True) -> Any:
    """``model.load_state_dict`` that first checks both sides are in the same format (folded vs RefConv).

    Raises:
        StateDictFormatError: naming the format found and what to do instead.
    """
    check_state_dict_format(model, state_dict)
    return model.load_state_dict(dict(state_dict), strict=strict)
