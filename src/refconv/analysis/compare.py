"""Run every analysis on a baseline / RefConv model pair and write ``analysis.json`` plus PNG plots.

This is the one call the ``refconv analyze`` command and the demo report make; everything it does is also
available piece by piece (``compare_redundancy``, ``compare_skeleton``, ``refocus_spectrum``,
``compare_landscape``, ``compare_robustness``, ``compare_cost`` and the ``plot_*`` functions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from torch import Tensor, nn

from refconv.analysis import plots
from refconv.analysis.attacks import DEFAULT_EPS, Stats, compare_robustness
from refconv.analysis.cost import REGIMES, compare_cost
from refconv.analysis.landscape import (
    NUM_BATCHES_RANGE,
    RESOLUTION_1D_RANGE,
    RESOLUTION_2D_RANGE,
    LossFn,
    compare_landscape,
    take_batches,
)
from refconv.analysis._common import (
    check_float,
    check_int,
    check_same_architecture,
    device_of,
    first_batches,
    fold_for_analysis,
    has_refconv_layers,
)
from refconv.analysis.redundancy import compare_redundancy
from refconv.analysis.skeleton import compare_skeleton
from refconv.analysis.spectrum import refocus_spectrum
from refconv.environment import environment
from refconv.errors import ConfigError, NoEligibleConvError

__all__ = ["SECTIONS", "AnalysisConfig", "analyze", "to_jsonable"]

#: Every section ``analyze`` can run, in the order it runs them.
SECTIONS: tuple[str, ...] = ("cost", "redundancy", "skeleton", "spectrum", "landscape", "attacks")

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of :func:`analyze`; every range is checked by :meth:`validate`.

    Attributes:
        sections: Which analyses to run, a subset of :data:`SECTIONS`.
        redundancy_mode: ``"filter"`` or ``"spatial"`` (see ``refconv.analysis.redundancy``).
        min_kernel_size: Smallest kernel size of the layers the weight analyses look at, in [1, 1000].
        max_pairs: Channel pairs evaluated exactly per layer before sampling, in [1, 1e8].
        seed: Seed of pair sampling, landscape directions and PGD random starts.
        num_batches: Held-out batches for the loss landscape, in :data:`NUM_BATCHES_RANGE`.
        resolution_1d: Points per 1-D curve, in :data:`RESOLUTION_1D_RANGE`.
        resolution_2d: Points per axis of the 2-D surfaces, in :data:`RESOLUTION_2D_RANGE`; 0 skips them.
        span: Half-width of the random-direction ranges, in (0, 100].
        interp_range: Interpolation coefficients (0 = baseline, 1 = RefConv), each in [-10, 10].
        eps: Attack budgets in pixel units, each in [0, 1].
        pgd_steps: PGD steps, in [1, 1000].
        pgd_step_size: PGD step in pixel units, in (0, 1]; ``None`` is ``2.5 * eps / steps``.
        random_start: PGD random start.
        pgd_restarts: PGD restarts, in [1, 100].
        pgd_include_fgsm: Count the FGSM point among PGD's candidates, so PGD is never weaker than FGSM.
        attack_batches: Attack only the first batches of the test set (``None``: all), in [1, 1e6].
        latency_warmup: Latency warm-up rounds, in [0, 1000].
        latency_repeats: Latency timed rounds, in [1, 100000].
        cost_regimes: Cost regimes, a non-empty subset of ``("inference", "train_step")``.
    """

    sections: tuple[str, ...] = SECTIONS
    redundancy_mode: str = "filter"
    min_kernel_size: int = 3
    max_pairs: int = 10_000
    seed: int = 0
    num_batches: int = 4
    resolution_1d: int = 41
    resolution_2d: int = 21
    span: float = 1.0
    interp_range: tuple[float, float] = (-0.5, 1.5)
    eps: tuple[float, ...] = field(default=DEFAULT_EPS)
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    random_start: bool = True
    pgd_restarts: int = 1
    pgd_include_fgsm: bool = True
    attack_batches: int | None = None
    latency_warmup: int = 3
    latency_repeats: int = 20
    cost_regimes: tuple[str, ...] = REGIMES

    @classmethod
    def from_dict(cls, values: dict) -> AnalysisConfig:
        """Build from a plain dict (a YAML section, CLI options), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown analysis option(s) {unknown}; known options: {sorted(known)}")
        values = dict(values)
        for key in ("sections", "eps", "interp_range", "cost_regimes"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option out of its range."""
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise ConfigError(
                f"sections={list(self.sections)!r} is invalid: expected a non-empty subset of {list(SECTIONS)}"
            )
        if self.redundancy_mode not in ("filter", "spatial"):
            raise ConfigError(f"redundancy_mode={self.redundancy_mode!r} is invalid: expected 'filter' or 'spatial'")
        check_int("min_kernel_size", self.min_kernel_size, 1, 1000)
        check_int("max_pairs", self.max_pairs, 1, 100_000_000)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("num_batches", self.num_batches, *NUM_BATCHES_RANGE)
        check_int("resolution_1d", self.resolution_1d, *RESOLUTION_1D_RANGE)
        if self.resolution_2d != 0:
            check_int("resolution_2d", self.resolution_2d, *RESOLUTION_2D_RANGE)
        check_float("span", self.span, 0.0, 100.0, low_open=True)
        if len(self.interp_range) != 2:
            raise ConfigError(f"interp_range={self.interp_range!r} is invalid: expected (start, end)")
        for k, v in enumerate(self.interp_range):
            check_float(f"interp_range[{k}]", v, -10.0, 10.0)
        if not self.interp_range[0] < self.interp_range[1]:
            raise ConfigError(f"interp_range={self.interp_range!r} is invalid: expected start < end")
        if not self.eps:
            raise ConfigError("eps is empty: give at least one budget in [0, 1]")
        for e in self.eps:
            check_float("eps", e, 0.0, 1.0)
        check_int("pgd_steps", self.pgd_steps, 1, 1000)
        if self.pgd_step_size is not None:
            check_float("pgd_step_size", self.pgd_step_size, 0.0, 1.0, low_open=True)
        check_int("pgd_restarts", self.pgd_restarts, 1, 100)
        if self.attack_batches is not None:
            check_int("attack_batches", self.attack_batches, 1, 1_000_000)
        check_int("latency_warmup", self.latency_warmup, 0, 1000)
        check_int("latency_repeats", self.latency_repeats, 1, 100_000)
        if not self.cost_regimes or any(r not in REGIMES for r in self.cost_regimes):
            raise ConfigError(
                f"cost_regimes={list(self.cost_regimes)!r} is invalid: expected a non-empty subset of {list(REGIMES)}"
            )


