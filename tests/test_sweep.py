"""``refconv sweep``: schema validation, grid expansion, the estimate guard, statistics against hand-computed
cases, and a tiny sweep end to end (interrupted, resumed, extended; its table equal to the runs' own metrics)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import _faults
from _datagen import write_fashion_mnist
from refconv.engine import RunInterrupted
from refconv.errors import CheckpointError, ConfigError
from refconv.protocol.demo_report import fmt, fmt_diff, fmt_summary
from refconv.protocol.sweep import (
    SweepTooLarge,
    budget_rows,
    compare_arms,
    expand_grid,
    load_sweep,
    packaged_sweeps,
    parse_sweep,
    run_sweep,
)
from refconv.stats import paired_difference

T_975_DF1 = 12.706204736  # Student t, 0.975 quantile, 1 degree of freedom (tables)
T_975_DF2 = 4.302652730

SECTIONS = ["What was run", "Verdict", "Results", "Accuracy vs budget", "Difference to the best control",
            "Training curves", "Cost", "Time: estimate vs actual", "Reproduce"]


def tiny_sweep(**changes) -> dict:
    """2 settings x 2 controls x 2 seeds x 1 budget on a few hundred generated images: 8 cells + baseline."""
    d = {
        "name": "tiny",
        "base": {"model": "timm/mobilenetv3_small_050", "batch_size": 32, "lr": 0.05, "warmup_epochs": 0,
                 "progress": "none"},
        "baseline": {"epochs": 1},
        "seeds": 2,
        "budgets": [1],
        "settings": [{"name": "authors"}, {"name": "zero-init", "init": "zeros"}],
        "controls": ["continue", "finetune"],
    }
    d.update(changes)
    return d


def quiet(lines: list[str] | None = None):
    return (lines.append if lines is not None else (lambda s: None))


def cached_cells(log: list[str]) -> int:
    """How many cells a sweep's log reports as reused (the baseline's line is not a cell)."""
    return sum(1 for line in log if line.startswith("[sweep]   ") and line.endswith("(cached)"))


# ---------------------------------------------------------------------------------------------- schema
def test_unknown_keys_are_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'budget' in the sweep config\. Did you mean 'budgets' for "
                                          r"'budget'\? Allowed: name, description, base, baseline, seeds, budgets"):
        parse_sweep({**tiny_sweep(), "budget": [1]})
    with pytest.raises(ConfigError, match=r"unknown keys 'lrr', 'inti' in settings\[1\] \(zero\)\. Did you mean "
                                          r"'lr' for 'lrr' and 'init' for 'inti'\?") as exc:
        parse_sweep(tiny_sweep(settings=[{"name": "a"}, {"name": "zero", "lrr": 1, "inti": "zeros"}]))
    allowed = str(exc.value).split("Allowed: ")[1].split(". (")[0].split(", ")
    assert "refocus_lr_mult" in allowed and "epochs" not in allowed and "model" not in allowed
    with pytest.raises(ConfigError, match=r"unknown key 'modle' in base.*'model' for 'modle'"):
        parse_sweep(tiny_sweep(base={"modle": "x"}))
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in baseline"):
        parse_sweep(tiny_sweep(baseline={"epoch": 1}))


def test_misplaced_and_bad_values():
    with pytest.raises(ConfigError, match=r"settings\[0\] \(a\) may not set 'epochs': the budget E comes from 'budgets'"):
        parse_sweep(tiny_sweep(settings=[{"name": "a", "epochs": 3}]))
    with pytest.raises(ConfigError, match=r"may not set 'model'.*set it in 'base'"):
        parse_sweep(tiny_sweep(settings=[{"name": "a", "model": "tv/resnet18"}]))
    with pytest.raises(ConfigError, match=r"base may not set 'method'"):
        parse_sweep(tiny_sweep(base={"method": "refconv"}))
    with pytest.raises(ConfigError, match=r"settings\[0\] \(a\): init must be one of default, zeros.*'zeros'"):
        parse_sweep(tiny_sweep(settings=[{"name": "a", "init": "zero"}]))
    with pytest.raises(ConfigError, match="baseline needs 'epochs'"):
        parse_sweep(tiny_sweep(baseline={}))
    with pytest.raises(ConfigError, match="cannot be combined with training keys"):
        parse_sweep(tiny_sweep(baseline={"weights": __file__, "epochs": 2}))
    with pytest.raises(ConfigError, match="does not exist"):
        parse_sweep(tiny_sweep(baseline={"weights": "/nowhere/w.safetensors"}))
    with pytest.raises(ConfigError, match="unknown control"):
        parse_sweep(tiny_sweep(controls=["continue", "scratched"]))
    with pytest.raises(ConfigError, match="controls is empty"):
        parse_sweep(tiny_sweep(controls=[]))
    with pytest.raises(ConfigError, match="reserved"):
        parse_sweep(tiny_sweep(settings=[{"name": "continue"}]))
    with pytest.raises(ConfigError, match="same run"):
        parse_sweep(tiny_sweep(settings=[{"name": "a"}, {"name": "b", "init": "default"}]))
    with pytest.raises(ConfigError, match="two settings are named 'a'"):
        parse_sweep(tiny_sweep(settings=[{"name": "a"}, {"name": "a", "init": "zeros"}]))
    with pytest.raises(ConfigError, match="budgets must hold integers >= 1"):
        parse_sweep(tiny_sweep(budgets=[0, 2]))
    with pytest.raises(ConfigError, match="needs 'seeds'"):
        d = tiny_sweep()
        del d["seeds"]
        parse_sweep(d)
    with pytest.raises(ConfigError, match="no RefConv setting"):
        parse_sweep(tiny_sweep(settings=[]))
    with pytest.raises(ConfigError, match="parallel must be"):
        parse_sweep(tiny_sweep(parallel=0))


def test_warnings_single_seed_unfair_recipe_and_warmup():
    spec = parse_sweep(tiny_sweep(seeds=[3], settings=[{"name": "a", "lr": 0.2}, {"name": "b", "augment": False}],
                                  base={"model": "timm/mobilenetv3_small_050", "warmup_epochs": 0}))
    text = " ".join(spec.warnings)
    assert "only 1 seed: results are reported without confidence intervals" in text
    assert "setting 'a' trains at lr 0.2, which no control does: it has no lr-matched control" in text
    assert "setting 'b' changes augment" in text and "not at an equal recipe" in text
    assert spec.seeds == [3]
    # a warm-up the smallest budget cannot hold is refused, wherever it is set
    with pytest.raises(ConfigError, match=r"warmup_epochs=5 \(base\) does not fit the smallest budget E=1"):
        parse_sweep(tiny_sweep(base={"model": "timm/mobilenetv3_small_050"}))
    with pytest.raises(ConfigError, match=r"warmup_epochs=2 \(setting 'w'\) does not fit"):
        parse_sweep(tiny_sweep(budgets=[1, 3], settings=[{"name": "w", "warmup_epochs": 2}]))


def test_grid_expansion_and_names():
    assert expand_grid({"init": ["default", "zeros"], "map_k": [1, 3]}) == [
        ("init=default+map_k=1", {"init": "default", "map_k": 1}),
        ("init=default+map_k=3", {"init": "default", "map_k": 3}),
        ("init=zeros+map_k=1", {"init": "zeros", "map_k": 1}),
        ("init=zeros+map_k=3", {"init": "zeros", "map_k": 3}),
    ]
    assert expand_grid({"basis": "random", "max_group_size": [None, 16]})[0][0] == "basis=random+max_group_size=null"
    spec = parse_sweep(tiny_sweep(settings=[{"name": "authors"}],
                                  grid={"init": ["zeros"], "basis": ["pretrained", "random"]}))
    assert [s.name for s in spec.settings] == ["authors", "init=zeros+basis=pretrained", "init=zeros+basis=random"]
    assert [s.source for s in spec.settings] == ["settings[0]", "grid", "grid"]
    arms = spec.arms()
    assert [a.name for a in arms] == ["e1/authors", "e1/init=zeros+basis=pretrained", "e1/init=zeros+basis=random",
                                      "e1/continue", "e1/finetune"]
    with pytest.raises(ConfigError, match="grid.init is an empty list"):
        expand_grid({"init": []})


def test_packaged_sweeps_are_valid():
    shipped = packaged_sweeps()
    assert {"fashion-mnist-small", "ablations"} <= set(shipped)
    small = load_sweep("fashion-mnist-small")
    assert small.base["model"] == "timm/mobilenetv3_small_100" and small.base["image_size"] == 32
    assert small.baseline["epochs"] == 6 and small.budgets == [3] and small.seeds == [0, 1]
    assert [s.name for s in small.settings] == ["refconv"] and small.settings[0].overrides == {}
    assert small.controls == ["continue", "finetune"] and not small.warnings
    abl = load_sweep("ablations")
    keys = {k for s in abl.settings for k in s.overrides}
    assert {"init", "basis", "max_group_size", "map_k", "refocus_lr_mult", "refocus_weight_decay", "layers"} <= keys
    assert not abl.warnings


STUDY = ["pretrained-study-converged", "pretrained-study-undertrained", "pretrained-study-converged-full",
         "pretrained-study-undertrained-full"]


@pytest.mark.parametrize("name", STUDY)
def test_pretrained_study_configs_validate_and_estimate(name, tmp_path_factory):
    """The study the pretrained-model issue asks for: both starts from the registry, budgets 1/3/10, >= 3 seeds,
    the issue's five settings plus the step-size follow-ups (refocusing lr x0.01, zero init with lr x0.1 / x0.01) and
    both controls; ``--estimate`` builds every variant and times it (on stand-in images)."""
    from refconv.models import pretrained

    spec = load_sweep(name)
    start = "fmnist/mobilenetv3_small_100" + ("_e2" if "undertrained" in name else "")
    assert spec.baseline_weights == start  # the name, not the file it resolves to on this machine
    assert spec.budgets == [1, 3, 10] and len(spec.seeds) >= 3 and spec.controls == ["continue", "finetune"]
    by_name = {s.name: s.overrides for s in spec.settings}
    assert by_name == {"authors": {}, "zero-init": {"init": "zeros"}, "refocus-lr-x0.1": {"refocus_lr_mult": 0.1},
                       "refocus-lr-x0.01": {"refocus_lr_mult": 0.01},
                       "zero-init-lr-x0.1": {"init": "zeros", "refocus_lr_mult": 0.1},
                       "zero-init-lr-x0.01": {"init": "zeros", "refocus_lr_mult": 0.01},
                       "refocus-lr-x10": {"refocus_lr_mult": 10.0}, "random-basis": {"basis": "random"},
                       # the mechanism's arms and the lr-matched partner of finetune (the fair re-read)
                       "normalized": {"refocus_precond": "normalized"}, "geometry": {"refocus_precond": "geometry"},
                       "isotropic": {"refocus_precond": "isotropic"}, "authors-ft-rate": {"base_lr": 0.02}}
    assert spec.warmup_share == 0.05 and spec.base["bn_recalibrate_batches"] > 0
    assert spec.lr_matched_control("authors-ft-rate") == "finetune" and spec.lr_matched_control("authors") == "continue"
    assert spec.base["image_size"] == pretrained.entry(start).image_size and not spec.warnings
    data = tmp_path_factory.getbasetemp() / "study-data"
    if not data.exists():
        write_fashion_mnist(data, n_train=1000, n_test=5000)
    est = run_sweep(spec, tmp_path_factory.mktemp("est"), data_dir=str(data), estimate_only=True, log=quiet()).estimate
    assert est["cells_todo"] == 12 * 3 * len(spec.seeds) + 2 * 3 * len(spec.seeds) and not est["baseline_todo"]


# ---------------------------------------------------------------------------------------------- statistics
def test_compare_arms_hand_computed():
    # 2 seeds: setting - continue = [1, 2]: mean 1.5, sd 1/sqrt(2), se 0.5, t(0.975, 1) = 12.7062
    values = {"s": [2.0, 4.0], "continue": [1.0, 2.0], "finetune": [1.0, 1.0]}
    c = compare_arms(values, ["continue", "finetune"])
    assert c["best_control"] == "continue"  # mean 1.5 > 1.0
    d = c["diffs"]["s"]["continue"]
    assert d.mean == pytest.approx(1.5) and d.std == pytest.approx(math.sqrt(0.5))
    assert d.ci_low == pytest.approx(1.5 - T_975_DF1 * 0.5, abs=1e-6)
    assert d.ci_high == pytest.approx(1.5 + T_975_DF1 * 0.5, abs=1e-6)
    assert not d.significant
    f = c["diffs"]["s"]["finetune"]  # [1, 3]: mean 2, sd sqrt 2, se 1
    assert (f.ci_low, f.ci_high) == (pytest.approx(2 - T_975_DF1), pytest.approx(2 + T_975_DF1))
    assert c["summaries"]["s"].mean == 3.0 and c["summaries"]["s"].std == pytest.approx(math.sqrt(2))
    # 3 seeds, differences 1, 2, 3: mean 2, sd 1, interval 2 -+ 4.3027 / sqrt 3
    c3 = compare_arms({"s": [11, 12, 13], "continue": [10, 10, 10]}, ["continue"])
    d3 = c3["diffs"]["s"]["continue"]
    assert d3.ci_low == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-6)
    # a tie between controls goes to the first listed
    assert compare_arms({"s": [1, 1], "finetune": [2, 3], "continue": [3, 2]},
                        ["continue", "finetune"])["best_control"] == "continue"
    # bootstrap on request
    cb = compare_arms({"s": [1, 2, 3], "continue": [0, 0, 0]}, ["continue"], ci="bootstrap")
    assert cb["diffs"]["s"]["continue"].method == "bootstrap"


def _fake_cells(values: dict[str, list[float]], times: dict[str, list[float]], budget: int = 3) -> dict:
    cells = {}
    for arm, vals in values.items():
        for seed, v in enumerate(vals):
            cells[f"e{budget}/{arm}/seed{seed}"] = {
                "final": {"top1": v, "top5": v + 10}, "history": [{"epoch": 1, "epoch_time_s": times[arm][seed]}],
                "trainable_params": 10 if arm == "ref" else 5, "total_params": 12 if arm == "ref" else 5,
                "deploy_params": 5, "wall_time_s": 1.0}
    return cells


def test_budget_rows_best_control_verdicts_and_cost():
    spec = parse_sweep(tiny_sweep(settings=[{"name": "ref"}], budgets=[3], seeds=3))
    # ref - finetune = [2, 2, 2] exactly: interval [2, 2]; finetune is the best control (mean 86 > 85)
    values = {"ref": [87.0, 88.0, 89.0], "continue": [85.0, 85.5, 84.5], "finetune": [85.0, 86.0, 87.0]}
    times = {"ref": [3.0, 3.0, 6.0], "continue": [2.0, 2.0, 2.0], "finetune": [2.0, 2.0, 2.0]}
    t = budget_rows(spec, 3, _fake_cells(values, times), baseline_top1=84.0)
    assert t["best_control"] == "finetune"
    ref = t["rows"][0]
    assert ref["values"] == values["ref"] and ref["summary"]["mean"] == 88.0 and ref["summary"]["std"] == 1.0
    assert ref["vs_best"]["mean"] == 2.0 and ref["vs_best"]["ci_low"] == ref["vs_best"]["ci_high"] == 2.0
    assert ref["verdict"].startswith("beats the best control (finetune) by 2.00 ± 0.00 pt (95% CI [+2.00, +2.00]")
    assert ref["vs"]["continue"]["mean"] == pytest.approx(3.0)
    assert ref["vs_baseline"] == pytest.approx(4.0)
    assert ref["cost"]["epoch_time_s"] == pytest.approx(4.0) and ref["cost"]["epoch_time_ratio"] == pytest.approx(2.0)
    assert ref["cost"]["trainable_params"] == 10 and ref["cost"]["deploy_params"] == 5
    assert [r["kind"] for r in t["rows"]] == ["setting", "control", "control"]
    assert t["rows"][1]["verdict"] is None and t["rows"][1]["vs_best"] is None
    # a noisy difference: "does not beat it at this budget"
    values["ref"] = [86.0, 88.5, 86.0]
    t = budget_rows(spec, 3, _fake_cells(values, times), baseline_top1=None)
    assert "does not beat the best control (finetune) at this budget" in t["rows"][0]["verdict"]
    assert t["rows"][0]["vs_baseline"] is None
    # one seed: no interval, no claim
    spec1 = parse_sweep(tiny_sweep(settings=[{"name": "ref"}], budgets=[3], seeds=1))
    t1 = budget_rows(spec1, 3, _fake_cells({k: v[:1] for k, v in values.items()}, times), baseline_top1=None)
    assert t1["rows"][0]["vs_best"]["ci_low"] is None and "single seed" in t1["rows"][0]["verdict"]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run the tiny sweep, interrupt it inside its 4th cell, then resume it; keep what each call did."""
    root = tmp_path_factory.mktemp("sweep")
    data = write_fashion_mnist(root / "data", n_train=192, n_test=64)
    out = root / "out"
    spec = parse_sweep(tiny_sweep())
    finished: list[str] = []

    def interrupt_after_three(cell, res):
        finished.append(f"{cell.arm.name}/seed{cell.seed}")
        if len(finished) == 3:
            _faults.interrupt_after(1)  # the next run stops (and saves) after one step

    first_log: list[str] = []
    try:
        with pytest.raises(RunInterrupted, match="Rerun the same command"):
            run_sweep(spec, out, data_dir=str(data), log=first_log.append, on_cell_done=interrupt_after_three)
    finally:
        _faults.clear()
    runs = out / "runs"
    mtimes = {k: (runs / k / "done.json").stat().st_mtime_ns for k in finished}
    interrupted = runs / "e1" / "zero-init" / "seed1"
    assert (interrupted / "checkpoints" / "last.pt").is_file() and not (interrupted / "done.json").exists()
    base_mtime = (runs / "baseline" / "done.json").stat().st_mtime_ns
    log: list[str] = []
    res = run_sweep(spec, out, data_dir=str(data), log=log.append)
    return {"res": res, "out": out, "data": data, "spec": spec, "finished": finished, "mtimes": mtimes,
            "log": log, "base_mtime": base_mtime, "interrupted": interrupted}


