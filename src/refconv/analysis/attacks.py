"""Adversarial robustness: FGSM and PGD (L-inf) accuracy, in pixel space, for normalised-input classifiers.

The TNNLS version of the RefConv paper compares the robustness of RefConv models and baselines. The attacks are
implemented here in plain torch (no extra dependency) with these conventions (``docs/analysis.md`` repeats
them):

- Models take *normalised* inputs ``x = (pixel - mean) / std``. ``eps`` and ``step_size`` are in pixel units
  (``[0, 1]`` images; ``8/255`` is the usual CIFAR budget). Attacks map the batch back to pixels, perturb
  there, project onto the L-inf ball of radius ``eps`` around the clean pixels and clamp to ``[0, 1]``, then
  normalise again for the model. Without ``mean``/``std`` the inputs are taken to be pixels already.
- The model is in eval mode (BatchNorm uses running statistics; dropout off) while attacked and evaluated;
  its mode is restored afterwards. Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only,
  so parameters' ``.grad`` is never touched. The loss is cross-entropy.
- FGSM (Goodfellow et al. 2015): ``x' = clip(x + eps * sign(grad))``.
- PGD (Madry et al. 2018): optional uniform random start in the eps-ball, ``steps`` signed-gradient steps of
  ``step_size`` (default ``2.5 * eps / steps``) each followed by projection and clamping, ``restarts``
  independent runs. Per sample, the attack returns the strongest candidate seen (a misclassified one if any,
  otherwise the one with the highest loss): every iterate of every restart and, by default
  (``include_fgsm=True``), the FGSM point. This worst case over candidates is the usual bookkeeping of
  robustness evaluations; including the FGSM point guarantees that PGD's robust accuracy is never above
  FGSM's at the same ``eps`` (plain PGD can end in a worse local optimum than FGSM's full-size step).
- Robust accuracy = share of samples still classified correctly on the adversarial inputs. A RefConv model is
  attacked in its folded form (it computes the same function as the training-time model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refconv.analysis._common import (check_float, check_int, check_same_architecture, device_of, first_batches,
                                      fold_for_analysis, takes_options_of)
from refconv.errors import ConfigError

__all__ = [
    "fgsm",
    "pgd",
    "robust_accuracy",
    "compare_robustness",
    "DEFAULT_EPS",
]

Stats = float | Sequence[float] | Tensor | None

#: Default budgets in pixel units.
DEFAULT_EPS: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
_ATTACKS = ("fgsm", "pgd")


def _stats(value: Stats, x: Tensor, name: str, default: float) -> Tensor:
    """Mean or std as a tensor broadcastable to ``x`` (per channel on dim 1)."""
    if value is None:
        return torch.full((), default, dtype=x.dtype, device=x.device)
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device).flatten()
    if t.numel() == 1:
        t = t.reshape(())
    elif x.dim() < 2 or t.numel() != x.shape[1]:
        raise ConfigError(
            f"{name} has {t.numel()} values but the inputs have {x.shape[1] if x.dim() > 1 else 0} channels: "
            "give one value per channel or a single value"
        )
    else:
        t = t.reshape(1, -1, *([1] * (x.dim() - 2)))
    if name == "std" and bool((t <= 0).any()):
        raise ConfigError(f"std={value!r} is out of range: every value must be > 0")
    return t


class _Normaliser:
    def __init__(self, x: Tensor, mean: Stats, std: Stats) -> None:
        self.mean = _stats(mean, x, "mean", 0.0)
        self.std = _stats(std, x, "std", 1.0)

    def to_pixels(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def to_inputs(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std


def _check_eps(eps: float) -> None:
    check_float("eps", eps, 0.0, 1.0)


def _input_grad(model: nn.Module, norm: _Normaliser, pixels: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the summed cross-entropy w.r.t. the pixels, and the logits (for bookkeeping)."""
    pixels = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(norm.to_inputs(pixels))
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, pixels)
    return grad, logits.detach()


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.training)


