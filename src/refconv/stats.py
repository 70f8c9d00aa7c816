"""Statistics for honest comparisons over seeds: summaries, paired differences, confidence intervals.

RefConv's gain is only claimed against controls trained from the same baseline with the same budget,
over several seeds. Seeds pair runs (seed s of RefConv and seed s of a control share data order and
initial head), so differences are computed per seed and their spread gives the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Summary", "PairedDifference", "summarize", "paired_difference", "bootstrap_ci", "verdict"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; ``nan`` for one value) of ``n`` values."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    def format(self, digits: int = 2) -> str:
        if self.n < 2 or math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` per seed: mean, std, and a two-sided confidence interval (``None`` with fewer than 2 pairs)."""

    mean: float
    std: float
    n: int
    ci_low: float | None
    ci_high: float | None
    confidence: float
    method: str
    p_value: float | None

    @property
    def significant(self) -> bool:
        """True when the whole interval lies above zero (a positive, statistically supported difference)."""
        return self.ci_low is not None and self.ci_low > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["significant"] = self.significant
        return d


def summarize(values: Sequence[float]) -> Summary:
    """Summarise a list of per-seed numbers."""
    if len(values) == 0:
        raise ValueError("summarize() needs at least one value.")
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return Summary(mean=float(arr.mean()), std=std, n=int(arr.size), values=tuple(float(v) for v in arr))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, method: str = "t", seed: int = 0
) -> PairedDifference:
    """Paired difference ``a - b`` with a confidence interval from the seeds.

    Args:
        a, b: per-seed values, paired by position (same seeds in the same order).
        confidence: two-sided level of the interval.
        method: ``"t"`` (Student's t on the differences; exact for normal differences, the usual choice
            for a handful of seeds) or ``"bootstrap"`` (percentile bootstrap of the mean difference).
        seed: RNG seed of the bootstrap.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        raise ValueError("paired_difference() needs at least one pair.")
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, float("nan"), n, None, None, confidence, method, None)
    std = float(d.std(ddof=1))
    if method == "t":
        from scipy import stats

        se = std / math.sqrt(n)
        if se == 0:
            lo = hi = mean
            p = 0.0 if mean != 0 else 1.0
        else:
            q = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
            lo, hi = mean - q * se, mean + q * se
            p = float(2 * stats.t.sf(abs(mean / se), df=n - 1))
        return PairedDifference(mean, std, n, lo, hi, confidence, "t", p)
    if method == "bootstrap":
        lo, hi = bootstrap_ci(d, confidence=confidence, seed=seed)
        return PairedDifference(mean, std, n, lo, hi, confidence, "bootstrap", None)
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}.")


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def verdict(diff: PairedDifference, control: str, *, unit: str = "pt", digits: int = 2) -> str:
    """A plain sentence on whether a setting beats ``control``, worded by what the interval supports."""
    if diff.n < 2:
        return (
            f"{diff.mean:+.{digits}f} {unit} vs {control} from a single seed: no confidence interval, "
            "no claim either way."
        )
    ci = f"{int(diff.confidence * 100)}% CI [{diff.ci_low:+.{digits}f}, {diff.ci_high:+.{digits}f}], {diff.n} seeds"
    if diff.significant:
        return f"beats {control} by {diff.mean:.{digits}f} ± {diff.std:.{digits}f} {unit} ({ci})."
    if diff.ci_high is not None and diff.ci_high < 0:
        return f"does not beat {control}: it is worse by {-diff.mean:.{digits}f} ± {diff.std:.{digits}f} {unit} ({ci})."
    return (
        f"does not beat {control} at this budget: difference {diff.mean:+.{digits}f} ± {diff.std:.{digits}f} {unit}, "
        f"interval includes zero ({ci})."
    )