def test_resume_does_not_redo_finished_cells(sweep):
    runs = sweep["out"] / "runs"
    assert sweep["finished"] == ["e1/authors/seed0", "e1/authors/seed1", "e1/zero-init/seed0"]
    for key, mtime in sweep["mtimes"].items():
        assert (runs / key / "done.json").stat().st_mtime_ns == mtime, key
    assert (runs / "baseline" / "done.json").stat().st_mtime_ns == sweep["base_mtime"]
    assert cached_cells(sweep["log"]) == 3
    assert "resumed" in (sweep["interrupted"] / "log.txt").read_text()
    assert sweep["res"].results["cells_trained_now"] == 5  # the interrupted one + 4 controls
    assert len(sweep["res"].results["cells"]) == 8


def test_table_numbers_equal_the_runs_own_metrics(sweep):
    out, results = sweep["out"], sweep["res"].results
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["cells"]) == set(results["cells"]) and len(saved["cells"]) == 8
    # every cell record in results.json carries its run directory's own done.json numbers
    for key, cell in saved["cells"].items():
        run_dir = out / cell["run_dir"]
        assert run_dir == out / "runs" / key
        done = json.loads((run_dir / "done.json").read_text())
        assert cell["final"] == done["final"] and cell["history"] == done["history"], key
        assert cell["seed"] == done["config"]["seed"] and cell["method"] == done["config"]["method"], key
        assert cell["folded_top1"] == (done["folded_metrics"] or {}).get("top1"), key
    (table,) = saved["budgets"]
    rows = {r["arm"]: r for r in table["rows"]}
    assert list(rows) == ["authors", "zero-init", "continue", "finetune"]
    per_arm = {}
    for arm, row in rows.items():
        top1, top5, times = [], [], []
        for seed, key in zip([0, 1], row["cells"]):
            run_dir = out / saved["cells"][key]["run_dir"]
            assert run_dir == out / "runs" / "e1" / arm / f"seed{seed}"
            metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            done = json.loads((run_dir / "done.json").read_text())
            assert done["config"]["method"] == ("refconv" if row["kind"] == "setting" else arm)
            assert done["config"]["seed"] == seed and done["config"]["epochs"] == 1
            assert done["final"]["top1"] == metrics[-1]["test_top1"]  # no EMA: the deployed model's last eval
            top1.append(done["final"]["top1"])
            top5.append(done["final"]["top5"])
            times += [m["epoch_time_s"] for m in metrics]
            assert row["cost"]["trainable_params"] == done["trainable_params"]
            assert row["cost"]["deploy_params"] == done["deploy_params"]
        assert row["values"] == top1 and row["values_top5"] == top5
        assert row["summary"]["mean"] == pytest.approx((top1[0] + top1[1]) / 2)
        assert row["summary"]["std"] == pytest.approx(abs(top1[0] - top1[1]) / math.sqrt(2))  # n=2, ddof=1
        assert row["cost"]["epoch_time_s"] == pytest.approx(np.mean(times))
        per_arm[arm] = top1
    best = max(["continue", "finetune"], key=lambda c: np.mean(per_arm[c]))
    assert table["best_control"] == best
    for arm in ("authors", "zero-init"):
        # the paired difference recomputed by hand from the done.json values: 2 seeds, t with 1 dof
        diffs = [a - b for a, b in zip(per_arm[arm], per_arm[best])]
        mean = (diffs[0] + diffs[1]) / 2
        std = abs(diffs[0] - diffs[1]) / math.sqrt(2)
        vs = rows[arm]["vs_best"]
        assert vs["mean"] == pytest.approx(mean, abs=1e-9) and vs["n"] == 2
        assert vs["std"] == pytest.approx(std, abs=1e-9)
        if std > 0:
            half = T_975_DF1 * std / math.sqrt(2)
            assert vs["ci_low"] == pytest.approx(mean - half, abs=1e-6)
            assert vs["ci_high"] == pytest.approx(mean + half, abs=1e-6)
        else:
            assert vs["ci_low"] == vs["ci_high"] == pytest.approx(mean, abs=1e-9)
        assert vs == pytest.approx(paired_difference(per_arm[arm], per_arm[best]).to_dict(), nan_ok=True)
        assert rows[arm]["vs"][best] == vs
        assert rows[arm]["cost"]["trainable_params"] > rows[arm]["cost"]["deploy_params"]
    assert rows["continue"]["cost"]["trainable_params"] == rows["continue"]["cost"]["deploy_params"]
    base_done = json.loads((out / "runs" / "baseline" / "done.json").read_text())
    assert saved["baseline"]["final"]["top1"] == base_done["final"]["top1"]


