"""Loss landscapes: 1-D interpolation, 1-D random-direction curves and 2-D contours (Li et al. 2018).

The RefConv paper reports flatter, wider basins. The standard tool is Li et al., "Visualizing the Loss
Landscape of Neural Nets" (NeurIPS 2018): evaluate ``L(theta + a * d1 + b * d2)`` on a grid, where ``d1, d2``
are random Gaussian directions *filter-normalised* to the model's own weights, so models whose weights have
different scales are comparable.

Recipe used here (``docs/analysis.md`` repeats it):

- Directions: for every parameter in ``model.named_parameters()`` order, draw ``d ~ N(0, 1)`` (float32, CPU,
  from one ``torch.Generator`` seeded with ``seed``; the 2-D plot draws ``d1`` then ``d2`` from the same
  generator). Every filter of a weight with 2 or more dims (an output channel of a conv, a row of a linear
  layer) is rescaled to the norm of the same filter of the model: ``d[i] <- d[i] / ||d[i]|| * ||theta[i]||``.
  One-dimensional parameters (biases, BatchNorm affine) get ``d = 0`` ("ignore biasbn" in Li et al.).
  Buffers (BatchNorm running statistics) are never perturbed.
- Same recipe for both models: with the same architecture and seed the raw Gaussian draws are identical;
  only the filter-normalisation adapts them to each model's weights.
- Evaluation: ``model.eval()`` (BatchNorm uses its running statistics), ``torch.no_grad()``, on a fixed list
  of held-out batches; the loss is the sample-weighted mean of ``loss_fn`` over the batches (default
  cross-entropy), accuracy is reported too for classification outputs.
- Interpolation from model A to model B: ``theta(a) = (1 - a) * theta_A + a * theta_B`` for every parameter
  and every floating-point buffer (running statistics), integer buffers are kept from A.
- Afterwards every parameter and buffer is restored bit for bit and the train/eval mode is put back.
- Models holding RefConv layers are folded first (a deep copy): the landscape is over the deployed weights,
  the same parameter space as the baseline's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refconv.analysis._common import check_float, check_int, check_same_architecture, device_of, fold_for_analysis
from refconv.errors import ConfigError

__all__ = [
    "LossFn",
    "take_batches",
    "evaluate",
    "filter_normalized_direction",
    "loss_along_direction",
    "interpolation_curve",
    "loss_surface_2d",
    "compare_landscape",
    "sharpness",
    "SHARPNESS_RADII",
    "RESOLUTION_1D_RANGE",
    "RESOLUTION_2D_RANGE",
    "NUM_BATCHES_RANGE",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]

#: Allowed number of points of a 1-D curve.
RESOLUTION_1D_RANGE = (2, 401)
#: Allowed number of points per axis of a 2-D surface (the cost grows with its square).
RESOLUTION_2D_RANGE = (2, 101)
#: Allowed number of held-out batches.
NUM_BATCHES_RANGE = (1, 10_000)


def take_batches(batches: Iterable[Batch], num_batches: int) -> list[Batch]:
    """The first ``num_batches`` ``(inputs, targets)`` batches, as a fixed list reused for every point.

    Args:
        batches: Any iterable of ``(inputs, targets)`` (a DataLoader, a list...).
        num_batches: How many to take, in :data:`NUM_BATCHES_RANGE`.

    Raises:
        ConfigError: ``num_batches`` is out of range or the iterable holds fewer batches.
    """
    check_int("num_batches", num_batches, *NUM_BATCHES_RANGE)
    taken: list[Batch] = []
    for batch in batches:
        if len(taken) == num_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError("each batch must be an (inputs, targets) pair")
        taken.append((batch[0], batch[1]))
    if len(taken) < num_batches:
        raise ConfigError(
            f"num_batches={num_batches} is out of range: only {len(taken)} batch(es) are available, "
            f"expected an integer in [1, {len(taken)}]. Pass --num-batches {max(len(taken), 1)} (python: "
            "num_batches=...), or give more data (a larger --subset or a smaller --batch-size)"
        )
    return taken


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch], *, loss_fn: LossFn | None = None) -> dict:
    """Sample-weighted mean loss (and accuracy) of ``model`` in eval mode over fixed batches.

    Args:
        model: The model; its train/eval mode is restored afterwards.
        batches: ``(inputs, targets)`` pairs; they are moved to the model's device.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of a batch (default cross-entropy).

    Returns:
        ``{"loss": float, "accuracy": float | None}``; accuracy is given when outputs are ``(N, C)`` logits
        and targets are class indices.
    """
    loss_fn = loss_fn or F.cross_entropy
    device = device_of(model)
    was_training = model.training
    model.eval()
    total_loss, total_n, correct, classify = 0.0, 0, 0, True
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            out = model(x)
            n = int(x.shape[0])
            total_loss += float(loss_fn(out, y)) * n
            total_n += n
            if classify and out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
                correct += int((out.argmax(dim=1) == y).sum())
            else:
                classify = False
    finally:
        model.train(was_training)
    if total_n == 0:
        raise ConfigError("no samples to evaluate: the batch list is empty")
    return {"loss": total_loss / total_n, "accuracy": correct / total_n if classify else None}


def filter_normalized_direction(
    model: nn.Module, *, generator: torch.Generator, ignore_biasbn: bool = True
) -> dict[str, Tensor]:
    """A random Gaussian direction, filter-normalised to ``model``'s weights (Li et al. 2018).

    Args:
        model: The (folded) model the direction is for.
        generator: CPU generator the Gaussian draws come from (consumed in ``named_parameters`` order).
        ignore_biasbn: Zero the direction on 1-D parameters (biases, BatchNorm affine), as Li et al. do.

    Returns:
        Parameter name -> direction tensor (same shape, dtype and device as the parameter).
    """
    direction: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        d = d.to(device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            if ignore_biasbn:
                d.zero_()
            else:
                d.mul_(p.detach().norm() / (d.norm() + 1e-10))
        else:
            p_norm = p.detach().flatten(1).norm(dim=1)
            d_norm = d.flatten(1).norm(dim=1)
            scale = (p_norm / (d_norm + 1e-10)).reshape(-1, *([1] * (p.dim() - 1)))
            d.mul_(scale)
        direction[name] = d
    return direction


class _Restorer:
    """Snapshot of every parameter and buffer, written back bit for bit on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.training = model.training

    def __enter__(self) -> _Restorer:
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.params[n])
            for n, b in self.model.named_buffers():
                b.copy_(self.buffers[n])
        self.model.train(self.training)


