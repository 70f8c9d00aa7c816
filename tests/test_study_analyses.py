"""The paper's analyses over a sweep's seeds (``refconv.protocol.study_analyses``): each seed's RefConv cell is
paired with the same seed's control cell, the summary's differences are those of the per-seed analyses, and a
sweep whose runs are gone (or a wrong budget, setting or control) gets a one-line error naming the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from _datagen import write_fashion_mnist
from refconv.errors import ConfigError
from refconv.protocol.study import load_study, write_study_summary
from refconv.protocol.study_analyses import AnalysisProfile, analyze_sweep, load_analyses
from refconv.protocol.sweep import parse_sweep, run_sweep

TINY = AnalysisProfile(analysis=dict(num_batches=1, resolution_1d=5, resolution_2d=0, eps=(0.0, 0.02), pgd_steps=2,
                                     attack_batches=1, latency_warmup=1, latency_repeats=2, max_pairs=300),
                       analysis_batch_size=32)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny sweep: one RefConv setting and one control, 2 seeds, 1 budget (4 cells + baseline)."""
    root = tmp_path_factory.mktemp("study-analyses")
    data = write_fashion_mnist(root / "data", n_train=128, n_test=64)
    spec = parse_sweep({
        "name": "tiny-analyses",
        "base": {"model": "timm/mobilenetv3_small_050", "batch_size": 32, "lr": 0.05, "warmup_epochs": 0,
                 "progress": "none"},
        "baseline": {"epochs": 1}, "seeds": 2, "budgets": [1],
        "settings": [{"name": "authors"}, {"name": "zero-init", "init": "zeros"}], "controls": ["continue"],
    })
    out = root / "sweep"
    run_sweep(spec, out, data_dir=str(data), log=lambda s: None)
    analyses = analyze_sweep(out, settings=["zero-init"], data_dir=str(data), profile=TINY, command="test")
    return {"out": out, "data": data, "analyses": analyses}


def test_each_seed_is_paired_with_the_same_seeds_control(swept):
    out, a = swept["out"], swept["analyses"]
    results = json.loads((out / "results.json").read_text())
    block = a["settings"]["zero-init"]
    assert a["budget"] == 1 and a["control"] == "continue" and block["seeds"] == [0, 1]
    assert block["cells"] == {"refconv": ["e1/zero-init/seed0", "e1/zero-init/seed1"],
                              "continue": ["e1/continue/seed0", "e1/continue/seed1"]}
    assert block["top1"]["refconv"] == [results["cells"][c]["final"]["top1"] for c in block["cells"]["refconv"]]
    assert block["top1"]["continue"] == [results["cells"][c]["final"]["top1"] for c in block["cells"]["continue"]]
    # each seed's analysis loaded the two cells' own run directories
    for s, compared in zip((0, 1), block["compared"]):
        assert compared["baseline_side"].startswith(f"continue (seed {s}, ")
        assert compared["baseline_side"].endswith(str(out / "runs" / "e1" / "continue" / f"seed{s}") + ")")
        assert compared["refconv_side"].endswith(str(out / "runs" / "e1" / "zero-init" / f"seed{s}") + ")")
    assert load_analyses(out) == json.loads(json.dumps(a))


def test_summary_differences_are_the_per_seed_differences(swept):
    from refconv.protocol.analyses import analysis_scalars

    out, block = swept["out"], swept["analyses"]["settings"]["zero-init"]
    per_seed = [json.loads((out / "analyses" / "zero-init" / f"seed{s}" / "analysis.json").read_text())
                for s in block["seeds"]]
    scalars = [analysis_scalars(p) for p in per_seed]
    names = [r["metric"] for r in block["rows"]]
    assert any(n.startswith("channel diversity") for n in names)
    assert any(n.startswith("sharpness") for n in names)
    for row in block["rows"]:
        diffs = [s[row["metric"]]["refconv"] - s[row["metric"]]["continue"] for s in scalars]
        assert row["diff"]["mean"] == pytest.approx(sum(diffs) / len(diffs), rel=1e-9, abs=1e-12)
        assert row["refconv"] == pytest.approx([s[row["metric"]]["refconv"] for s in scalars])


def test_the_study_page_shows_the_analyses(swept, tmp_path):
    page = write_study_summary(load_study({"tiny": swept["out"]}), tmp_path / "study.md", plot=False)
    text = page.read_text()
    assert "## Analyses over seeds: tiny start (1 epochs)" in text
    assert "| zero-init | test top-1 % (2 seeds) |" in text


def test_bad_requests_name_the_fix(swept, tmp_path):
    out = swept["out"]
    with pytest.raises(ConfigError, match=r"no budget 3; it has \[1\]"):
        analyze_sweep(out, budget=3, profile=TINY)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['nope'\].*\['authors', 'zero-init'\]"):
        analyze_sweep(out, settings=["nope"], profile=TINY)
    with pytest.raises(ConfigError, match=r"'finetune' is not a control of this sweep; its controls are \['continue'\]"):
        analyze_sweep(out, control="finetune", profile=TINY)
    with pytest.raises(ConfigError, match="does not exist"):
        analyze_sweep(tmp_path, profile=TINY)
    # a recorded sweep whose runs/ were deleted: the error gives the sweep's own command to restore them
    moved = tmp_path / "recorded"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ConfigError, match=r"cell e1/authors/seed0: .* Re-run the sweep to restore them"):
        analyze_sweep(moved, settings=["authors"], profile=TINY)


def test_cli_writes_the_analyses_and_records_its_own_command(swept, monkeypatch, capsys):
    from refconv import cli
    from refconv.protocol import study_analyses

    monkeypatch.setattr(study_analyses, "STUDY_ANALYSIS", TINY.analysis)  # the default profile, made tiny
    out = swept["out"]
    assert cli.main(["study-analyses", str(out), "--settings", "zero-init", "--data-dir", str(swept["data"])]) == 0
    assert capsys.readouterr().out.startswith("# Analyses over seeds (1 epochs)")
    assert load_analyses(out)["command"] == f"refconv study-analyses {out} --budget 1 --settings zero-init"
    assert "Command: `refconv study-analyses " in (out / "analyses" / "analyses.md").read_text()
    assert cli.main(["study-analyses", str(out), "--budget", "3"]) == 1
    assert "no budget 3; it has [1]" in capsys.readouterr().err


def test_the_start_of_a_sweep_with_per_seed_baselines_is_the_first_seeds():
    from refconv.protocol.study_analyses import _first_baseline

    per_seed = {"trained": True, "per_seed": {"seed10": {"run_dir": "runs/baseline/seed10"},
                                              "seed2": {"run_dir": "runs/baseline/seed2"}}}
    assert _first_baseline(per_seed) == "runs/baseline/seed2"
    assert _first_baseline({"trained": True, "run_dir": "runs/baseline"}) == "runs/baseline"