def test_report_sections_and_numbers(sweep):
    res, out = sweep["res"], sweep["out"]
    md, html = res.report_md.read_text(), res.report_html.read_text()
    for s in SECTIONS:
        assert f"## {s}" in md and f">{s}</h2>" in html
    assert "## Warnings" not in md
    assert "data:image/png;base64," in html
    pngs = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert {"accuracy-vs-budget.png", "differences.png", "curves-e1.png", "budget-00-authors.png",
            "budget-01-zero-init.png"} <= set(pngs)
    assert all((out / p).is_file() for p in pngs)
    results = json.loads((out / "results.json").read_text())
    expected = [fmt(results["baseline"]["final"]["top1"])]
    for b in results["budgets"]:
        for r in b["rows"]:
            expected += [fmt_summary(r["summary"]), fmt_summary(r["summary_top5"])] + [fmt(v) for v in r["values"]]
            expected += [fmt_diff(d) for d in r["vs"].values()]
            expected.append(fmt(r["cost"]["epoch_time_s"]))
            if r["verdict"]:
                expected.append(r["verdict"].rstrip("."))  # the report goes on with the lr-matched comparison
                if r["vs_lr_matched"]:
                    expected.append(f"against its lr-matched control ({r['lr_matched_control']}): "
                                    f"{fmt_diff(r['vs_lr_matched'])} pt.")
                assert r["verdict"].startswith(("beats the best control", "does not beat the best control"))
    for s in expected:
        assert s in md, s
        assert s in html or s.replace("±", "&#177;") in html, s
    assert "t multiplier 12.71 with 1 degree(s) of freedom" in md
    assert "refconv sweep" in md  # the command


