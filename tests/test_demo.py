"""The demo end to end on a tiny profile: report sections, numbers equal results.json, caching, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import pytest
import torch

from _counting import count_calls
from _datagen import write_fashion_mnist

import refconv
from refconv.errors import CheckpointError, ConfigError, DataError, ModelError
from refconv.protocol.demo import PROFILES, profile, run_demo
from refconv.protocol.demo_report import fmt, fmt_diff, fmt_summary

SECTIONS = ["What was run", "Verdict", "Results", "Training curves", "Cost: training time vs deployed",
            "Folding equivalence", "Analyses", "Reproduce"]

# Even smaller than the packaged tiny profile: the default suite must stay fast on 2 cores.
TEST_PROFILE = dataclasses.replace(PROFILES["tiny"], subset_train=None, subset_test=None, batch_size=32,
                                   analysis_batch_size=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data = write_fashion_mnist(root / "data", n_train=96, n_test=40)
    out = root / "out"
    t0 = time.perf_counter()
    with count_calls(*MODEL_BUILDERS) as calls:
        res = run_demo(TEST_PROFILE, out, data_dir=str(data), log=lambda s: None)
    res.elapsed_s = time.perf_counter() - t0  # what wall_time_s must stay within
    res.calls = calls
    return res, data, out


def _model_builders():
    from refconv.data import build_dataset
    from refconv.engine.artifacts import load_model
    from refconv.models import get_model

    return get_model, load_model, build_dataset


MODEL_BUILDERS = _model_builders()


def test_models_go_from_stage_to_stage_in_memory(demo):
    """Each model is built once: the fold check and the analyses take the models the runs trained in this process;
    nothing is rebuilt from the run directories (they once were, 11 times for this profile)."""
    res, _, _ = demo
    runs = 1 + TEST_PROFILE.seeds * 3  # the baseline, then refconv / continue / finetune per seed
    assert res.calls["load_model"] == 0
    assert res.calls["get_model"] == runs + 1  # one per run, one to check the model name before any work
    # each run reads its train and test split; the demo its test split twice: the input check, the stages' loader
    assert res.calls["build_dataset"] == 2 * runs + 2


def test_report_has_every_section(demo):
    res, _, out = demo
    md = res.report_md.read_text()
    html = res.report_html.read_text()
    for s in SECTIONS:
        assert f"## {s}" in md
        assert f">{s}</h2>" in html
    assert "data:image/png;base64," in html  # self-contained
    for line in md.splitlines():
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"profile", "models", "commands", "environment", "seeds", "wall_time_s"}
    # what was run, as recorded: this profile, its seeds and models, the command that reruns it, this machine
    assert results["profile"] == json.loads(json.dumps(TEST_PROFILE.to_dict()))
    assert results["seeds"] == list(range(TEST_PROFILE.seeds)) and list(results["models"]) == list(TEST_PROFILE.models)
    assert results["commands"] == [f"refconv demo --profile {TEST_PROFILE.name} --seeds {TEST_PROFILE.seeds} "
                                   f"--models {' '.join(TEST_PROFILE.models)} --out {out}"]
    env = results["environment"]
    assert (env["torch"], env["python"], env["refconv"]) == (torch.__version__, platform.python_version(),
                                                             refconv.__version__)
    assert 0 < results["wall_time_s"] <= res.elapsed_s


def test_report_numbers_equal_results_json(demo):
    res, _, out = demo
    md = res.report_md.read_text()
    html = res.report_html.read_text()
    results = json.loads((out / "results.json").read_text())
    expected = []
    for m in results["models"].values():
        expected.append(fmt(m["start"]["final"]["top1"]))
        for row in m["table"]:
            expected.append(fmt_summary(row["summary"]))
            expected += [fmt_diff(d) for d in row["vs"].values()]
        for key, cell in m["cells"].items():
            expected.append(fmt(cell["final"]["top1"]))
        for e in m["equivalence"]:
            expected += [f"{e['max_abs_logit_err']:.3g}", fmt(e["top1_folded"]),
                         f"{fmt(e['identical_predictions'])} / {fmt(e['test_images'])}"]
            assert e["identical_predictions"] == e["test_images"]
            assert e["max_rel_logit_err"] < 1e-4 and e["cost_equal"]
            assert e["params"]["folded"] == e["params"]["baseline"]
        # the analyses over every seed: each side's mean ± std and the paired difference, as printed
        over = m["analysis"]["over_seeds"]
        assert over and all(r["seeds"] == results["seeds"] for r in over)
        for r in over:
            digits = 4 if "%" not in r["metric"] else 2
            expected += [r["metric"], fmt_summary(r["continue_summary"], digits),
                         fmt_summary(r["refconv_summary"], digits), fmt_diff(r["diff"], digits)]
        names = [r["metric"] for r in over]
        assert any(n.startswith("channel diversity") for n in names)
        assert any(n.startswith("sharpness") for n in names)
        # seed 1's analysis is its own (not seed 0's numbers repeated)
        div = next(r for r in over if r["metric"].startswith("channel diversity"))
        assert div["refconv"][0] != div["refconv"][1]
    for s in expected:
        assert s in md, s
        assert s.replace("±", "&#177;") in html or s in html, s


def test_rerun_uses_cache_and_resumes_interrupted_runs(demo):
    res, data, out = demo
    base_ckpt = out / "runs" / "timm-mobilenetv3_small_050" / "baseline" / "checkpoints" / "last.pt"
    mtime = base_ckpt.stat().st_mtime
    # simulate an interrupted cell: its done-record is gone, its last checkpoint remains
    cell = out / "runs" / "timm-mobilenetv3_small_050" / "finetune" / "seed1"
    os.remove(cell / "done.json")
    logs = []
    with count_calls(*MODEL_BUILDERS) as calls:
        again = run_demo(TEST_PROFILE, out, data_dir=str(data), log=logs.append)
    # runs read back from disk are loaded once each, in the form a stage needs: per seed the RefConv run trained
    # (checkpoint) and deployed (folded file) and the continue run deployed, minus the resumed run (in memory:
    # finetune is no stage's), and the baseline trained here once
    assert calls["load_model"] == TEST_PROFILE.seeds * 3 + 1
    assert base_ckpt.stat().st_mtime == mtime  # the baseline was not retrained
    m = next(iter(again.results["models"].values()))
    assert m["start"]["cached"]
    assert (cell / "done.json").is_file()
    assert sum("(cached)" in line for line in logs) == 6  # every run but the resumed one
    prev = next(iter(res.results["models"].values()))
    assert m["cells"]["finetune/seed1"]["final"]["top1"] == prev["cells"]["finetune/seed1"]["final"]["top1"]


def test_out_dir_with_other_config_is_refused(demo):
    _, data, out = demo
    other = dataclasses.replace(TEST_PROFILE, arm_epochs=2)
    with pytest.raises(CheckpointError, match="different configuration.*arm_epochs"):
        run_demo(other, out, data_dir=str(data), log=lambda s: None)


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        run_demo(TEST_PROFILE, tmp_path / "o", data_dir=str(tmp_path / "nowhere"), log=lambda s: None)
    data = write_fashion_mnist(tmp_path / "d", n_train=20, n_test=10)
    bad = dataclasses.replace(TEST_PROFILE, models=("timm/mobilenetv3_smal_100",))
    with pytest.raises(ModelError, match="mobilenetv3_small_100"):
        run_demo(bad, tmp_path / "o", data_dir=str(data), log=lambda s: None)
    with pytest.raises(ConfigError, match="neither a file nor a packaged demo profile"):
        profile("huge")
    with pytest.raises(ConfigError, match="--seeds"):
        profile("quick", seeds=0)


def test_a_profile_is_a_yaml_file_of_ones_own(tmp_path):
    """Every packaged profile is a YAML file; one's own is read the same way, and its mistakes are named."""
    from refconv.protocol.demo import load_profile

    assert set(PROFILES) == {"tiny", "quick", "quick-scratch", "full", "full-scratch"}
    assert PROFILES["quick"].best_setting[0] == "refconv-best" and PROFILES["quick"].starts
    mine = tmp_path / "mine.yaml"
    mine.write_text("models: timm/mobilenetv3_small_050\nseeds: 1\nbaseline_epochs: 1\narm_epochs: 1\n")
    p = profile(mine, seeds=3)
    assert (p.name, p.models, p.seeds) == ("mine", ("timm/mobilenetv3_small_050",), 3)
    mine.write_text("models: [timm/mobilenetv3_small_050]\nseedz: 1\nbaseline_epochs: 1\narm_epochs: 1\n")
    with pytest.raises(ConfigError, match="unknown demo profile keys \\['seedz'\\]. Did you mean 'seeds'"):
        load_profile(mine)
    mine.write_text("models: [timm/mobilenetv3_small_050]\n")
    with pytest.raises(ConfigError, match="lacks seeds, baseline_epochs, arm_epochs"):
        load_profile(mine)
    mine.write_text("models: 3\nseeds: 1\nbaseline_epochs: 1\narm_epochs: 1\n")
    with pytest.raises(ConfigError, match="models is a list of names"):
        load_profile(mine)