def _fgsm_point(model: nn.Module, norm: _Normaliser, clean: Tensor, y: Tensor, eps: float) -> Tensor:
    """The FGSM step from the clean pixels, clamped to ``[0, 1]`` (pixels)."""
    grad, _ = _input_grad(model, norm, clean, y)
    return (clean + eps * grad.sign()).clamp(0.0, 1.0)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, mean: Stats = None, std: Stats = None) -> Tensor:
    """Fast Gradient Sign Method, L-inf, in pixel space.

    Args:
        model: Classifier taking normalised inputs; evaluated in eval mode.
        x: Normalised clean inputs ``(N, C, ...)``.
        y: Class indices ``(N,)``.
        eps: Budget in pixel units, in ``[0, 1]``.
        mean: Per-channel (or single) normalisation mean; ``None`` means 0.
        std: Per-channel (or single) normalisation std; ``None`` means 1.

    Returns:
        Normalised adversarial inputs, same shape as ``x``, detached.
    """
    _check_eps(eps)
    norm = _Normaliser(x, mean, std)
    clean = norm.to_pixels(x.detach())
    with _EvalMode(model):
        adv = _fgsm_point(model, norm, clean, y, eps)
    return norm.to_inputs(adv).detach()


class _Strongest:
    """Per sample, the strongest candidate offered so far: the first misclassified one, else the highest loss."""

    def __init__(self, clean: Tensor, y: Tensor) -> None:
        self.y = y
        self.best = clean.clone()
        self.wrong = torch.zeros(clean.shape[0], dtype=torch.bool, device=clean.device)
        self.loss = torch.full((clean.shape[0],), -float("inf"), device=clean.device)
        self.view = (-1,) + (1,) * (clean.dim() - 1)

    def offer(self, candidate: Tensor, logits: Tensor) -> None:
        wrong = logits.argmax(dim=1) != self.y
        loss = F.cross_entropy(logits.float(), self.y, reduction="none")
        better = (wrong & ~self.wrong) | ((wrong == self.wrong) & (loss > self.loss))
        self.best = torch.where(better.view(self.view), candidate, self.best)
        self.wrong = self.wrong | wrong
        self.loss = torch.where(better, loss, self.loss)

    def offer_final(self, model: nn.Module, norm: _Normaliser, candidate: Tensor) -> None:
        """Offer a candidate whose logits are not known yet (one extra forward, no gradient)."""
        with torch.no_grad():
            self.offer(candidate, model(norm.to_inputs(candidate)))


