"""The refocusing transform as pure functions on tensors.

Nothing here knows about modules: these functions take a basis weight ``Wb`` of shape
``(Cout, Cin/g, *k)`` and a refocusing weight ``Wr`` of shape ``(N, N/G, *map_k)`` (``N = Cout*Cin/g``)
and return ``Wt = Wb + RT(Wb)``, where ``RT`` is a grouped convolution that looks at the ``N`` kernels
as one image with ``N`` channels. The layout of ``Wr`` is the authors' (their ``convmap.weight``), so their
checkpoints map onto ours one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConversionError

__all__ = [
    "num_kernels",
    "default_groups",
    "capped_groups",
    "check_map_k",
    "check_groups",
    "refocus_weight_shape",
    "refocus",
    "refocus_increment",
    "kernel_patches",
]

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def num_kernels(weight_shape: Sequence[int]) -> int:
    """Number ``N = Cout * Cin/g`` of spatial kernels held by a conv weight of this shape."""
    return int(weight_shape[0]) * int(weight_shape[1])


def default_groups(in_channels: int, out_channels: int, groups: int) -> int:
    """The authors' grouping rule ``G = Cin * Cout / g**2``.

    Each RT group then sees ``g`` consecutive kernels: a depthwise layer (``g = C``) gets ``G = 1`` (every
    kernel is refocused on all ``C`` kernels), a dense layer (``g = 1``) gets ``G = N`` (each kernel is
    refocused only on itself).
    """
    return in_channels * out_channels // (groups * groups)


def capped_groups(n: int, base_groups: int, max_group_size: int) -> int:
    """Smallest ``G >= base_groups`` dividing ``n`` with at most ``max_group_size`` kernels per group.

    Used to cap the quadratic cost of the authors' rule on wide depthwise layers (``Wr`` holds
    ``N * (N/G) * map_k**d`` weights).
    """
    if max_group_size < 1:
        raise ConversionError(f"max_group_size must be >= 1, got {max_group_size}.")
    g = max(1, base_groups)
    while g <= n:
        if n % g == 0 and n // g <= max_group_size:
            return g
        g += 1
    return n


def check_map_k(map_k: int) -> int:
    """Validate ``map_k``: a positive odd int (RT must keep the kernel's spatial size with ``map_k // 2`` padding)."""
    if isinstance(map_k, bool) or not isinstance(map_k, int):
        raise ConversionError(f"map_k must be an int, got {map_k!r} ({type(map_k).__name__}). Use e.g. map_k=3.")
    if map_k <= 0 or map_k % 2 == 0:
        raise ConversionError(
            f"map_k must be a positive odd int (RT pads by map_k // 2 so Wt keeps Wb's shape), got {map_k}. "
            "Use map_k=3 (the authors' default) or another odd value no larger than the kernels."
        )
    return map_k


def check_groups(n: int, groups: int, *, where: str = "") -> int:
    """Validate that ``groups`` is a positive divisor of the kernel count ``n``."""
    loc = f" for layer '{where}'" if where else ""
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise ConversionError(f"groups{loc} must be an int, got {groups!r} ({type(groups).__name__}).")
    if groups <= 0 or n % groups != 0:
        divisors = [d for d in _small_divisors(n)]
        raise ConversionError(
            f"groups={groups}{loc} does not divide the layer's N={n} kernels. "
            f"Choose a divisor of {n}, e.g. one of {divisors}, or groups=None for the authors' rule."
        )
    return groups


def _small_divisors(n: int, limit: int = 8) -> list[int]:
    out = [d for d in range(1, min(n, 4096) + 1) if n % d == 0][:limit]
    if n not in out:
        out.append(n)
    return out


def refocus_weight_shape(weight_shape: Sequence[int], groups: int, map_k: int) -> tuple[int, ...]:
    """Shape ``(N, N/G, map_k, ...)`` of the refocusing weight for a basis of ``weight_shape``."""
    n = num_kernels(weight_shape)
    spatial = len(weight_shape) - 2
    return (n, n // groups) + (map_k,) * spatial


def kernel_patches(basis: Tensor, map_k: int) -> Tensor:
    """The ``(N * map_k**d, K)`` patch matrix of the kernel image (``K`` = positions per kernel), ``d`` in {1, 2}.

    Row ``c * map_k**d + q`` holds, for every output position, the value of kernel ``c`` at offset ``q`` of RT's
    window (zero outside the kernel): ``RT(Wb) = Wr.reshape(N, -1) @ patches`` when ``G == 1``.
    """
    n = num_kernels(basis.shape)
    spatial = basis.shape[2:]
    if len(spatial) == 1:
        image = basis.reshape(1, n, 1, spatial[0])
        return F.unfold(image, (1, map_k), padding=(0, map_k // 2)).reshape(n * map_k, spatial[0])
    image = basis.reshape(1, n, *spatial)
    return F.unfold(image, map_k, padding=map_k // 2).reshape(n * map_k * map_k, spatial[0] * spatial[1])


def refocus_increment(basis: Tensor, refocus_weight: Tensor, groups: int, *, method: str = "auto") -> Tensor:
    """``RT(Wb)``: the grouped convolution of the kernel "image" with ``Wr``, reshaped to ``Wb``'s shape.

    Two equivalent evaluations (``method``):

    - ``"matmul"``: the patch matrix of the kernel image times ``Wr``, one (batched) matrix product per group.
      With one group (the authors' rule for depthwise layers, where RT mixes all ``N`` kernels) it is a single
      GEMM, far faster than a batch-1 convolution with ``N`` channels on a tiny image; in float64 (folding)
      it also avoids the very slow float64 grouped convolution on CPU. 1-D and 2-D kernels only.
    - ``"conv"``: the grouped convolution itself (any dimensionality).

    ``"auto"`` takes ``matmul`` for one group or float64, else ``conv``.
    """
    spatial = basis.dim() - 2
    conv = _CONV_FN.get(spatial)
    if conv is None:
        raise ConversionError(f"RefConv supports 1-3 spatial dims, got a weight of shape {tuple(basis.shape)}.")
    n = num_kernels(basis.shape)
    map_k = refocus_weight.shape[-1]
    square = all(m == map_k for m in refocus_weight.shape[2:])
    if method == "auto":
        method = "matmul" if square and spatial <= 2 and (groups == 1 or basis.dtype == torch.float64) else "conv"
    if method == "matmul":
        if not (square and spatial <= 2):
            raise ConversionError("method='matmul' needs 1-D or 2-D kernels and a square RT kernel; use 'conv'.")
        patches = kernel_patches(basis, map_k).to(refocus_weight.dtype)  # (N * m^d, K)
        size = n // groups
        positions = patches.shape[-1]
        if groups == 1:
            out = refocus_weight.reshape(n, -1) @ patches
        elif size == 1:  # each kernel refocused on itself: a multiply-reduce, no tiny GEMMs
            out = (refocus_weight.reshape(n, -1, 1) * patches.reshape(n, -1, positions)).sum(1)
        else:
            out = torch.bmm(refocus_weight.reshape(groups, size, -1), patches.reshape(groups, -1, positions))
        return out.reshape(basis.shape)
    if method != "conv":
        raise ConversionError(f"method must be 'auto', 'conv' or 'matmul', got {method!r}.")
    image = basis.reshape(1, n, *basis.shape[2:])
    padding = tuple(k // 2 for k in refocus_weight.shape[2:])
    return conv(image, refocus_weight, None, 1, padding, 1, groups).reshape(basis.shape)


def refocus(basis: Tensor, refocus_weight: Tensor, groups: int) -> Tensor:
    """``Wt = Wb + RT(Wb)``: the transformed kernel that the converted layer convolves with."""
    return basis + refocus_increment(basis, refocus_weight, groups)