def to_jsonable(value: object) -> object:
    """Plain JSON data: tensors and tuples to lists, NaN / inf to ``None``, paths to strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return to_jsonable(value.item())
    return str(value)


def _spectrum_section(baseline: nn.Module, refconv_model: nn.Module) -> dict:
    """The refocusing preconditioner of the pair: from the RefConv model's own layers (bases, groups, ``map_k``)
    when it is training-time, else from the baseline's kernels with the default conversion (``map_k`` 3, the
    authors' groups): a folded model no longer records its conversion."""
    if has_refconv_layers(refconv_model):
        return {"source": "refconv model's RefConv layers", "layers": refocus_spectrum(refconv_model)}
    try:
        layers = refocus_spectrum(baseline)
    except NoEligibleConvError as exc:
        return {"skipped": str(exc)}
    return {"source": "baseline kernels, default conversion (map_k 3, authors' groups)", "layers": layers}


@dataclass
class _Pair:
    """What the sections of one :func:`analyze` call read, and the PNG files they have written."""

    baseline: nn.Module
    refconv_model: nn.Module
    base: nn.Module  # the baseline, folded for analysis
    ref: nn.Module  # the RefConv model, folded for analysis
    config: AnalysisConfig
    out_dir: Path
    plot: bool
    held_out: list[Batch] | None
    test: list[Batch] | None
    example_input: Tensor | None
    mean: Stats
    std: Stats
    loss_fn: LossFn | None
    files: list[str] = field(default_factory=list)

    def png(self, name: str, draw: object, data: dict, **kw: object) -> None:
        if self.plot:
            draw(data, self.out_dir / name, **kw)  # type: ignore[operator]
            self.files.append(name)