@torch.no_grad()
def _set_point(
    model: nn.Module, origin: dict[str, Tensor], directions: Sequence[dict[str, Tensor]], coefs: Sequence[float]
) -> None:
    for n, p in model.named_parameters():
        value = origin[n].clone()
        for d, c in zip(directions, coefs):
            value.add_(d[n], alpha=c)
        p.copy_(value)


def _coords(resolution: int, span: float, rng: tuple[int, int], name: str) -> list[float]:
    check_int(name, resolution, *rng)
    check_float("span", span, 0.0, 100.0, low_open=True)
    return torch.linspace(-span, span, resolution, dtype=torch.float64).tolist()


def loss_along_direction(
    model: nn.Module,
    batches: Sequence[Batch],
    direction: dict[str, Tensor],
    *,
    resolution: int = 41,
    span: float = 1.0,
    loss_fn: LossFn | None = None,
) -> dict:
    """``L(theta + a * d)`` for ``a`` in ``linspace(-span, span, resolution)``; weights restored after.

    Args:
        model: The (folded) model; perturbed in place, then restored exactly.
        batches: Fixed held-out batches (see :func:`take_batches`).
        direction: From :func:`filter_normalized_direction` for this model.
        resolution: Number of points, in :data:`RESOLUTION_1D_RANGE`.
        span: Half-width of the range of ``a``, in ``(0, 100]``.
        loss_fn: See :func:`evaluate`.

    Returns:
        ``{"alpha": [...], "loss": [...], "accuracy": [...] | None}``.
    """
    alphas = _coords(resolution, span, RESOLUTION_1D_RANGE, "resolution")
    _check_direction(model, direction)
    losses, accs = [], []
    with _Restorer(model) as saved:
        for a in alphas:
            _set_point(model, saved.params, [direction], [a])
            r = evaluate(model, batches, loss_fn=loss_fn)
            losses.append(r["loss"])
            accs.append(r["accuracy"])
    return {"alpha": alphas, "loss": losses, "accuracy": None if accs[0] is None else accs}