def test_rerun_is_all_cached_and_extending_trains_only_new_cells(sweep):
    out, data = sweep["out"], sweep["data"]
    log: list[str] = []
    again = run_sweep(sweep["spec"], out, data_dir=str(data), log=log.append)
    assert again.results["cells_trained_now"] == 0 and cached_cells(log) == 8
    assert again.results["budgets"][0]["rows"] == sweep["res"].results["budgets"][0]["rows"]
    # a new setting: two new cells, nothing else retrained
    more = parse_sweep(tiny_sweep(settings=[{"name": "authors"}, {"name": "zero-init", "init": "zeros"},
                                            {"name": "cap4", "max_group_size": 4}]))
    log = []
    ext = run_sweep(more, out, data_dir=str(data), log=log.append)
    assert ext.results["cells_trained_now"] == 2 and cached_cells(log) == 8
    assert [r["arm"] for r in ext.results["budgets"][0]["rows"]] == ["authors", "zero-init", "cap4", "continue",
                                                                      "finetune"]
    # a renamed setting whose directory now holds another configuration is refused, naming the difference
    clash = parse_sweep(tiny_sweep(settings=[{"name": "authors", "init": "zeros"}]))
    with pytest.raises(CheckpointError, match=r"e1/authors/seed0 \(init: 'default' -> 'zeros'\).*--overwrite"):
        run_sweep(clash, out, data_dir=str(data), log=quiet())
    # another baseline invalidates every cell: refused before anything is trained
    other = parse_sweep(tiny_sweep(baseline={"epochs": 2}))
    with pytest.raises(CheckpointError, match=r"different shared recipe or baseline \(baseline.epochs\)"):
        run_sweep(other, out, data_dir=str(data), log=quiet())


