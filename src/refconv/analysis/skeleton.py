"""Kernel skeleton: where inside the kernel a layer puts its weight magnitude.

The TNNLS version of the RefConv paper reports that Refocusing Learning strengthens the kernels' central cross
(the "skeleton", as in ACNet). The usual view is a heat map of the mean normalised magnitude at every kernel
position. Definition used here (``docs/analysis.md`` repeats it):

1. Every 2-D (or 1-D / 3-D) kernel ``W[o, i]`` of a convolution weight ``(Cout, Cin/g, *k)`` is turned into
   its share of magnitude per position: ``|W[o, i]| / sum(|W[o, i]|)``. Per-kernel normalisation makes the
   map scale-free (BatchNorm follows most convs) and lets every kernel count once. All-zero kernels carry no
   pattern and are left out; if every kernel is zero the map is uniform.
2. The layer's skeleton map is the mean of these shares over all ``Cout * Cin/g`` kernels; it sums to 1.
3. The skeleton share is the sum of the map over the central cross: the positions where at least ``d - 1``
   of the ``d`` spatial coordinates are central (for 2-D: the centre row and the centre column; for 3-D the
   three axis lines through the centre; for 1-D every position). A central coordinate is ``k // 2`` for odd
   ``k`` and both middle indices ``k/2 - 1, k/2`` for even ``k``. A uniform 3x3 kernel has share 5/9.
4. A stage map is the mean of its layers' maps, for layers of the same kernel shape (layers with different
   kernel sizes cannot be averaged position by position, so they form separate groups). Stages are either
   given, or found by one forward pass: every convolution whose output has the same spatial size belongs to
   the same stage (resolution level), or, without an example input, by the first component of the layer
   name (``layer1.0.conv2`` -> ``layer1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from refconv.analysis._common import check_same_architecture, fold_for_analysis, require_convs
from refconv.errors import ConfigError

__all__ = [
    "kernel_skeleton",
    "cross_mask",
    "skeleton_share",
    "layer_skeletons",
    "stages_by_resolution",
    "stages_by_name",
    "skeleton_report",
    "compare_skeleton",
]


def _check_weight(weight: Tensor) -> None:
    if weight.dim() < 3:
        raise ConfigError(
            f"expected a convolution weight (Cout, Cin/groups, *kernel) with at least 3 dims, got shape "
            f"{tuple(weight.shape)}"
        )


def kernel_skeleton(weight: Tensor) -> Tensor:
    """Mean normalised magnitude at every kernel position (steps 1-2 of the module definition).

    Args:
        weight: Convolution weight ``(Cout, Cin/g, *k)``.

    Returns:
        float64 CPU tensor of shape ``k`` that sums to 1.

    Raises:
        ConfigError: ``weight`` has fewer than 3 dimensions.
    """
    _check_weight(weight)
    spatial = tuple(weight.shape[2:])
    mag = weight.detach().to(device="cpu", dtype=torch.float64).abs().flatten(0, 1).flatten(1)
    total = mag.sum(dim=1)
    keep = total > 0
    if not bool(keep.any()):
        return torch.full(spatial, 1.0 / mag.shape[1], dtype=torch.float64)
    shares = mag[keep] / total[keep, None]
    return shares.mean(dim=0).reshape(spatial)


def cross_mask(kernel_size: tuple[int, ...] | torch.Size) -> Tensor:
    """Boolean mask of the central cross of a kernel of the given spatial size (step 3).

    Args:
        kernel_size: Spatial kernel size, e.g. ``(3, 3)``.

    Returns:
        Boolean tensor of shape ``kernel_size``.
    """
    ks = tuple(int(k) for k in kernel_size)
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"kernel_size={ks!r} is invalid: expected one or more sizes >= 1")
    central = []
    for axis, k in enumerate(ks):
        centre = torch.zeros(k, dtype=torch.bool)
        centre[k // 2] = True
        if k % 2 == 0:
            centre[k // 2 - 1] = True
        shape = [1] * len(ks)
        shape[axis] = k
        central.append(centre.reshape(shape).expand(ks).to(torch.int64))
    n_central = torch.stack(central).sum(dim=0)
    return n_central >= len(ks) - 1


def skeleton_share(weight_or_map: Tensor, *, is_map: bool = False) -> float:
    """Share of kernel magnitude on the central cross, in ``[0, 1]``.

    Args:
        weight_or_map: A convolution weight ``(Cout, Cin/g, *k)``, or a skeleton map from
            :func:`kernel_skeleton` when ``is_map`` is true.
        is_map: Whether the input already is a skeleton map.

    Returns:
        The summed map over :func:`cross_mask` positions. One-hot centre kernels give 1.
    """
    sk = weight_or_map.to(torch.float64) if is_map else kernel_skeleton(weight_or_map)
    return float(sk[cross_mask(sk.shape)].sum() / sk.sum())


def layer_skeletons(model: nn.Module, *, min_kernel_size: int = 3) -> dict[str, Tensor]:
    """Skeleton map of every eligible convolution (folded first if the model holds RefConv layers).

    Args:
        model: Any convolutional model.
        min_kernel_size: See :func:`refconv.analysis.eligible_convs`.

    Returns:
        Layer name -> skeleton map.

    Raises:
        NoEligibleConvError: No convolution qualifies.
    """
    analysed, _ = fold_for_analysis(model)
    convs = require_convs(analysed, min_kernel_size=min_kernel_size, min_out_channels=1, what="skeleton")
    return {name: kernel_skeleton(conv.weight) for name, conv in convs.items()}


def stages_by_name(names: list[str] | tuple[str, ...], *, depth: int = 1) -> dict[str, str]:
    """Stage of each layer from the first ``depth`` components of its qualified name."""
    if depth < 1:
        raise ConfigError(f"depth={depth!r} is out of range: expected an integer >= 1")
    return {name: ".".join(name.split(".")[:depth]) for name in names}


@torch.no_grad()
def stages_by_resolution(model: nn.Module, example_input: Tensor, names: list[str]) -> dict[str, str]:
    """Stage of each named convolution from the spatial size of its output (one forward pass, eval mode).

    Stages are numbered from the highest resolution down: ``"stage0 (112x112)"``, ``"stage1 (56x56)"``...

    Args:
        model: The model holding the convolutions (no RefConv layers).
        example_input: A small input batch the model accepts.
        names: Qualified names of the convolutions to place.

    Returns:
        Layer name -> stage label. Layers that never ran get ``"unused"``.
    """
    modules = dict(model.named_modules())
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _inp: object, out: Tensor, name: str = name) -> None:
            sizes.setdefault(name, tuple(out.shape[2:]))

        handles.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    ordered = sorted(set(sizes.values()), key=lambda s: -_prod(s))
    label = {s: f"stage{i} ({'x'.join(map(str, s))})" for i, s in enumerate(ordered)}
    return {name: label[sizes[name]] if name in sizes else "unused" for name in names}


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def skeleton_report(
    model: nn.Module,
    *,
    min_kernel_size: int = 3,
    stages: Mapping[str, str] | Callable[[str], str] | None = None,
    example_input: Tensor | None = None,
) -> dict:
    """Skeleton maps and central-cross shares per layer and per stage.

    Args:
        model: Any convolutional model (folded first if it holds RefConv layers).
        min_kernel_size: See :func:`refconv.analysis.eligible_convs`.
        stages: Layer name -> stage, as a mapping or a function. Default: by output resolution when
            ``example_input`` is given, else by the first name component.
        example_input: Input batch used to find stages by resolution.

    Returns:
        ``{"layers": {name: {"map", "share", "kernel_size", "stage"}}, "stages": {group: {"map", "share",
        "layers"}}, "overall_share": float, "folded_from_refconv": bool}``. Maps are nested lists; a stage
        group is ``"<stage> k<kernel size>"``. ``overall_share`` is the unweighted mean of the layer shares.
    """
    analysed, folded = fold_for_analysis(model)
    maps = layer_skeletons(analysed, min_kernel_size=min_kernel_size)
    names = list(maps)
    if stages is None:
        stage_of = (
            stages_by_resolution(analysed, example_input, names)
            if example_input is not None
            else stages_by_name(names)
        )
    elif callable(stages):
        stage_of = {name: str(stages(name)) for name in names}
    else:
        missing = [n for n in names if n not in stages]
        if missing:
            raise ConfigError(f"stages has no entry for layer(s) {missing[:10]}")
        stage_of = {name: str(stages[name]) for name in names}

    layers = {}
    groups: dict[str, list[str]] = {}
    for name, sk in maps.items():
        ks = "x".join(map(str, sk.shape))
        layers[name] = {
            "map": sk.tolist(),
            "share": skeleton_share(sk, is_map=True),
            "kernel_size": list(sk.shape),
            "stage": stage_of[name],
        }
        groups.setdefault(f"{stage_of[name]} k{ks}", []).append(name)
    stage_out = {}
    for group, members in groups.items():
        mean_map = torch.stack([maps[n] for n in members]).mean(dim=0)
        stage_out[group] = {
            "map": mean_map.tolist(),
            "share": skeleton_share(mean_map, is_map=True),
            "layers": members,
        }
    overall = sum(v["share"] for v in layers.values()) / len(layers)
    return {"layers": layers, "stages": stage_out, "overall_share": overall, "folded_from_refconv": folded}


def compare_skeleton(
    baseline: nn.Module,
    refconv_model: nn.Module,
    *,
    min_kernel_size: int = 3,
    example_input: Tensor | None = None,
) -> dict:
    """Skeleton reports of a baseline and a RefConv model, with the same stage assignment.

    Stages are computed on the baseline and reused for the RefConv model, so both are grouped identically.

    Returns:
        ``{"baseline": report, "refconv": report, "share": {name: {"baseline", "refconv", "delta"}},
        "overall_share": {"baseline", "refconv", "delta"}}``.

    Raises:
        CheckpointError: The folded models differ in architecture.
    """
    base, base_folded = fold_for_analysis(baseline)
    ref, ref_folded = fold_for_analysis(refconv_model)
    check_same_architecture(base, ref)
    names = list(layer_skeletons(base, min_kernel_size=min_kernel_size))
    stage_of = (
        stages_by_resolution(base, example_input, names) if example_input is not None else stages_by_name(names)
    )
    rb = skeleton_report(base, min_kernel_size=min_kernel_size, stages=stage_of)
    rr = skeleton_report(ref, min_kernel_size=min_kernel_size, stages=stage_of)
    rb["folded_from_refconv"], rr["folded_from_refconv"] = base_folded, ref_folded
    share = {
        n: {
            "baseline": rb["layers"][n]["share"],
            "refconv": rr["layers"][n]["share"],
            "delta": rr["layers"][n]["share"] - rb["layers"][n]["share"],
        }
        for n in names
    }
    return {
        "baseline": rb,
        "refconv": rr,
        "share": share,
        "overall_share": {
            "baseline": rb["overall_share"],
            "refconv": rr["overall_share"],
            "delta": rr["overall_share"] - rb["overall_share"],
        },
    }
