"""The fair protocol of a sweep: per-seed baselines, the reviewers' scratch control, named (lr-tuned) controls,
lr-matched pairing of every setting, and the bad inputs around them; one tiny sweep end to end."""

from __future__ import annotations

import json

import pytest

from _datagen import write_fashion_mnist
from refconv.errors import ConfigError
from refconv.protocol.sweep import load_sweep, parse_sweep, run_sweep


def fair_sweep(**changes) -> dict:
    d = {
        "name": "fair",
        "base": {"model": "timm/mobilenetv3_small_050", "batch_size": 32, "base_lr": 0.2, "lr_base_size": 512,
                 "warmup_epochs": 0.2, "progress": "none", "bn_recalibrate_batches": 2, "eval_every_epochs": 100},
        "baseline": {"epochs": 1, "per_seed": True},
        "seeds": 2,
        "budgets": [1],
        "settings": [{"name": "authors", "refocus_impl": "implicit"},
                     {"name": "ft-rate", "refocus_impl": "implicit", "base_lr": 0.02}],
        "controls": ["continue", "finetune", {"name": "continue-x3", "method": "continue", "base_lr": 0.6}, "scratch"],
    }
    d.update(changes)
    return d


def test_arms_methods_budgets_and_lr_matching():
    spec = parse_sweep(fair_sweep())
    arms = {a.name: a for a in spec.arms()}
    assert arms["e1/continue-x3"].method == "continue" and arms["e1/continue-x3"].overrides == {"base_lr": 0.6}
    scratch = arms["e1/scratch"]
    assert (scratch.method, scratch.epochs, scratch.is_control) == ("baseline", 2, True)  # baseline 1 + E 1
    assert spec.per_seed_baselines
    # lr matching by the recipe lr each arm trains at: x1 -> continue, x0.1 -> finetune
    assert spec.arm_lr("authors") == pytest.approx(0.2 * 32 / 512)
    assert spec.lr_matched_control("authors") == "continue"
    assert spec.lr_matched_control("ft-rate") == "finetune"
    assert spec.arm_lr("continue-x3") == pytest.approx(3 * spec.arm_lr("continue"))
    assert spec.arm_lr("scratch") is None
    assert not any("lr-matched" in w for w in spec.warnings)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ConfigError, match="'scratch' control .* baseline is given .*Train the baseline here"):
        parse_sweep(fair_sweep(baseline={"weights": "fmnist/mobilenetv3_small_100"}, base={
            "model": "timm/mobilenetv3_small_100", "image_size": 64, "warmup_epochs": 0}))
    with pytest.raises(ConfigError, match="per_seed: true.* cannot do. Remove 'weights'"):
        parse_sweep(fair_sweep(baseline={"weights": "x.safetensors", "per_seed": True}))
    with pytest.raises(ConfigError, match="'method' must be one of continue, finetune"):
        parse_sweep(fair_sweep(controls=[{"name": "c", "method": "refconv"}]))
    with pytest.raises(ConfigError, match="a named control needs 'name'"):
        parse_sweep(fair_sweep(controls=[{"name": "scratch", "method": "continue"}]))
    with pytest.raises(ConfigError, match="unknown control 'more'"):
        parse_sweep(fair_sweep(controls=["more"]))
    with pytest.raises(ConfigError, match="does not fit the smallest budget"):
        parse_sweep(fair_sweep(base={"model": "timm/mobilenetv3_small_050", "warmup_epochs": 1}))
    with pytest.raises(ConfigError, match="refocus_precond='isotropic' .* Add --refocus-impl implicit"):
        parse_sweep(fair_sweep(settings=[{"name": "iso", "refocus_precond": "isotropic"}]))


def test_paper_regime_config_is_valid():
    spec = load_sweep("paper-regime")
    assert spec.source == "paper-regime"  # a packaged sweep is recorded by its name, not this machine's path
    assert spec.per_seed_baselines and "scratch" in spec.controls and len(spec.seeds) >= 3
    assert spec.budgets == [spec.baseline["epochs"]]  # refocusing budget = pretraining budget
    assert {spec.lr_matched_control(s.name) for s in spec.settings} == {"continue", "finetune"}
    assert spec.base["bn_recalibrate_batches"] > 0 and spec.base["warmup_epochs"] == 0.05 * spec.budgets[0]


def test_tiny_fair_sweep_end_to_end(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=128, n_test=64)
    res = run_sweep(parse_sweep(fair_sweep()), tmp_path / "out", data_dir=str(data), log=lambda s: None)
    runs = tmp_path / "out" / "runs"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # one baseline per seed, each with its own seed, and each seed's cells start from its own baseline
    for s in (0, 1):
        base_cfg = json.loads((runs / "baseline" / f"seed{s}" / "done.json").read_text())["config"]
        assert base_cfg["seed"] == s and base_cfg["method"] == "baseline"
        cont = json.loads((runs / "e1" / "continue" / f"seed{s}" / "done.json").read_text())["config"]
        assert cont["weights"] == str(runs / "baseline" / f"seed{s}")
    scratch = json.loads((runs / "e1" / "scratch" / "seed0" / "done.json").read_text())["config"]
    assert scratch["weights"] is None and scratch["epochs"] == 2 and scratch["method"] == "baseline"
    assert set(results["baseline"]["per_seed"]) == {"seed0", "seed1"}
    rows = {r["arm"]: r for r in results["budgets"][0]["rows"]}
    assert rows["authors"]["lr_matched_control"] == "continue"
    assert rows["ft-rate"]["lr_matched_control"] == "finetune"
    # the lr-matched difference is the paired per-seed difference of the two arms' own final top-1
    diffs = [a - b for a, b in zip(rows["ft-rate"]["values"], rows["finetune"]["values"])]
    assert rows["ft-rate"]["vs_lr_matched"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert "Δ vs lr-matched control" in (tmp_path / "out" / "report.md").read_text()
    # implicit refocusing: the RefConv arms deploy the stock model (nothing folded, no extra parameter)
    done = json.loads((runs / "e1" / "authors" / "seed0" / "done.json").read_text())
    assert done["folded_path"] is None and done["trainable_params"] == done["deploy_params"]
    assert res.results["cells_trained_now"] == 12