def test_estimate_over_budget_asks_for_yes(tmp_path, sweep):
    spec = parse_sweep(tiny_sweep(time_budget_minutes=1e-4))
    out = tmp_path / "o"
    with pytest.raises(SweepTooLarge, match=r"about .* min for 9 run\(s\) left to train.*over its "
                                            r"time_budget_minutes=0\.0001\. Pass --yes") as exc:
        run_sweep(spec, out, data_dir=str(sweep["data"]), log=quiet())
    assert exc.value.estimate["cells_todo"] == 8 and exc.value.estimate["baseline_todo"]
    assert not out.exists()  # nothing written
    est = run_sweep(spec, out, data_dir=str(sweep["data"]), estimate_only=True, log=quiet()).estimate
    assert est["steps_per_epoch"] == 6 and set(est["step_s"]) == {"plain", "authors", "zero-init"}
    lo, hi = est["wall_s_range"]
    assert 0 < lo <= est["wall_s"] <= hi and "median of" in est["method"]
    assert not out.exists()
    # two settings that resolve to the same layers of this model are flagged (its stem is its only dense 3x3 conv)
    twins = parse_sweep(tiny_sweep(settings=[{"name": "dw", "layers": "depthwise"}, {"name": "ns", "layers": "no-stem"}]))
    est = run_sweep(twins, out, data_dir=str(sweep["data"]), estimate_only=True, log=quiet()).estimate
    assert est["warnings"] == ["settings 'dw' and 'ns' convert the same layers of timm/mobilenetv3_small_050 with the "
                               "same options: they are the same run, trained twice."]
    # a setting the model cannot take fails in the estimate, before training
    bad = parse_sweep(tiny_sweep(settings=[{"name": "g7", "groups": 7}]))
    with pytest.raises(ConfigError, match="setting 'g7' cannot be applied"):
        run_sweep(bad, tmp_path / "b", data_dir=str(sweep["data"]), estimate_only=True, log=quiet())