def _pgd_run(
    model: nn.Module, norm: _Normaliser, clean: Tensor, y: Tensor, strongest: _Strongest, *, eps: float,
    steps: int, step_size: float, random_start: bool, generator: torch.Generator | None,
) -> None:
    """One PGD restart, offering every iterate (and the last point) to ``strongest``."""
    lo, hi = (clean - eps).clamp_min(0.0), (clean + eps).clamp_max(1.0)
    adv = clean.clone()
    if random_start and eps > 0:
        noise = torch.rand(clean.shape, generator=generator, dtype=torch.float32).to(clean)
        adv = torch.maximum(torch.minimum(clean + (2 * noise - 1) * eps, hi), lo)
    for _ in range(steps):
        grad, logits = _input_grad(model, norm, adv, y)
        strongest.offer(adv, logits)
        adv = torch.maximum(torch.minimum(adv + step_size * grad.sign(), hi), lo)
    strongest.offer_final(model, norm, adv)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    include_fgsm: bool = True,
    generator: torch.Generator | None = None,
    mean: Stats = None,
    std: Stats = None,
) -> Tensor:
    """Projected Gradient Descent, L-inf, in pixel space, keeping each sample's strongest candidate.

    Candidates are every PGD iterate of every restart and, with ``include_fgsm``, the FGSM point; per sample
    the first misclassified candidate wins, otherwise the one with the highest loss. Including the FGSM point
    makes PGD's robust accuracy never higher than FGSM's at the same ``eps`` by construction (a PGD run can
    otherwise end in a worse local optimum than FGSM's single full-size step).

    Args:
        model: Classifier taking normalised inputs; evaluated in eval mode.
        x: Normalised clean inputs ``(N, C, ...)``.
        y: Class indices ``(N,)``.
        eps: Budget in pixel units, in ``[0, 1]``.
        steps: Gradient steps per restart, in ``[1, 1000]``.
        step_size: Step in pixel units, in ``(0, 1]``; default ``2.5 * eps / steps``.
        random_start: Start each restart from a uniform random point of the eps-ball (else from ``x``).
        restarts: Independent runs, in ``[1, 100]``.
        include_fgsm: Also consider the FGSM point (one extra gradient); ``False`` is plain Madry PGD.
        generator: CPU generator for the random starts (seeded runs are reproducible).
        mean: See :func:`fgsm`.
        std: See :func:`fgsm`.

    Returns:
        Normalised adversarial inputs, same shape as ``x``, detached.
    """
    _check_eps(eps)
    check_int("steps", steps, 1, 1000)
    check_int("restarts", restarts, 1, 100)
    if step_size is None:
        step_size = 2.5 * eps / steps
    else:
        check_float("step_size", step_size, 0.0, 1.0, low_open=True)
    norm = _Normaliser(x, mean, std)
    clean = norm.to_pixels(x.detach())
    strongest = _Strongest(clean, y)
    with _EvalMode(model):
        if include_fgsm:
            strongest.offer_final(model, norm, _fgsm_point(model, norm, clean, y, eps))
        for _ in range(restarts):
            _pgd_run(model, norm, clean, y, strongest, eps=eps, steps=steps, step_size=step_size,
                     random_start=random_start, generator=generator)
    return norm.to_inputs(strongest.best).detach()


def _check_attack_options(
    eps: Sequence[float], attacks: Sequence[str], steps: int, restarts: int, seed: int,
    step_size: float | None, max_batches: int | None,
) -> list[float]:
    """Refuse an option of :func:`robust_accuracy` out of its range; return the budgets as floats."""
    eps = [float(e) for e in eps]
    if not eps:
        raise ConfigError("eps is empty: give at least one budget in [0, 1]")
    for e in eps:
        _check_eps(e)
    bad = [a for a in attacks if a not in _ATTACKS]
    if bad or not attacks:
        raise ConfigError(f"attacks={list(attacks)!r} is invalid: expected a non-empty subset of {list(_ATTACKS)}")
    check_int("steps", steps, 1, 1000)
    check_int("restarts", restarts, 1, 100)
    check_int("seed", seed, 0, 2**63 - 1)
    if step_size is not None:
        check_float("step_size", step_size, 0.0, 1.0, low_open=True)
    if max_batches is not None:
        check_int("max_batches", max_batches, 1, 1_000_000)
    return eps


