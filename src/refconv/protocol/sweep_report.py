"""The sweep's ``report.md`` / ``report.html`` and PNG plots, from ``results.json`` alone.

Like the demo's report, every number is read from the results dict and formatted by the demo report's
formatters (:func:`~refconv.protocol.demo_report.fmt` and friends), so a test can recompute each string
from ``results.json`` and find it in the report; the verdict sentences are the ones stored there by
:func:`refconv.stats.verdict`, worded by what the intervals support.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..report import Bullets, Code, Document, Image, Section, Table, Text
from ..report.plots import colours, new_figure, plot_curves, save_figure
from .demo_report import fmt, fmt_diff, fmt_params, fmt_summary, shift_epochs

__all__ = ["write_sweep_report", "plot_accuracy_vs_budget", "plot_differences", "fmt_changes", "t_multiplier"]


def fmt_changes(overrides: dict[str, Any]) -> str:
    """A setting's changes to the base recipe, ``k=v, k=v`` (``authors' defaults`` for none)."""
    if not overrides:
        return "authors' defaults"
    return ", ".join(f"{k}={'null' if v is None else v}" for k, v in overrides.items())


def t_multiplier(n: int, confidence: float) -> float | None:
    """The two-sided Student t quantile a paired interval from ``n`` seeds is built with (None for n < 2)."""
    if n < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "setting"


def _series(results: dict[str, Any], arm: str) -> list[tuple[int, float, float | None]]:
    """``(E, mean, std)`` of ``arm`` per budget, with the baseline at E = 0."""
    pts = [(0, float(results["baseline"]["final"]["top1"]), None)]
    for b in results["budgets"]:
        row = next((r for r in b["rows"] if r["arm"] == arm), None)
        if row is not None:
            std = row["summary"]["std"]
            std = None if std is None or (isinstance(std, float) and math.isnan(std)) else float(std)
            pts.append((b["budget"], float(row["summary"]["mean"]), std))
    return pts


def plot_accuracy_vs_budget(results: dict[str, Any], path: str | Path, arms: Sequence[str], *, title: str = "") -> str:
    """Mean test top-1 (error bars: sample std over seeds) against the budget E, one line per arm.

    Every line starts at E = 0 from the baseline's accuracy, the checkpoint all arms start from. Controls are
    drawn dashed, so a setting's line can be read against them directly.
    """
    controls = set(results["spec"]["controls"])
    fig, axes = new_figure(figsize=(6.4, 4.2))
    ax, cycle = axes[0][0], colours()
    span = max([b["budget"] for b in results["budgets"]] + [1])
    for i, arm in enumerate(arms):
        pts = _series(results, arm)
        dodge = 0.012 * span * (i - (len(arms) - 1) / 2)  # side by side, so error bars do not hide each other
        xs = [p[0] + (dodge if p[0] else 0.0) for p in pts]
        ys = [p[1] for p in pts]
        errs = [p[2] or 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=errs, marker="o", ms=4, capsize=3, label=arm,
                    linestyle="--" if arm in controls else "-", color=cycle[i % len(cycle)])
    ax.set_xlabel("budget E (epochs from the baseline; 0 = baseline)")
    ax.set_ylabel("test top-1 % (mean ± std over seeds)")
    ax.set_xticks(sorted({0, *(b["budget"] for b in results["budgets"])}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_differences(results: dict[str, Any], path: str | Path) -> str:
    """Per budget: each setting's paired difference to the best control, with its confidence interval.

    A bar wholly right of zero is a supported gain; a single-seed difference is drawn as a hollow point
    (no interval).
    """
    budgets = results["budgets"]
    n_set = len(results["spec"]["settings"])
    fig, axes = new_figure(len(budgets), figsize=(4.6 * len(budgets), 0.45 * n_set + 1.6), sharey=True)
    for ax, b in zip(axes[0], budgets):
        rows = [r for r in b["rows"] if r["kind"] == "setting"]
        for y, r in enumerate(rows):
            d = r["vs_best"]
            if d["ci_low"] is None:
                ax.plot([d["mean"]], [y], "o", mfc="none", color="C0")
            else:
                colour = "C2" if d["ci_low"] > 0 else ("C3" if d["ci_high"] < 0 else "C0")
                ax.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]], fmt="o",
                            capsize=3, color=colour)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r["arm"] for r in rows], fontsize=8)
        ax.set_xlabel(f"Δ top-1 vs {b['best_control']} (pt)")
        ax.set_title(f"E = {b['budget']}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, so the first setting is on top
    return save_figure(fig, path)


def write_sweep_report(results: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the PNGs into ``out``; returns the two report paths."""
    out = Path(out)
    doc = Document(f"RefConv sweep: {results['spec']['name']}")
    doc.sections.append(_what_was_run(results))
    if results.get("warnings"):
        doc.sections.append(Section("Warnings").add(Bullets(list(results["warnings"]))))
    doc.sections += [_verdict_section(results), _results_section(results), _budget_plots_section(results, out),
                     _differences_section(results, out), _curves_section(results, out), _cost_section(results),
                     _time_section(results), _reproduce_section(results)]
    return doc.write(out)


