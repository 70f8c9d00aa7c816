"""The RefConv layer: a pretrained convolution whose kernel is refocused by a trainable transform.

A :class:`RefConv` wraps the original convolution module (kept as ``.conv``, its class and every
attribute untouched). The original ``weight`` stays where it was and becomes the frozen basis ``Wb``;
the layer adds one trainable tensor, ``refocus_weight`` (``Wr``, the authors' ``convmap.weight`` layout),
and convolves with ``Wt = Wb + RT(Wb)`` through the original module's own forward. Keeping the original
module, rather than re-implementing convolution, is what keeps every subclass's semantics (timm's
``Conv2dSame`` dynamic padding, weight standardisation, ``padding_mode``...) and lets :meth:`fuse` hand
back a module of the original class with the original state_dict keys.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConversionError, StateDictFormatError
from .transform import check_groups, check_map_k, default_groups, num_kernels, refocus, refocus_weight_shape

__all__ = ["RefConv", "INITS", "is_convertible_conv", "match_layout", "refocused_weight"]

INITS = ("default", "zeros")

# Exact classes whose forward is ``_conv_forward(x, self.weight, self.bias)``: called directly (fast path).
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Attributes of the wrapped convolution that read through the RefConv layer, so code that inspects
# ``module.out_channels`` or ``module.stride`` keeps working after conversion.
_DELEGATED = frozenset(
    {
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "bias",
        "transposed",
        "output_padding",
    }
)


def refocused_weight(basis: Tensor, refocus_weight: Tensor, groups: int) -> Tensor:
    """``Wt = Wb + RT(Wb)`` with the basis detached: the one function the layer computes its kernel with.

    Registered with ``torch.fx.wrap``, so symbolic tracing (``torch.fx.symbolic_trace``, torchvision's
    ``create_feature_extractor``, FX graph-mode quantisation) records it as a single ``call_function`` node
    instead of tracing into it: the transform reads tensor shapes at run time (kernel counts, spatial size),
    which a shape-less FX ``Proxy`` cannot answer ("Proxy object cannot be iterated"). Eager mode,
    ``torch.compile`` and ``torch.export`` see real (or fake) tensors and run the transform itself.
    The result has the basis's memory layout (:func:`match_layout`).
    """
    return match_layout(refocus(basis.detach(), refocus_weight, groups), basis)


torch.fx.wrap("refocused_weight")


# Whether an FX symbolic trace is running (module attributes are then ``Proxy`` objects); resolved once here,
# not on every eval forward. The name moved between torch releases.
_FX_TRACING_CHECK = (getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
                     or getattr(torch.fx._symbolic_trace, "is_fx_tracing", None))


def _fx_tracing() -> bool:
    """Whether an FX symbolic trace is running."""
    return bool(_FX_TRACING_CHECK()) if _FX_TRACING_CHECK is not None else False


def is_convertible_conv(module: nn.Module) -> bool:
    """True for ``nn.Conv1d/2d/3d`` and their subclasses (transposed convolutions are not RefConv's domain)."""
    return isinstance(module, _PLAIN_CONVS) and not getattr(module, "transposed", False)


class RefConv(nn.Module):
    """A convolution computing with ``Wt = Wb + RT(Wb)``; ``Wb`` frozen, ``RT`` trainable.

    Args:
        conv: the pretrained convolution (``nn.Conv1d/2d/3d`` or a subclass). It is adopted, not copied:
            its ``weight`` becomes the frozen basis.
        map_k: spatial size of RT's kernel (odd, at most the conv's kernel in every spatial dim).
        groups: RT's groups ``G``; ``None`` is the authors' rule ``Cin*Cout/g**2``. Any divisor of
            ``N = Cout*Cin/g`` is allowed.
        init: ``"default"`` (PyTorch's conv init, as the authors) or ``"zeros"`` (``Wt == Wb`` at start, so
            the converted model computes exactly what the pretrained one did).
        name: qualified name of the layer in its model, used in error messages only.

    The basis is used detached, so it never receives a gradient even if someone sets its
    ``requires_grad``. In eval mode with no gradient needed, ``Wt`` is computed once and reused until a
    parameter changes (tracked by tensor version counters: optimizer steps, ``load_state_dict``, ``.to()``),
    so validating an unfolded model costs what the plain model costs.
    """

    def __init__(
        self,
        conv: nn.Module,
        *,
        map_k: int = 3,
        groups: int | None = None,
        init: str = "default",
        name: str = "",
    ) -> None:
        super().__init__()
        where = f"'{name}'" if name else type(conv).__name__
        _validate_conv(conv, where)
        check_map_k(map_k)
        basis = conv.weight
        spatial = tuple(basis.shape[2:])
        if any(k < map_k for k in spatial):
            raise ConversionError(
                f"map_k={map_k} is larger than the kernel {spatial} of layer {where}: RT's kernel must fit inside "
                f"the kernel in every spatial dim. Use a map_k no larger than {min(spatial)} for this layer, or "
                "leave it out with exclude=..."
            )
        n = num_kernels(basis.shape)
        if groups is None:
            groups = default_groups(conv.in_channels, conv.out_channels, conv.groups)
        check_groups(n, groups, where=name)
        if init not in INITS:
            raise ConversionError(f"init must be one of {INITS}, got {init!r}.")

        self.conv = conv
        self.map_k = map_k
        self.refocus_groups = groups
        self.basis_requires_grad = bool(basis.requires_grad)
        basis.requires_grad_(False)
        self.refocus_weight = nn.Parameter(
            torch.empty(refocus_weight_shape(basis.shape, groups, map_k), dtype=basis.dtype, device=basis.device)
        )
        self.reset_refocus(init)
        self._cache: Tensor | None = None
        self._cache_key: tuple | None = None

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def reset_refocus(self, init: str = "default") -> None:
        """(Re-)initialise ``Wr``: PyTorch's default conv init (the authors') or zeros (exact identity)."""
        if init == "zeros":
            self.refocus_weight.zero_()
        elif init == "default":
            # What nn.ConvNd.reset_parameters does to the authors' ``convmap``.
            nn.init.kaiming_uniform_(self.refocus_weight, a=math.sqrt(5))
        else:
            raise ConversionError(f"init must be one of {INITS}, got {init!r}.")
        self._cache = None

    @property
    def basis(self) -> Tensor:
        """The frozen pretrained kernel ``Wb`` (stored as the wrapped conv's ``weight``)."""
        return self.conv.weight

    def transformed_weight(self) -> Tensor:
        """``Wt = Wb + RT(Wb)``, differentiable w.r.t. ``refocus_weight`` only, in the basis's memory layout."""
        return refocused_weight(self.conv.weight, self.refocus_weight, self.refocus_groups)

    @property
    def weight(self) -> Tensor:
        """The effective kernel ``Wt``, so code that reads ``layer.weight`` sees what the layer computes with."""
        return self.transformed_weight()

    def _forward_weight(self) -> Tensor:
        wr = self.refocus_weight
        if (
            self.training
            or torch.compiler.is_compiling()
            or _fx_tracing()  # a traced graph must compute Wt from its inputs, not capture a cached tensor
            or (torch.is_grad_enabled() and wr.requires_grad)
        ):
            return self.transformed_weight()
        wb = self.conv.weight
        key = (wr._version, wr.data_ptr(), wr.dtype, wr.device, wb._version, wb.data_ptr(), wb.dtype)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self.transformed_weight()
            self._cache_key = key
        return self._cache

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        weight = self._forward_weight()
        conv = self.conv
        if type(conv) in _PLAIN_CONVS:
            return conv._conv_forward(x, weight, conv.bias)
        # Subclasses may override forward (Conv2dSame, StdConv2d...): run their own forward with Wt swapped in.
        return functional_call(conv, {"weight": weight}, (x,))

    # ------------------------------------------------------------------ folding
    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Return a plain module of the original class holding ``Wt`` (timm's re-parameterisation protocol).

        ``Wt`` is computed in float64 (float32 where the device has no float64) and cast to the basis dtype,
        so folding is exact even when training ran in reduced precision. The returned module is a new
        object; this layer stays usable.
        """
        wb = self.conv.weight
        exact = torch.float32 if wb.device.type == "mps" else torch.float64
        wt = match_layout(refocus(wb.to(exact), self.refocus_weight.to(exact), self.refocus_groups).to(wb.dtype), wb)
        folded_weight = nn.Parameter(wt, requires_grad=self.basis_requires_grad)
        # The memo makes deepcopy put the folded weight where the basis was, without copying the basis.
        return copy.deepcopy(self.conv, {id(wb): folded_weight})

    # ------------------------------------------------------------------ module plumbing
    def train(self, mode: bool = True) -> RefConv:
        self._cache = None
        self._cache_key = None
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> RefConv:
        # ``model.to(memory_format=torch.channels_last)`` would make ``Wr`` (N, N/G, k, k) NHWC too, and the
        # transform reads it as an (N, N/G*k*k) matrix: a copy of the largest tensor of the model on every
        # forward and backward. ``Wr`` is not an activation's operand: keep it in the default layout.
        super()._apply(fn, recurse)
        wr = self.refocus_weight
        if not wr.is_contiguous():
            wr.data = wr.data.contiguous()
        self._cache = None
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = None
        state["_cache_key"] = None
        return state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED:
                return getattr(self._modules["conv"], name)
            raise

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if prefix + "conv.weight" not in state_dict and prefix + "weight" in state_dict:
            raise StateDictFormatError(
                f"layer '{prefix[:-1]}' is a RefConv layer but the state_dict holds a folded (plain conv) weight "
                f"'{prefix}weight'. Load folded weights into the plain model (before refconv.convert), or load a "
                "RefConv checkpoint (with '.conv.weight' and '.refocus_weight' keys) here."
            )
        self._cache = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        n = num_kernels(self.conv.weight.shape)
        return f"map_k={self.map_k}, refocus_groups={self.refocus_groups}, kernels={n}"


def match_layout(weight: Tensor, like: Tensor) -> Tensor:
    """``weight`` with the strides of ``like`` when ``like`` is a ``channels_last`` 4-D kernel.

    The transform returns ``Wt`` in the default (NCHW) layout. After ``model.to(memory_format=channels_last)``
    the basis is NHWC, and oneDNN picks its convolution path from the weight's strides: an NCHW ``Wt`` next to
    NHWC activations cost 2-3x the plain model's step on CPU. A depthwise kernel ``(C, 1, k, k)`` is contiguous
    in both layouts and differs only in the stride of its size-1 dim, which ``.contiguous(memory_format=...)``
    does not change: hence the reshape through a 2-D view, which is free when that dim has size 1 and one
    copy otherwise.
    """
    if like.dim() != 4 or weight.shape != like.shape:
        return weight
    o, i, h, w = like.shape
    nhwc = (h * w * i, 1, w * i, i)
    if like.stride() != nhwc or weight.stride() == nhwc:
        return weight
    return weight.permute(0, 2, 3, 1).reshape(o, -1).view(o, h, w, i).permute(0, 3, 1, 2)


def _validate_conv(conv: nn.Module, where: str) -> None:
    if not is_convertible_conv(conv):
        raise ConversionError(
            f"layer {where} is a {type(conv).__name__}; RefConv converts nn.Conv1d/2d/3d and their subclasses."
        )
    if isinstance(conv, RefConv):
        raise ConversionError(f"layer {where} is already a RefConv layer.")
    weight = conv._parameters.get("weight")
    if not isinstance(weight, nn.Parameter):
        raise ConversionError(
            f"layer {where} has no plain 'weight' parameter (parametrized or weight-normed?). Remove the "
            "parametrization (torch.nn.utils.parametrize.remove_parametrizations) before converting."
        )
    if weight.is_meta:
        raise ConversionError(
            f"layer {where} has its weight on the meta device: RefConv needs the pretrained kernel as its basis. "
            "Materialise and load the weights first (model.to_empty(device=...) then load_state_dict)."
        )
    if not weight.is_floating_point():
        raise ConversionError(
            f"layer {where} has a {weight.dtype} weight; RefConv needs a floating-point kernel. Convert before "
            "quantising (fold, then quantise the folded model)."
        )
