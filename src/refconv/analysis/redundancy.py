"""Channel redundancy: how different the kernels of one layer's output channels are.

The RefConv paper reports that Refocusing Learning raises the KL divergence between the kernels of different
channels (more diverse, less redundant kernels) but does not publish the normalisation. This module fixes one
definition, applies it identically to any convolution weight, and documents it here and in
``docs/analysis.md``.

Definition (``mode="filter"``, the default). For a convolution weight ``W`` of shape
``(Cout, Cin/g, *k)``:

1. Each output channel ``o`` has one filter ``W[o]`` (all its input channels and spatial positions, ``D =
   Cin/g * prod(k)`` numbers). Its absolute values are normalised to a distribution
   ``p_o = |W[o]| / sum(|W[o]|)``. An all-zero filter becomes the uniform distribution.
2. Smoothing with ``eps`` keeps the logarithms finite: ``p_o <- (p_o + eps) / (1 + D * eps)``.
3. The divergence of two channels is the symmetric KL divergence, the mean of the two directions:
   ``S(p, q) = (KL(p || q) + KL(q || p)) / 2 = sum((p - q) * (log p - log q)) / 2`` (natural log, nats).
4. The layer's diversity is the mean of ``S`` over all unordered pairs of distinct channels. When a layer has
   more than ``max_pairs`` pairs, ``max_pairs`` ordered pairs ``(i, j), i != j`` are drawn uniformly with
   replacement from a ``torch.Generator`` seeded with ``seed`` (an unbiased estimate of the same mean; the
   result says it was sampled).
5. A model's overall diversity is the unweighted mean over its eligible layers (each layer counts once).

Higher means more diverse, less redundant kernels; identical (or proportional) filters give exactly 0.

Why the whole filter and absolute values: a convolution is usually followed by BatchNorm, so a filter's scale
and the sign of the whole filter carry no information; the normalised magnitude pattern is what makes two
channels compute different features. Using every input channel (not only the spatial pattern) means two
channels that apply the same spatial shape to different inputs are not counted as redundant. For depthwise
convolutions (one input channel per filter), the filter *is* the spatial kernel, so both readings agree.
``mode="spatial"`` is offered for the purely spatial reading: magnitudes are summed over input channels
first and the distribution is over the ``prod(k)`` spatial positions only (it is always 0 for 1x1 convs).

The model helpers every analysis shares (eligible convolutions, folding, same-architecture checks) live in
:mod:`refconv.analysis._common`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from refconv.analysis._common import (check_float, check_int, check_same_architecture, fold_for_analysis, require_convs,
                                      takes_options_of)
from refconv.errors import ConfigError

__all__ = [
    "channel_diversity",
    "kernel_distributions",
    "layer_redundancy",
    "redundancy_report",
    "compare_redundancy",
]

RedundancyMode = Literal["filter", "spatial"]

#: Default cap on channel pairs evaluated exactly per layer (C=142 channels give 10011 pairs).
DEFAULT_MAX_PAIRS = 10_000
#: Elements processed per chunk when evaluating pairs, to bound memory on wide layers.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------------------
# The metric on tensors.
# --------------------------------------------------------------------------------------------------------


def kernel_distributions(weight: Tensor, *, mode: RedundancyMode = "filter", eps: float = 1e-8) -> Tensor:
    """Per-output-channel distributions of kernel magnitude (step 1-2 of the module definition).

    Args:
        weight: Convolution weight ``(Cout, Cin/g, *k)`` (any dtype; computed in float64).
        mode: ``"filter"``: over all ``Cin/g * prod(k)`` entries; ``"spatial"``: magnitudes summed over input
            channels, distribution over the ``prod(k)`` spatial positions.
        eps: Smoothing added to every probability before renormalising, in ``[0, 1e-2]``.

    Returns:
        float64 tensor ``(Cout, D)`` whose rows are strictly positive (for ``eps > 0``) and sum to 1.

    Raises:
        ConfigError: ``weight`` has fewer than 3 dimensions, ``mode`` or ``eps`` is invalid.
    """
    if weight.dim() < 3:
        raise ConfigError(
            f"expected a convolution weight (Cout, Cin/groups, *kernel) with at least 3 dims, got shape "
            f"{tuple(weight.shape)}"
        )
    check_float("eps", eps, 0.0, 1e-2)
    mag = weight.detach().to(device="cpu", dtype=torch.float64).abs()
    if mode == "filter":
        mag = mag.flatten(1)
    elif mode == "spatial":
        mag = mag.sum(dim=1).flatten(1)
    else:
        raise ConfigError(f"mode={mode!r} is not supported: expected 'filter' or 'spatial'")
    d = mag.shape[1]
    total = mag.sum(dim=1, keepdim=True)
    uniform = torch.full_like(mag, 1.0 / d)
    p = torch.where(total > 0, mag / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return (p + eps) / (1.0 + d * eps)


def _pair_indices(c: int, max_pairs: int, seed: int) -> tuple[Tensor, Tensor, bool]:
    n_pairs = c * (c - 1) // 2
    if n_pairs <= max_pairs:
        idx = torch.triu_indices(c, c, offset=1)
        return idx[0], idx[1], False
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, c, (max_pairs,), generator=gen)
    # j uniform over the c-1 other channels: every ordered distinct pair is equally likely.
    j = (i + torch.randint(1, c, (max_pairs,), generator=gen)) % c
    return i, j, True


def _diversity_details(
    weight: Tensor, *, mode: RedundancyMode, eps: float, max_pairs: int, seed: int
) -> dict[str, float | int | bool]:
    check_int("max_pairs", max_pairs, 1, 100_000_000)
    check_int("seed", seed, 0, 2**63 - 1)
    p = kernel_distributions(weight, mode=mode, eps=eps)
    c, d = p.shape
    if c < 2:
        raise ConfigError(
            f"channel diversity needs at least 2 output channels to compare, got a weight of shape "
            f"{tuple(weight.shape)}"
        )
    logp = p.log()
    i, j, sampled = _pair_indices(c, max_pairs, seed)
    chunk = max(1, _CHUNK_ELEMENTS // d)
    values = []
    for start in range(0, i.numel(), chunk):
        ii, jj = i[start : start + chunk], j[start : start + chunk]
        values.append(0.5 * ((p[ii] - p[jj]) * (logp[ii] - logp[jj])).sum(dim=1))
    s = torch.cat(values).clamp_min(0.0)  # exact algebra is >= 0; clamp float64 round-off at identical rows
    return {
        "diversity": float(s.mean()),
        "std": float(s.std(unbiased=False)),
        "channels": c,
        "support": d,
        "pairs": int(s.numel()),
        "sampled": sampled,
    }


def channel_diversity(
    weight: Tensor,
    *,
    mode: RedundancyMode = "filter",
    eps: float = 1e-8,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
) -> float:
    """Mean symmetric KL divergence between the output channels' kernel distributions (nats).

    See the module docstring for the full definition. Identical or proportional filters give 0; higher
    means more diverse, less redundant kernels.

    Args:
        weight: Convolution weight ``(Cout, Cin/g, *k)`` with ``Cout >= 2``.
        mode: ``"filter"`` (default) or ``"spatial"``, see :func:`kernel_distributions`.
        eps: Probability smoothing, in ``[0, 1e-2]``.
        max_pairs: Above this many channel pairs, this many pairs are sampled (seeded) instead.
        seed: Seed of the pair sampler.

    Returns:
        The layer's diversity, a float >= 0.

    Raises:
        ConfigError: Bad weight shape or option value.
    """
    return float(_diversity_details(weight, mode=mode, eps=eps, max_pairs=max_pairs, seed=seed)["diversity"])


def redundancy_report(
    model: nn.Module,
    *,
    mode: RedundancyMode = "filter",
    min_kernel_size: int = 3,
    eps: float = 1e-8,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
) -> dict:
    """Per-layer channel diversity with details, the overall mean, and how it was computed.

    Args:
        model: Any convolutional model (folded first if it holds RefConv layers).
        mode: See :func:`kernel_distributions`.
        min_kernel_size: See :func:`eligible_convs`.
        eps: See :func:`channel_diversity`.
        max_pairs: See :func:`channel_diversity`.
        seed: See :func:`channel_diversity`.

    Returns:
        ``{"layers": {name: {"diversity", "std", "channels", "support", "pairs", "sampled"}}, "overall":
        float, "folded_from_refconv": bool, "definition": {...}}``. ``std`` is the spread over pairs.

    Raises:
        NoEligibleConvError: No convolution qualifies.
    """
    analysed, folded = fold_for_analysis(model)
    convs = require_convs(analysed, min_kernel_size=min_kernel_size, min_out_channels=2, what="redundancy")
    layers = {
        name: _diversity_details(conv.weight, mode=mode, eps=eps, max_pairs=max_pairs, seed=seed)
        for name, conv in convs.items()
    }
    overall = sum(float(v["diversity"]) for v in layers.values()) / len(layers)
    return {
        "layers": layers,
        "overall": overall,
        "folded_from_refconv": folded,
        "definition": {
            "mode": mode,
            "eps": eps,
            "max_pairs": max_pairs,
            "seed": seed,
            "min_kernel_size": min_kernel_size,
            "divergence": "mean over channel pairs of (KL(p||q) + KL(q||p)) / 2, natural log",
            "overall": "unweighted mean over layers",
        },
    }


@takes_options_of(redundancy_report)
def layer_redundancy(model: nn.Module, **options: object) -> dict[str, float]:
    """Channel diversity of every eligible convolution of ``model`` (folded first if it holds RefConv).

    Args:
        model: Any convolutional model.
        options: Those of :func:`redundancy_report` (``mode``, ``min_kernel_size``, ``eps``, ``max_pairs``, ``seed``).

    Returns:
        Layer name -> diversity (nats), in module order.

    Raises:
        NoEligibleConvError: No convolution qualifies.
    """
    report = redundancy_report(model, **options)
    return {name: layer["diversity"] for name, layer in report["layers"].items()}


@takes_options_of(redundancy_report)
def compare_redundancy(baseline: nn.Module, refconv_model: nn.Module, **options: object) -> dict:
    """Redundancy of a baseline and a RefConv model side by side, with the same definition and seed.

    Args:
        baseline: The baseline model.
        refconv_model: The RefConv model (training-time or folded).
        options: Those of :func:`redundancy_report`, the same for both models.

    Returns:
        ``{"layers": {name: {"baseline", "refconv", "delta"}}, "overall": {"baseline", "refconv", "delta"},
        "baseline": report, "refconv": report}`` where ``delta = refconv - baseline``.

    Raises:
        CheckpointError: The folded models differ in architecture (the message lists the layers).
    """
    base_folded, _ = fold_for_analysis(baseline)
    ref_folded, _ = fold_for_analysis(refconv_model)
    check_same_architecture(base_folded, ref_folded)
    rb = redundancy_report(base_folded, **options)
    rr = redundancy_report(ref_folded, **options)
    rb["folded_from_refconv"] = base_folded is not baseline
    rr["folded_from_refconv"] = ref_folded is not refconv_model
    layers = {
        name: {
            "baseline": rb["layers"][name]["diversity"],
            "refconv": rr["layers"][name]["diversity"],
            "delta": rr["layers"][name]["diversity"] - rb["layers"][name]["diversity"],
        }
        for name in rb["layers"]
    }
    return {
        "layers": layers,
        "overall": {
            "baseline": rb["overall"],
            "refconv": rr["overall"],
            "delta": rr["overall"] - rb["overall"],
        },
        "baseline": rb,
        "refconv": rr,
    }