def _interval_name(spec: dict[str, Any]) -> str:
    """``95% paired Student t``: the confidence and the kind of the sweep's intervals."""
    kind = "paired Student t" if spec["ci"] == "t" else "percentile bootstrap of the paired differences"
    return f"{round(spec['confidence'] * 100)}% {kind}"


def _baseline_text(bl: dict[str, Any]) -> str:
    """Where every arm starts: per-seed baselines, one baseline trained here, or given weights."""
    if bl.get("per_seed"):
        tops = ", ".join(f"{k} {fmt(v['final']['top1'])}" for k, v in bl["per_seed"].items())
        return (f"its own seed's baseline, trained here for {fmt(bl['epochs'])} epoch(s) with that seed (test top-1 "
                f"{tops} %; mean {fmt(bl['final']['top1'])} %)")
    if bl["trained"]:
        return (f"a baseline trained here for {fmt(bl['epochs'])} epoch(s) (seed {fmt(bl['seed'])}), test top-1 "
                f"{fmt(bl['final']['top1'])} %")
    return f"the given weights `{bl['weights']}` (test top-1 {fmt(bl['final']['top1'])} %)"


def _what_was_run(results: dict[str, Any]) -> Section:
    spec, rec = results["spec"], results["recipe"]
    base, seeds, budgets = spec["base"], spec["seeds"], results["budgets"]
    s = Section("What was run")
    if spec.get("description"):
        s.add(Text(spec["description"]))
    subset = []
    if base.get("subset_train"):
        subset.append(f"{fmt(base['subset_train'])} training images")
    if base.get("subset_test"):
        subset.append(f"{fmt(base['subset_test'])} test images")
    size = base.get("image_size")
    s.add(Text(
        f"**{base.get('model', '(default model)')}** on **{base.get('data', 'fashion-mnist')}**"
        + (f" at {size}x{size}" if size else "")
        + (f" ({', '.join(subset)}, class-stratified subsets)" if subset else "") + ". "
        f"Every arm starts from {_baseline_text(results['baseline'])}, trains with the same recipe ({rec['opt']}, lr "
        f"{fmt(rec['lr'], 4)} at batch {fmt(rec['batch_size'])}, {rec['sched']} schedule, "
        f"{fmt(rec['warmup_epochs'], 1)} warm-up epochs, weight decay {rec['weight_decay']:g}) for a budget of E "
        "epochs "
        f"(E in {', '.join(str(b['budget']) for b in budgets)}), over {len(seeds)} seed(s) "
        f"({', '.join(str(x) for x in seeds)}); seed s of every arm shares data order and augmentation draws, so "
        f"arms are compared per seed. Controls at every budget: {', '.join(f'**{c}**' for c in spec['controls'])} "
        "(continue: plain training with the same recipe; finetune: plain training at lr "
        f"{fmt(rec['finetune_lr'], 4)})."
    ))
    rows = [[st["name"], fmt_changes(st["overrides"]), st["source"]] for st in spec["settings"]]
    s.add(Table(["setting", "changes to the shared recipe (method refconv)", "from"], rows,
                caption="RefConv settings. The shared recipe (base) is listed under Reproduce."))
    return s