def _check_direction(model: nn.Module, direction: dict[str, Tensor]) -> None:
    for n, p in model.named_parameters():
        if n not in direction or direction[n].shape != p.shape:
            raise ConfigError(f"the direction does not fit the model at parameter {n!r}")


def interpolation_curve(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Sequence[Batch],
    *,
    resolution: int = 41,
    alpha_range: tuple[float, float] = (-0.5, 1.5),
    loss_fn: LossFn | None = None,
    names: tuple[str, str] = ("baseline", "refconv"),
) -> dict:
    """Loss on the straight line ``(1 - a) * A + a * B`` (parameters and float buffers), ``a = 0`` is A.

    Args:
        model_a: Start model (folded first if it holds RefConv layers); it is the one evaluated in place.
        model_b: End model, same architecture.
        batches: Fixed held-out batches.
        resolution: Number of points, in :data:`RESOLUTION_1D_RANGE`.
        alpha_range: ``(start, end)`` of ``a``, each in ``[-10, 10]`` and ``start < end``.
        loss_fn: See :func:`evaluate`.
        names: Names of the two models in error messages.

    Returns:
        ``{"alpha": [...], "loss": [...], "accuracy": [...] | None}``.

    Raises:
        CheckpointError: The models differ in architecture (the message lists the entries).
        ConfigError: An option is out of range.
    """
    check_int("resolution", resolution, *RESOLUTION_1D_RANGE)
    lo, hi = alpha_range
    check_float("alpha_range[0]", lo, -10.0, 10.0)
    check_float("alpha_range[1]", hi, -10.0, 10.0)
    if not lo < hi:
        raise ConfigError(f"alpha_range={alpha_range!r} is invalid: expected start < end")
    a, _ = fold_for_analysis(model_a)
    b, _ = fold_for_analysis(model_b)
    check_same_architecture(a, b, names=names)
    device = device_of(a)
    end_p = {n: p.detach().to(device) for n, p in b.named_parameters()}
    end_b = {n: t.detach().to(device) for n, t in b.named_buffers()}
    alphas = torch.linspace(lo, hi, resolution, dtype=torch.float64).tolist()
    losses, accs = [], []
    with _Restorer(a) as saved, torch.no_grad():
        for alpha in alphas:
            for n, p in a.named_parameters():
                p.copy_(torch.lerp(saved.params[n], end_p[n], alpha))
            for n, t in a.named_buffers():
                if t.is_floating_point():
                    t.copy_(torch.lerp(saved.buffers[n], end_b[n], alpha))
            r = evaluate(a, batches, loss_fn=loss_fn)
            losses.append(r["loss"])
            accs.append(r["accuracy"])
    return {"alpha": alphas, "loss": losses, "accuracy": None if accs[0] is None else accs}