def _num_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """How many of ``x`` the model classifies as ``y`` (eval mode, no gradient)."""
    with _EvalMode(model), torch.no_grad():
        return int((model(x).argmax(dim=1) == y).sum())


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: Sequence[float] = DEFAULT_EPS,
    attacks: Sequence[str] = _ATTACKS,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    include_fgsm: bool = True,
    seed: int = 0,
    max_batches: int | None = None,
    mean: Stats = None,
    std: Stats = None,
) -> dict:
    """Clean accuracy and accuracy under each attack and budget.

    Args:
        model: Classifier taking normalised inputs (a RefConv model is folded first, on a copy).
        batches: ``(inputs, targets)`` batches of the test set or a subset.
        eps: Budgets in pixel units, each in ``[0, 1]``.
        attacks: Any of ``"fgsm"``, ``"pgd"``.
        steps: PGD steps, in ``[1, 1000]``.
        step_size: PGD step in pixel units; default ``2.5 * eps / steps`` per budget.
        random_start: PGD random start.
        restarts: PGD restarts, in ``[1, 100]``.
        include_fgsm: Count the FGSM point among PGD's candidates (see :func:`pgd`).
        seed: Seed of PGD's random starts (one generator for the whole run).
        max_batches: Use only the first batches (a subset of the test set), in ``[1, 1_000_000]``.
        mean: See :func:`fgsm`.
        std: See :func:`fgsm`.

    Returns:
        ``{"clean": acc, "eps": [...], "fgsm": [acc per eps], "pgd": [acc per eps], "samples": n,
        "settings": {...}}`` (only the requested attacks).

    Raises:
        ConfigError: An option is out of range or there are no samples.
    """
    eps = _check_attack_options(eps, attacks, steps, restarts, seed, step_size, max_batches)
    m, folded = fold_for_analysis(model)
    device = device_of(m)
    gen = torch.Generator().manual_seed(seed)
    pgd_options = dict(steps=steps, step_size=step_size, random_start=random_start, restarts=restarts,
                       include_fgsm=include_fgsm, generator=gen, mean=mean, std=std)
    correct = {a: [0] * len(eps) for a in attacks}
    clean_correct, n = 0, 0
    for x, y in first_batches(batches, max_batches):
        x, y = x.to(device), y.to(device)
        clean_correct += _num_correct(m, x, y)
        n += int(y.shape[0])
        for k, e in enumerate(eps):
            for a in attacks:
                if a == "fgsm":
                    adv = fgsm(m, x, y, eps=e, mean=mean, std=std)
                else:
                    adv = pgd(m, x, y, eps=e, **pgd_options)
                correct[a][k] += _num_correct(m, adv, y)
    if n == 0:
        raise ConfigError("no samples to attack: the batch iterable is empty")
    result: dict = {"clean": clean_correct / n, "eps": eps, "samples": n, "folded_from_refconv": folded}
    for a in attacks:
        result[a] = [c / n for c in correct[a]]
    result["settings"] = {
        "norm": "linf",
        "space": "pixels in [0, 1]",
        "steps": steps,
        "step_size": step_size if step_size is not None else "2.5 * eps / steps",
        "random_start": random_start,
        "restarts": restarts,
        "pgd_includes_fgsm_point": include_fgsm,
        "seed": seed,
        "max_batches": max_batches,
    }
    return result


@takes_options_of(robust_accuracy)
def compare_robustness(
    baseline: nn.Module,
    refconv_model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    max_batches: int | None = None,
    **options: object,
) -> dict:
    """:func:`robust_accuracy` of both models on the same samples with the same settings and seed.

    ``batches`` is materialised once (up to ``max_batches``) so both models see identical samples, and each
    model's PGD random starts come from a generator seeded with the same ``seed``.

    Args:
        baseline: The baseline model.
        refconv_model: The RefConv model (training-time or folded).
        batches: See :func:`robust_accuracy`; the other arguments too (the same names and defaults).

    Returns:
        ``{"baseline": result, "refconv": result}``.

    Raises:
        CheckpointError: The folded models differ in architecture.
    """
    if max_batches is not None:
        check_int("max_batches", max_batches, 1, 1_000_000)
    base, _ = fold_for_analysis(baseline)
    ref, _ = fold_for_analysis(refconv_model)
    check_same_architecture(base, ref)
    fixed = [(batch[0], batch[1]) for batch in first_batches(batches, max_batches)]
    out = {"baseline": robust_accuracy(base, fixed, **options), "refconv": robust_accuracy(ref, fixed, **options)}
    out["baseline"]["folded_from_refconv"] = base is not baseline
    out["refconv"]["folded_from_refconv"] = ref is not refconv_model
    out["baseline"]["settings"]["max_batches"] = out["refconv"]["settings"]["max_batches"] = max_batches
    return out

