"""Refocusing Learning in its preconditioned form: pure functions on tensors.

With the basis frozen, ``Wt = Wb + RT(Wb)`` is *linear* in RT's weight. For one RT group holding ``s`` kernels,
write the group's kernels as rows (``s x K``, ``K`` = positions per kernel) and ``P`` for the group's patch matrix
(``s*m x K``: row ``c*m + q`` is kernel ``c`` of the group seen at offset ``q`` of RT's ``m``-position window, zero
outside the kernel). Then ``Wt = Wb + Wr @ P`` with ``Wr`` the group's ``s x s*m`` slice of RT's weight, and

    dL/dWr = g @ P.T                  (g = dL/dWt, one row per kernel)

so an SGD step on ``Wr`` (momentum, Nesterov and weight decay are linear too) moves ``Wt`` by

    u <- mu*u + g @ M + wd*(Wt - Wb)        Wt <- Wt - lr*u        M = P.T @ P   (K x K per group)

Training RT is *exactly* training ``Wt`` with a fixed per-group preconditioner ``M`` and weight decay toward the
pretrained kernel. That is the whole of :mod:`refconv.implicit`; this module builds the ``M`` s and applies them.

Preconditioners (the ``precond`` argument), each a statement about what refocusing does:

- ``exact``: ``M = P.T @ P``, what training RT does.
- ``normalized``: ``M / lambda_max(M)``: the refocusing directions with a step never longer than a plain step.
- ``geometry``: the ``M`` of an all-ones kernel, scaled to the group's trace: RT's zero-padding geometry without
  the pretrained prior.
- ``isotropic``: ``trace(M)/K * I``: RefConv's average step size with no preferred direction (plain training at
  RefConv's step size).

Storage: a depthwise layer has one group (``K x K``, tiny next to RT's ``C*C*m`` weights); a dense layer has one
group *per kernel*, and ``N`` matrices of ``K x K`` would cost ``K/m`` times RT itself. So ``exact`` and
``normalized`` keep ``M`` where it is no larger than RT's weight and are otherwise applied as ``(g @ P.T) @ P``
from the stored basis (:class:`GroupPreconditioner` decides); ``geometry`` and ``isotropic`` need one shared
``K x K`` matrix and one scale per group.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConversionError
from .transform import check_groups, num_kernels

__all__ = [
    "PRECONDITIONERS",
    "patch_stack",
    "gram_matrices",
    "group_spectrum",
    "GroupPreconditioner",
    "build_preconditioner",
]

PRECONDITIONERS = ("exact", "normalized", "geometry", "isotropic")


def patch_stack(basis: Tensor, map_k: int) -> Tensor:
    """``(N, m, K)``: kernel ``n`` seen at each of the ``m = map_k**d`` offsets of RT's window (zero padded).

    Entry ``[n, q, p]`` is the value that RT's tap ``q`` reads when it computes position ``p`` of kernel ``n``'s
    output: ``RT(Wb)[o, p] = sum_{c, q} Wr[o, c, q] * stack[c, q, p]`` (over the kernels ``c`` of ``o``'s group).
    Any number of spatial dims (1-3); equals :func:`refconv.transform.kernel_patches` reshaped, for 1-D and 2-D.
    """
    n = num_kernels(basis.shape)
    spatial = tuple(basis.shape[2:])
    pad = map_k // 2
    image = basis.reshape(n, *spatial)
    padded = F.pad(image, [pad, pad] * len(spatial))
    taps = []
    for offset in itertools.product(range(map_k), repeat=len(spatial)):
        window = padded[(slice(None),) + tuple(slice(o, o + k) for o, k in zip(offset, spatial))]
        taps.append(window.reshape(n, -1))
    return torch.stack(taps, dim=1)


def _group_patches(basis: Tensor, map_k: int, groups: int) -> Tensor:
    """``(G, s*m, K)``: each group's patch matrix ``P``."""
    stack = patch_stack(basis, map_k)
    n, m, k = stack.shape
    return stack.reshape(groups, (n // groups) * m, k)


def gram_matrices(basis: Tensor, map_k: int, groups: int) -> Tensor:
    """``(G, K, K)``: ``M = P.T @ P`` for every RT group of a basis (the exact refocusing preconditioner)."""
    check_groups(num_kernels(basis.shape), groups)
    p = _group_patches(basis, map_k, groups)
    return p.transpose(1, 2) @ p


def group_spectrum(basis: Tensor, map_k: int, groups: int, *, chunk: int = 4096) -> dict[str, Tensor]:
    """Per group: the largest and smallest eigenvalue and the trace of ``M`` (float64), and ``diag(M)``.

    Computed in chunks of groups, so a dense layer's ``N`` small matrices never exist all at once.
    """
    check_groups(num_kernels(basis.shape), groups)
    p_all = _group_patches(basis.detach().double(), map_k, groups)
    top, bottom, trace, diag = [], [], [], []
    for start in range(0, groups, chunk):
        p = p_all[start:start + chunk]
        m = p.transpose(1, 2) @ p
        eig = torch.linalg.eigvalsh(m)
        top.append(eig[:, -1])
        bottom.append(eig[:, 0])
        trace.append(eig.sum(-1))
        diag.append(torch.diagonal(m, dim1=-2, dim2=-1))
    return {"max": torch.cat(top), "min": torch.cat(bottom), "trace": torch.cat(trace), "diag": torch.cat(diag)}


@dataclass
class GroupPreconditioner:
    """``g -> g @ M_g`` for every RT group of one layer, in whichever form is cheapest.

    Exactly one of ``matrices`` (``(G, K, K)``, or ``(1, K, K)`` shared by every group) and ``map_k`` (the
    factored form ``(g @ P.T) @ P``, ``P`` recomputed from ``basis``) is used; ``scale`` (``(G,)`` or None)
    multiplies each group's result.
    """

    groups: int
    matrices: Tensor | None = None
    map_k: int | None = None
    scale: Tensor | None = None

    def apply(self, grad_rows: Tensor, basis: Tensor) -> Tensor:
        """``grad_rows`` (``N x K``) preconditioned group by group; ``basis`` is the layer's frozen kernel."""
        n, k = grad_rows.shape
        g = grad_rows.reshape(self.groups, n // self.groups, k)
        if self.matrices is not None:
            out = g @ self.matrices.to(g.dtype)
        else:
            p = _group_patches(basis.to(g.dtype), self.map_k, self.groups)
            out = (g @ p.transpose(1, 2)) @ p
        if self.scale is not None:
            out = out * self.scale.to(g.dtype).reshape(-1, 1, 1)
        return out.reshape(n, k)

    def matrix(self, basis: Tensor) -> Tensor:
        """The ``(G, K, K)`` matrices this applies (materialised: for tests and reports only)."""
        k = basis[0, 0].numel()
        n = num_kernels(basis.shape)
        size = n // self.groups
        out = []
        for j in range(k):  # row j of every group's matrix: apply it to the unit gradient e_j on the group's 1st kernel
            g = torch.zeros(self.groups, size, k, dtype=torch.float64, device=basis.device)
            g[:, 0, j] = 1.0
            out.append(self.apply(g.reshape(n, k), basis.double()).reshape(self.groups, size, k)[:, 0, :])
        return torch.stack(out, dim=1)


def build_preconditioner(basis: Tensor, map_k: int, groups: int, precond: str = "exact", *,
                         where: str = "") -> GroupPreconditioner:
    """The :class:`GroupPreconditioner` of one layer for ``precond`` (one of :data:`PRECONDITIONERS`).

    Raises:
        ConversionError: unknown ``precond``; ``normalized`` on a group whose ``M`` is zero (an all-zero basis:
            there is no step to normalise).
    """
    if precond not in PRECONDITIONERS:
        raise ConversionError(f"unknown refocusing preconditioner {precond!r}; use one of {', '.join(PRECONDITIONERS)}.")
    n = num_kernels(basis.shape)
    check_groups(n, groups, where=where)
    k = basis[0, 0].numel()
    m = map_k ** (basis.dim() - 2)
    size = n // groups
    basis64 = basis.detach().double()
    # M per group costs G*K*K; RT's weight N*s*m. Keep M where it is no larger, else apply P twice.
    store_matrices = groups * k * k <= n * size * m
    if precond == "exact":
        if store_matrices:
            return GroupPreconditioner(groups, matrices=gram_matrices(basis64, map_k, groups).to(basis.dtype))
        return GroupPreconditioner(groups, map_k=map_k)
    spec = group_spectrum(basis64, map_k, groups)
    loc = f" of layer '{where}'" if where else ""
    if precond == "normalized":
        top = spec["max"]
        if bool((top <= 0).any()):
            raise ConversionError(
                f"cannot normalise refocusing{loc}: {int((top <= 0).sum())} RT group(s) have M = 0 (an all-zero "
                "basis, which refocusing cannot move). Exclude the layer (--exclude NAME) or use --refocus-precond "
                "exact."
            )
        if store_matrices:
            mats = gram_matrices(basis64, map_k, groups) / top.reshape(-1, 1, 1)
            return GroupPreconditioner(groups, matrices=mats.to(basis.dtype))
        return GroupPreconditioner(groups, map_k=map_k, scale=(1.0 / top).to(basis.dtype))
    if precond == "geometry":
        ones = torch.ones((1, 1) + tuple(basis.shape[2:]), dtype=torch.float64, device=basis.device)
        shape_m = gram_matrices(ones, map_k, 1)  # (1, K, K): the padding geometry alone
        scale = spec["trace"] / torch.diagonal(shape_m[0]).sum()
        return GroupPreconditioner(groups, matrices=shape_m.to(basis.dtype), scale=scale.to(basis.dtype))
    eye = torch.eye(k, dtype=basis.dtype, device=basis.device).unsqueeze(0)
    return GroupPreconditioner(groups, matrices=eye, scale=(spec["trace"] / k).to(basis.dtype))