def loss_surface_2d(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    resolution: int = 21,
    span: float = 1.0,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> dict:
    """``L(theta + a * d1 + b * d2)`` on a ``resolution x resolution`` grid over ``[-span, span]^2``.

    ``d1`` and ``d2`` are drawn, in that order, from one generator seeded with ``seed`` (see the module
    docstring); the model is perturbed in place and restored exactly.

    Args:
        model: The model (folded first if it holds RefConv layers).
        batches: Fixed held-out batches.
        resolution: Points per axis, in :data:`RESOLUTION_2D_RANGE`.
        span: Half-width of each axis, in ``(0, 100]``.
        seed: Seed of the directions.
        loss_fn: See :func:`evaluate`.

    Returns:
        ``{"x": [...], "y": [...], "loss": rows}`` with ``loss[i][j]`` at ``(x[j], y[i])``.
    """
    coords = _coords(resolution, span, RESOLUTION_2D_RANGE, "resolution")
    check_int("seed", seed, 0, 2**63 - 1)
    m, _ = fold_for_analysis(model)
    gen = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(m, generator=gen)
    d2 = filter_normalized_direction(m, generator=gen)
    grid = []
    with _Restorer(m) as saved:
        for b in coords:
            row = []
            for a in coords:
                _set_point(m, saved.params, [d1, d2], [a, b])
                row.append(evaluate(m, batches, loss_fn=loss_fn)["loss"])
            grid.append(row)
    return {"x": coords, "y": coords, "loss": grid}


#: Radii (in units of the filter-normalised direction, i.e. relative to each filter's norm) at which
#: :func:`sharpness` measures the loss rise: small enough that the loss is still near its quadratic regime.
SHARPNESS_RADII: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)