def _verdict_section(results: dict[str, Any]) -> Section:
    """How settings are compared (the interval, its t multiplier), then per budget each setting's verdict."""
    spec = results["spec"]
    s = Section("Verdict")
    n = len(spec["seeds"])
    tm = t_multiplier(n, spec["confidence"])
    if n < 2:
        s.add(Text("One seed: the differences below have no confidence interval, and no claim is made either way."))
    else:
        s.add(Text(
            f"Each setting is compared with the **best control** at the same budget (the control with the higher mean "
            f"top-1), by the per-seed difference of test top-1 (percentage points) and its {_interval_name(spec)} "
            f"interval over {n} seeds"
            + (f" (t multiplier {fmt(tm, 2)} with {n - 1} degree(s) of freedom: few seeds give wide intervals, so only "
               "large, consistent gains are called gains)" if spec["ci"] == "t" and tm is not None else "")
            + f". \"X ± Y\" is the mean ± sample std of the per-seed differences. {len(spec['settings'])} setting(s) "
              "are tested at each budget without correction for multiple comparisons: read a single marginal "
              "\"beats\" among many settings with care."
        ))
    for b in results["budgets"]:
        best = next(r for r in b["rows"] if r["arm"] == b["best_control"])
        s.add(Text(f"**E = {b['budget']}** (best control: {b['best_control']}, top-1 {fmt_summary(best['summary'])} %):"))
        items = []
        for r in (r for r in b["rows"] if r["kind"] == "setting"):
            matched = (f"; against its lr-matched control ({r['lr_matched_control']}): "
                       f"{fmt_diff(r['vs_lr_matched'])} pt" if r.get("vs_lr_matched") else "")
            items.append(f"**{r['arm']}** {r['verdict'].rstrip('.')}{matched}.")
        if items:
            s.add(Bullets(items))
    return s


def _results_section(results: dict[str, Any]) -> Section:
    """Per budget: every arm's accuracy and its differences to the controls, then top-1 per seed."""
    spec = results["spec"]
    controls, seeds = spec["controls"], spec["seeds"]
    s = Section("Results")
    for b in results["budgets"]:
        rows = []
        for r in b["rows"]:
            vs = r["vs"]
            rows.append([
                r["arm"], r["kind"], fmt_summary(r["summary"]), fmt_summary(r["summary_top5"]),
                fmt_diff(r["vs_best"]) if r["vs_best"] else "",
                (f"{r['lr_matched_control']}: {fmt_diff(r['vs_lr_matched'])}" if r.get("vs_lr_matched") else ""),
                *[fmt_diff(vs[c]) if c in vs else "" for c in controls],
                f"{r['vs_baseline']:+.2f}" if r["vs_baseline"] is not None else "",
            ])
        s.add(Table(
            ["arm", "kind", "top-1 %", "top-5 %", f"Δ top-1 vs best control ({b['best_control']})",
             "Δ vs lr-matched control", *[f"Δ vs {c}" for c in controls], "Δ vs baseline"],
            rows,
            caption=f"E = {b['budget']} epochs: test accuracy after the last epoch, mean ± sample std over "
                    f"{len(seeds)} seed(s). Δ: mean paired per-seed difference (pt) [{_interval_name(spec)} "
                    "interval]; Δ vs baseline: difference of the mean to the baseline (the mean of the per-seed "
                    "baselines when each seed trains its own; no interval). The lr-matched control trains at the "
                    "setting's own recipe lr.",
        ))
        per_seed = [[r["arm"]] + [fmt(v) for v in r["values"]] for r in b["rows"]]
        s.add(Table(["arm"] + [f"seed {x}" for x in seeds], per_seed,
                    caption=f"E = {b['budget']}: top-1 % per seed (each the final epoch of one run in runs/)."))
    return s


def _budget_plots_section(results: dict[str, Any], out: Path) -> Section:
    spec = results["spec"]
    settings, controls = spec["settings"], list(spec["controls"])
    s = Section("Accuracy vs budget")
    png = out / "accuracy-vs-budget.png"
    plot_accuracy_vs_budget(results, png, [st["name"] for st in settings] + controls, title=f"{spec['name']}: all arms")
    s.add(Image(png.name, caption="All arms: mean test top-1 against the budget (error bars: std over seeds); "
                                  "E = 0 is the baseline."))
    for i, st in enumerate(settings):
        png = out / f"budget-{i:02d}-{_slug(st['name'])}.png"
        plot_accuracy_vs_budget(results, png, [st["name"], *controls], title=f"{st['name']} vs the controls")
        s.add(Image(png.name, caption=f"{st['name']} ({fmt_changes(st['overrides'])}) against the controls."))
    return s


def _differences_section(results: dict[str, Any], out: Path) -> Section:
    png = out / "differences.png"
    plot_differences(results, png)
    conf_pct = f"{round(results['spec']['confidence'] * 100)}%"
    return Section("Difference to the best control").add(Image(
        png.name, caption=f"Per budget: each setting's mean paired difference to the best control with its "
                          f"{conf_pct} interval (green: wholly above zero; red: wholly below)."))