def _cost_section(p: _Pair) -> dict:
    c = p.config
    cost = compare_cost(p.base, p.refconv_model, p.example_input, regimes=c.cost_regimes,
                        warmup=c.latency_warmup, repeats=c.latency_repeats)
    p.png("cost.png", plots.plot_cost, cost)
    return cost


def _redundancy_section(p: _Pair) -> dict:
    c = p.config
    redundancy = compare_redundancy(
        p.base, p.ref, mode=c.redundancy_mode,  # type: ignore[arg-type]
        min_kernel_size=c.min_kernel_size, max_pairs=c.max_pairs, seed=c.seed,
    )
    p.png("redundancy.png", plots.plot_redundancy, redundancy)
    return redundancy


def _skeleton_section(p: _Pair) -> dict:
    skeleton = compare_skeleton(p.base, p.ref, min_kernel_size=p.config.min_kernel_size,
                                example_input=p.example_input)
    p.png("skeleton_stages.png", plots.plot_skeleton, skeleton, level="stages")
    p.png("skeleton_layers.png", plots.plot_skeleton, skeleton, level="layers")
    return skeleton


def _spectrum_png_section(p: _Pair) -> dict:
    spectrum = _spectrum_section(p.baseline, p.refconv_model)
    if "layers" in spectrum:
        p.png("spectrum_diag.png", plots.plot_spectrum, spectrum["layers"])
    return spectrum


def _landscape_section(p: _Pair) -> dict:
    c = p.config
    landscape = compare_landscape(
        p.base, p.ref, p.held_out, num_batches=c.num_batches,
        resolution_1d=c.resolution_1d, resolution_2d=max(c.resolution_2d, 2),
        span=c.span, interp_range=c.interp_range, seed=c.seed, loss_fn=p.loss_fn,
        surfaces=c.resolution_2d != 0,
    )
    p.png("landscape_1d.png", plots.plot_landscape_1d, landscape)
    if landscape["surface_2d"]:
        p.png("landscape_2d.png", plots.plot_landscape_2d, landscape)
    return landscape


def _attacks_section(p: _Pair) -> dict:
    c = p.config
    attacks = compare_robustness(p.base, p.ref, p.test, eps=c.eps, steps=c.pgd_steps, step_size=c.pgd_step_size,
                                 random_start=c.random_start, restarts=c.pgd_restarts,
                                 include_fgsm=c.pgd_include_fgsm, seed=c.seed, max_batches=c.attack_batches,
                                 mean=p.mean, std=p.std)
    p.png("robustness.png", plots.plot_robustness, attacks)
    return attacks


#: How each of :data:`SECTIONS` is run.
_SECTION_RUNNERS = {
    "cost": _cost_section,
    "redundancy": _redundancy_section,
    "skeleton": _skeleton_section,
    "spectrum": _spectrum_png_section,
    "landscape": _landscape_section,
    "attacks": _attacks_section,
}


#: The input a section cannot run without (a :class:`_Pair` field), and the reason it is skipped without it.
_SECTION_NEEDS = {
    "cost": ("example_input", "no example_input, held_out or test batches to measure with"),
    "landscape": ("held_out", "no held_out batches given"),
    "attacks": ("test", "no test batches given"),
}


def _run_section(section: str, p: _Pair) -> dict:
    """One section's result, or why it was skipped."""
    need, reason = _SECTION_NEEDS.get(section, (None, ""))
    if need is not None and getattr(p, need) is None:
        return {"skipped": reason}
    return _SECTION_RUNNERS[section](p)


def _models_record(base_was_refconv: bool, ref_was_refconv: bool) -> dict:
    return {
        "baseline": {"folded_for_analysis": base_was_refconv},
        "refconv": {
            "folded_for_analysis": ref_was_refconv,
            "note": (
                "training-time RefConv model: weight, landscape and attack analyses use its folded form"
                if ref_was_refconv
                else "already folded (plain convolutions): no training-time cost available"
            ),
        },
    }