def test_given_weights_and_single_seed(tmp_path, sweep):
    """A baseline checkpoint instead of training one; one seed: reported, without intervals or claims."""
    spec = parse_sweep(tiny_sweep(baseline={"weights": str(sweep["out"] / "runs" / "baseline")}, seeds=1,
                                  settings=[{"name": "authors"}], controls=["continue"]))
    log: list[str] = []
    res = run_sweep(spec, tmp_path / "w", data_dir=str(sweep["data"]), log=log.append)
    assert any("warning: only 1 seed" in x for x in log)
    base_done = json.loads((sweep["out"] / "runs" / "baseline" / "done.json").read_text())
    assert res.results["baseline"]["final"]["top1"] == pytest.approx(base_done["final"]["top1"])
    row = res.results["budgets"][0]["rows"][0]
    assert row["vs_best"]["ci_low"] is None and "no claim either way" in row["verdict"]
    md = res.report_md.read_text()
    assert "## Warnings" in md and "One seed" in md and "(1 seed)" in md
    # the arms were trained from the given weights
    cell = json.loads((tmp_path / "w" / "runs" / "e1" / "authors" / "seed0" / "done.json").read_text())
    assert cell["config"]["weights"] == spec.baseline["weights"]


def test_cli(tmp_path, sweep, monkeypatch, capsys):
    from refconv import cli

    if "sweep" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("sweep",))
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(tiny_sweep(time_budget_minutes=1e-4)))
    out = tmp_path / "o"
    args = ["sweep", str(cfg), "--out", str(out), "--data-dir", str(sweep["data"])]
    assert cli.main(args + ["--estimate"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["cells_todo"] == 8 and est["out"] == str(out) and not out.exists()
    assert cli.main(args) == 1
    assert "--yes" in capsys.readouterr().err and not out.exists()
    bad = copy.deepcopy(tiny_sweep())
    bad["settings"][1]["intt"] = "zeros"
    cfg.write_text(yaml.safe_dump(bad))
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "refconv sweep: error: unknown key 'intt' in settings[1] (zero-init). Did you mean 'init'" in err
    assert cli.main(["sweep", "no-such-sweep"]) == 1
    assert "packaged sweep" in capsys.readouterr().err


@pytest.mark.slow  # spawning worker processes that import torch and timm costs ~15 s on 2 cores
def test_parallel_processes_give_the_same_table_as_sequential(tmp_path, sweep):
    spec = parse_sweep(tiny_sweep(settings=[{"name": "authors"}], controls=["continue"],
                                  baseline={"weights": str(sweep["out"] / "runs" / "baseline")}))
    res = run_sweep(spec, tmp_path / "p", data_dir=str(sweep["data"]), parallel=2, log=quiet())
    assert res.results["parallel"] == 2
    seq = {r["arm"]: r["values"] for r in sweep["res"].results["budgets"][0]["rows"]}
    par = {r["arm"]: r["values"] for r in res.results["budgets"][0]["rows"]}
    assert par["authors"] == pytest.approx(seq["authors"], abs=0.01)
    assert par["continue"] == pytest.approx(seq["continue"], abs=0.01)
    assert (Path(tmp_path / "p" / "runs" / "e1" / "authors" / "seed1" / "done.json")).is_file()
