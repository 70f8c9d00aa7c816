"""Statistics checked against hand-computed cases."""

import math

import pytest

from refconv.stats import bootstrap_ci, paired_difference, summarize, verdict


def test_summarize():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0 and s.n == 3
    assert s.format(1) == "2.0 ± 1.0"
    one = summarize([5.0])
    assert math.isnan(one.std) and one.format(1) == "5.0"
    with pytest.raises(ValueError):
        summarize([])


def test_paired_t_hand_computed():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302653
    d = paired_difference([11, 12, 13], [10, 10, 10])
    assert d.mean == pytest.approx(2.0) and d.std == pytest.approx(1.0)
    half = 4.302653 / math.sqrt(3)
    assert d.ci_low == pytest.approx(2 - half, abs=1e-5) and d.ci_high == pytest.approx(2 + half, abs=1e-5)
    # t = 2 / (1/sqrt 3) = 3.4641, two-sided p with 2 dof = 0.07418
    assert d.p_value == pytest.approx(0.07418, abs=1e-4)
    assert not d.significant  # interval [-0.48, 4.48] includes 0


def test_paired_is_paired_not_pooled():
    # large between-seed spread, constant +0.5 gain: pairing makes it significant
    d = paired_difference([80.5, 90.5, 70.5, 85.5], [80, 90, 70, 85])
    assert d.std == 0 and d.ci_low == d.ci_high == 0.5 and d.significant


def test_single_seed_has_no_interval():
    d = paired_difference([1.0], [0.5])
    assert d.ci_low is None and not d.significant
    assert "single seed" in verdict(d, "continue")


def test_bootstrap_ci_contains_mean_and_is_seeded():
    vals = [0.1, 0.3, 0.2, 0.5, 0.4]
    lo, hi = bootstrap_ci(vals, seed=1)
    assert lo <= 0.3 <= hi
    assert (lo, hi) == bootstrap_ci(vals, seed=1)
    d = paired_difference(vals, [0] * 5, method="bootstrap")
    assert d.method == "bootstrap" and d.significant


def test_verdict_wording():
    assert verdict(paired_difference([2, 2.2, 2.1], [1, 1, 1]), "continue").startswith("beats continue by 1.10")
    assert "worse by" in verdict(paired_difference([0, 0.1, 0.2], [1, 1, 1]), "continue")
    assert "includes zero" in verdict(paired_difference([1, 2, 0], [1, 1, 1]), "continue")


def test_bad_arguments():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="method"):
        paired_difference([1, 2], [1, 2], method="z")