def sharpness(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    radii: Sequence[float] = SHARPNESS_RADII,
    directions: int = 3,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> dict:
    """The loss rise ``L(theta + s r d) - L(theta)`` at small radii, averaged over both signs ``s`` and over
    ``directions`` random filter-normalised directions.

    Why not the whole 1-D curve's mean rise: at the span of a landscape plot (|alpha| up to 1) a filter-normalised
    step destroys the network, the loss reaches 1e5-1e6 at a few points, and those points decide any average: a
    model whose curve explodes a little later then looks "10x flatter" without being flatter where training moves.
    Small radii measure the neighbourhood that matters. Two models of one architecture get the same raw Gaussian
    draws (same ``seed``, parameters in the same order), each filter-normalised to its own weights.

    Returns:
        ``{"center_loss", "radii", "rise": [mean rise per radius], "rise_std": [std over the 2*directions points],
        "directions", "seed"}``; the weights are restored exactly.
    """
    check_int("directions", directions, 1, 100)
    if not radii or any(not (isinstance(r, (int, float)) and 0 < r <= 100) for r in radii):
        raise ConfigError(f"radii must be numbers in (0, 100], got {list(radii)}")
    center = evaluate(model, batches, loss_fn=loss_fn)["loss"]
    gen = torch.Generator().manual_seed(seed)
    rises: dict[float, list[float]] = {float(r): [] for r in radii}
    # Every direction is drawn (and normalised to the trained weights) before the first step moves them.
    dirs = [filter_normalized_direction(model, generator=gen) for _ in range(directions)]
    with _Restorer(model) as saved:
        for d in dirs:
            for r in rises:
                for sign in (1.0, -1.0):
                    _set_point(model, saved.params, [d], [sign * r])
                    rises[r].append(evaluate(model, batches, loss_fn=loss_fn)["loss"] - center)
    mean = [sum(v) / len(v) for v in rises.values()]
    std = [(sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5 for v, m in zip(rises.values(), mean)]
    return {"center_loss": center, "radii": list(rises), "rise": mean, "rise_std": std, "directions": directions,
            "seed": seed}


def _summary(curve: dict, center_loss: float) -> dict:
    """Whole-curve numbers of a curve centred at 0 (dominated by the far points where the loss explodes: use
    :func:`sharpness` to compare flatness)."""
    rise = [v - center_loss for v in curve["loss"]]
    finite = [r for r in rise if math.isfinite(r)]
    return {
        "center_loss": center_loss,
        "mean_rise": sum(finite) / len(finite) if finite else None,
        "max_rise": max(finite) if finite else None,
    }


def compare_landscape(
    baseline: nn.Module,
    refconv_model: nn.Module,
    batches: Iterable[Batch],
    *,
    num_batches: int = 4,
    resolution_1d: int = 41,
    resolution_2d: int = 21,
    span: float = 1.0,
    interp_range: tuple[float, float] = (-0.5, 1.5),
    seed: int = 0,
    loss_fn: LossFn | None = None,
    surfaces: bool = True,
) -> dict:
    """Interpolation, random-direction curves and 2-D surfaces of a baseline and a RefConv model.

    Both models get the same recipe: the same held-out batches, the same seed (so the same raw Gaussian
    draws), each filter-normalised to its own weights.

    Args:
        baseline: The baseline model.
        refconv_model: The RefConv model (training-time or folded); same architecture once folded.
        batches: Held-out ``(inputs, targets)`` batches; the first ``num_batches`` are used.
        num_batches: In :data:`NUM_BATCHES_RANGE`.
        resolution_1d: Points of each 1-D curve, in :data:`RESOLUTION_1D_RANGE`.
        resolution_2d: Points per axis of the 2-D surfaces, in :data:`RESOLUTION_2D_RANGE`.
        span: Half-width of the random-direction ranges.
        interp_range: Range of the interpolation coefficient (0 = baseline, 1 = RefConv).
        seed: Seed of the random directions.
        loss_fn: See :func:`evaluate`.
        surfaces: Whether to compute the 2-D surfaces (``resolution_2d**2`` evaluations per model).

    Returns:
        ``{"interpolation": curve, "random_1d": {"baseline": curve, "refconv": curve}, "surface_2d":
        {"baseline": surface, "refconv": surface} | None, "summary": {...}, "settings": {...}}``.
        ``summary`` holds, per model, the loss at the centre, the mean / max rise of the random 1-D curve above
        it (whole range: dominated by where the loss explodes) and ``sharpness``, the mean rise at the small radii
        of :data:`SHARPNESS_RADII` over three shared directions (lower = flatter: the number to compare).
    """
    check_int("resolution_1d", resolution_1d, *RESOLUTION_1D_RANGE)
    check_int("resolution_2d", resolution_2d, *RESOLUTION_2D_RANGE)
    check_float("span", span, 0.0, 100.0, low_open=True)
    check_int("seed", seed, 0, 2**63 - 1)
    base, _ = fold_for_analysis(baseline)
    ref, _ = fold_for_analysis(refconv_model)
    check_same_architecture(base, ref)
    device = device_of(base)  # moved once: every point re-reads the same batches
    fixed = [(x.to(device), y.to(device)) for x, y in take_batches(batches, num_batches)]
    out: dict = {
        "interpolation": interpolation_curve(
            base, ref, fixed, resolution=resolution_1d, alpha_range=interp_range, loss_fn=loss_fn
        ),
        "random_1d": {},
        "surface_2d": {} if surfaces else None,
        "summary": {},
    }
    for label, m in (("baseline", base), ("refconv", ref)):
        direction = filter_normalized_direction(m, generator=torch.Generator().manual_seed(seed))
        curve = loss_along_direction(m, fixed, direction, resolution=resolution_1d, span=span, loss_fn=loss_fn)
        out["random_1d"][label] = curve
        out["summary"][label] = _summary(curve, evaluate(m, fixed, loss_fn=loss_fn)["loss"])
        out["summary"][label]["sharpness"] = sharpness(m, fixed, seed=seed, loss_fn=loss_fn)
        if surfaces:
            out["surface_2d"][label] = loss_surface_2d(
                m, fixed, resolution=resolution_2d, span=span, seed=seed, loss_fn=loss_fn
            )
    out["settings"] = {
        "num_batches": num_batches,
        "samples": sum(int(x.shape[0]) for x, _ in fixed),
        "resolution_1d": resolution_1d,
        "resolution_2d": resolution_2d if surfaces else None,
        "span": span,
        "interp_range": list(interp_range),
        "seed": seed,
        "directions": "Gaussian, filter-normalised per output filter, biases/BN dims zeroed (Li et al. 2018); "
                      "the same raw draws for both models",
        "sharpness_radii": list(SHARPNESS_RADII),
        "bn": "eval mode (running statistics), never perturbed by random directions",
    }
    return out