def test_analyze_cli_on_demo_runs(demo, capsys):
    from refconv.cli import main

    _, data, out = demo
    runs = out / "runs" / "timm-mobilenetv3_small_050"
    dest = out / "cli-analysis"
    rc = main(["analyze", "--baseline", str(runs / "continue" / "seed0"), "--refconv", str(runs / "refconv" / "seed0"),
               "--data-dir", str(data), "--out", str(dest), "--num-batches", "1", "--resolution-1d", "3",
               "--resolution-2d", "0", "--eps", "0", "0.01", "--pgd-steps", "1", "--attack-batches", "1",
               "--sections", "redundancy", "skeleton", "attacks", "--no-plots"])
    assert rc == 0
    result = json.loads((dest / "analysis.json").read_text())
    assert result["models"]["refconv"]["folded_for_analysis"] and not result["models"]["baseline"]["folded_for_analysis"]
    assert "channel_diversity" in capsys.readouterr().out
    # out-of-range options are refused with the allowed range, before any model is loaded
    assert main(["analyze", "--baseline", "x", "--refconv", "y", "--resolution-2d", "1000"]) == 1
    assert "resolution_2d=1000 is out of range" in capsys.readouterr().err


def test_demo_from_a_pretrained_start(tmp_path, monkeypatch):
    """The README's demo path: the arms start from a registry model (here a tiny one published into a temporary
    registry); nothing is trained before them, the report names the start and its accuracy, folding is exact."""
    import yaml

    from refconv.engine import make_config, run
    from refconv.engine.publish import publish
    from refconv.models import pretrained as reg

    data = write_fashion_mnist(tmp_path / "data", n_train=96, n_test=40)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "timm/mobilenetv3_small_050", "data": "fashion-mnist", "image_size": 32,
                                      "epochs": 1, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0}))
    pre = run(make_config(recipe, {"out": str(tmp_path / "pre"), "data_dir": str(data), "progress": "none"}))
    monkeypatch.setenv(reg.ROOT_ENV, str(tmp_path / "registry"))
    entry = reg.PretrainedEntry(name="fmnist/tiny_demo", model="timm/mobilenetv3_small_050", recipe=str(recipe),
                                image_size=32)
    monkeypatch.setitem(reg.ENTRIES, entry.name, entry)
    card = publish(pre.run_dir, entry.name, machine="the test runner")

    # the quick demo's fair protocol: arm warm-up, fresh BN statistics, the studies' best setting beside the authors'
    p = dataclasses.replace(TEST_PROFILE, starts=(entry.name,), baseline_epochs=0, seeds=2, arm_warmup_epochs=0.1,
                            bn_recalibrate_batches=2, best_setting=PROFILES["quick"].best_setting)
    out = tmp_path / "out"
    res = run_demo(p, out, data_dir=str(data), log=lambda s: None)
    m = res.results["models"]["timm/mobilenetv3_small_050"]
    assert m["start"]["kind"] == "pretrained" and m["start"]["name"] == entry.name
    assert m["start"]["final"]["correct1"] == pre.final["correct1"]  # same test split, same weights
    assert not (out / "runs" / "timm-mobilenetv3_small_050" / "baseline").exists()  # nothing trained first
    for s in (0, 1):
        cell = make_config(out / "runs" / "timm-mobilenetv3_small_050" / "continue" / f"seed{s}" / "config.yaml")
        assert cell.weights == entry.name
    assert all(e["identical_predictions"] == e["test_images"] and e["cost_equal"] for e in m["equivalence"])
    md = res.report_md.read_text()
    assert entry.name in md and fmt(card["test_top1"]) in md and "Δ vs start" in md
    best_name, best_overrides = p.best_setting
    rows = {r["arm"]: r for r in m["table"]}
    assert list(rows) == ["refconv", best_name, "continue", "finetune"] and rows[best_name]["method"] == "refconv"
    best_cfg = make_config(out / "runs" / "timm-mobilenetv3_small_050" / best_name / "seed0" / "config.yaml")
    assert {k: getattr(best_cfg, k) for k in best_overrides} == best_overrides
    assert best_cfg.warmup_epochs == 0.1 and best_cfg.bn_recalibrate_batches == 2
    assert f"RefConv ({best_name}) top-1 vs continue" in md and "RefConv (authors' defaults) top-1 vs" in md

    # profile() maps models to their shipped entries, and refuses a model with none
    with pytest.raises(ConfigError, match="quick-scratch"):
        profile("quick", models=["timm/resnet18"])
    assert profile("quick", starts=[entry.name]).models == ("timm/mobilenetv3_small_050",)