def _curves_section(results: dict[str, Any], out: Path) -> Section:
    bl = results["baseline"]
    s = Section("Training curves")
    offset = int(bl["epochs"] or 0) if bl["trained"] else 0
    for b in results["budgets"]:
        hist: dict[str, list] = {}
        if bl["trained"] and bl.get("history"):
            hist["baseline"] = [bl["history"]]
        for r in b["rows"]:
            hist[r["arm"]] = [shift_epochs(results["cells"][c]["history"], offset) for c in r["cells"]]
        png = out / f"curves-e{b['budget']}.png"
        plot_curves(hist, png, keys=("train_loss", "test_top1"), title=f"E = {b['budget']}")
        s.add(Image(png.name, caption=f"E = {b['budget']}: per-epoch training loss and test top-1 of every run"
                                      + ("; the arms start where the baseline ended." if offset else ".")))
    return s


def _cost_section(results: dict[str, Any]) -> Section:
    s = Section("Cost")
    for b in results["budgets"]:
        rows = []
        for r in b["rows"]:
            c = r["cost"]
            rows.append([r["arm"], fmt_params(c["trainable_params"]), fmt_params(c["total_params"]),
                         fmt_params(c["deploy_params"]), fmt(c["epoch_time_s"]), fmt(c["epoch_time_ratio"]),
                         fmt(c["wall_time_s"], 1)])
        s.add(Table(
            ["arm", "trainable params", "params while training", "deployed params", "s / epoch",
             f"time × {b['best_control']}", "wall s / run"],
            rows,
            caption=f"E = {b['budget']}: parameters of seed 0's run; s / epoch: mean training time per epoch over every "
                    "epoch and seed (metrics.jsonl epoch_time_s)"
                    + (f", measured while {results['parallel']} runs shared the machine" if results["parallel"] > 1
                       else "")
                    + ". Deployed params: after folding, RefConv costs what the baseline costs.",
        ))
    return s


def _time_section(results: dict[str, Any]) -> Section:
    est, bl = results["estimate"], results["baseline"]
    trained = results["cells_trained_now"] + (1 if est["baseline_todo"] else 0)
    total_s = sum(c["wall_time_s"] for c in results["cells"].values()) + (bl.get("wall_time_s") or 0.0)
    return Section("Time: estimate vs actual").add(Table(["", ""], [
        ["training time of every run, summed (min)", fmt(total_s / 60, 1)],
        ["runs trained by this call", fmt(trained)],
        ["estimated before starting (min)", fmt(est["wall_s"] / 60, 1)],
        ["actual wall time of this call (min)", fmt(results["wall_time_s"] / 60, 1)],
        ["parallel processes", fmt(results["parallel"])],
        ["estimate: device / threads", f"{est['device']} / {est['threads']}"],
        ["estimate: steps per epoch × batch", f"{fmt(est['steps_per_epoch'])} × {fmt(est['batch_size'])}"],
        ["estimate: one training step, plain (ms)", fmt(est["step_s"]["plain"] * 1000, 1)],
        *[[f"estimate: one training step, {st['name']} (ms)", fmt(est["step_s"][st["name"]] * 1000, 1)]
          for st in results["spec"]["settings"]],
    ], caption="The estimate times one batch per distinct model before anything trains (see docs/sweep.md) and "
               "covers what this call had to train; cached cells cost nothing. The summed training time counts every run "
               "of the sweep, whenever it was trained (a resumed run counts its last part only)."))


def _reproduce_section(results: dict[str, Any]) -> Section:
    spec = results["spec"]
    s = Section("Reproduce")
    s.add(Text("Command (rerunning it reuses every finished run and resumes interrupted ones):"))
    s.add(Code(results["command"]))
    sweep_yaml = {k: spec[k] for k in ("name", "base", "baseline", "seeds", "budgets", "controls", "ci", "confidence")}
    sweep_yaml["settings"] = [{"name": st["name"], **st["overrides"]} for st in spec["settings"]]
    s.add(Text("The sweep as resolved (settings from a grid are listed one by one):"))
    s.add(Code(yaml.safe_dump(sweep_yaml, sort_keys=False)))
    env = results["environment"]
    s.add(Table(["", ""], [[k, str(v)] for k, v in env.items()]
                + [["wall time", f"{fmt(results['wall_time_s'] / 60, 1)} min"]]))
    s.add(Text("Every number in this report is read from results.json in the same directory; every cell's numbers "
               "come from its own run directory under runs/ (done.json, metrics.jsonl)."))
    return s