def _mark_folded(result: dict, base_was_refconv: bool, ref_was_refconv: bool) -> None:
    """Record in each per-model section whether that model was folded for it."""
    for key, was in (("baseline", base_was_refconv), ("refconv", ref_was_refconv)):
        for section in ("redundancy", "skeleton", "attacks"):
            if section in result and key in result[section]:
                result[section][key]["folded_from_refconv"] = was


def _pair_inputs(
    held_out: Iterable[Batch] | None, test: Iterable[Batch] | None, example_input: Tensor | None,
    config: AnalysisConfig,
) -> tuple[list[Batch] | None, list[Batch] | None, Tensor | None]:
    """The fixed held-out batches, the test batches to attack and the example input of an :func:`analyze` call."""
    # Only the landscape uses held-out batches: their count is checked only when it was asked for.
    fixed = (take_batches(held_out, config.num_batches)
             if held_out is not None and "landscape" in config.sections else None)
    test_batches = None
    if test is not None:
        test_batches = [(batch[0], batch[1]) for batch in first_batches(test, config.attack_batches)]
    if example_input is None:
        source = fixed or test_batches
        example_input = source[0][0] if source else None
    return fixed, test_batches, example_input


def analyze(
    baseline: nn.Module,
    refconv_model: nn.Module,
    out_dir: str | Path,
    *,
    held_out: Iterable[Batch] | None = None,
    test: Iterable[Batch] | None = None,
    example_input: Tensor | None = None,
    mean: Stats = None,
    std: Stats = None,
    config: AnalysisConfig | None = None,
    loss_fn: LossFn | None = None,
    plot: bool = True,
) -> dict:
    """Run the analyses on a baseline / RefConv pair; write ``analysis.json`` and PNGs into ``out_dir``.

    A RefConv model holding training-time RefConv layers is analysed folded (a deep copy) for the weight,
    landscape and attack analyses, and both forms are costed; the result records this under ``"models"``.
    Sections whose inputs are missing are skipped with the reason (landscape needs ``held_out``, attacks need
    ``test``, cost needs ``example_input`` or ``held_out``).

    Args:
        baseline: The baseline model.
        refconv_model: The RefConv model, training-time or folded, of the same architecture once folded.
        out_dir: Output directory (created).
        held_out: Held-out ``(inputs, targets)`` batches for the loss landscape.
        test: Test-set batches (or a subset) for the attacks.
        example_input: Input batch for cost and for finding stages by resolution; default: the first
            held-out (or test) batch's inputs.
        mean: Normalisation mean of the inputs (per channel), so attack budgets are in pixel units.
        std: Normalisation std of the inputs (per channel).
        config: Options; default :class:`AnalysisConfig()`.
        loss_fn: Loss for the landscape (default cross-entropy).
        plot: Whether to draw the PNGs.

    Returns:
        The data written to ``analysis.json``: one key per section plus ``"models"``, ``"config"``,
        ``"environment"`` and ``"files"`` (paths relative to ``out_dir``).

    Raises:
        CheckpointError: The two models have different architectures (the message lists the layers).
        ConfigError: An option is out of range.
        NoEligibleConvError: The models have no convolution the weight analyses can look at.
    """
    config = config or AnalysisConfig()
    config.validate()
    base_folded, base_was_refconv = fold_for_analysis(baseline)
    ref_folded, ref_was_refconv = fold_for_analysis(refconv_model)
    check_same_architecture(base_folded, ref_folded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed, test_batches, example_input = _pair_inputs(held_out, test, example_input, config)
    result: dict = {
        "models": _models_record(base_was_refconv, ref_was_refconv),
        "config": asdict(config),
        "environment": environment(device=str(device_of(base_folded))),
    }
    pair = _Pair(baseline, refconv_model, base_folded, ref_folded, config, out_dir, plot, fixed, test_batches,
                 example_input, mean, std, loss_fn)
    for section in SECTIONS:
        if section in config.sections:
            result[section] = _run_section(section, pair)
    _mark_folded(result, base_was_refconv, ref_was_refconv)
    result["files"] = [*pair.files, "analysis.json"]
    data = to_jsonable(result)
    with open(out_dir / "analysis.json", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
    return data  # type: ignore[return-value]
