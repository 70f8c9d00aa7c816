"""Stage 5 of the demo: ``report.md`` and ``report.html`` from ``results.json`` alone.

Every number printed here is read from the results dict and formatted by :func:`fmt` (or one of the
summary helpers below), so a test can recompute each string from ``results.json`` and find it in the
report. The wording follows the intervals: a gain is only called a gain when it is supported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..report import Code, Document, Image, Section, Table, Text
from ..report.plots import plot_curves
from ..stats import PairedDifference, verdict
from .tables import mean_epoch_time

__all__ = ["write_demo_report", "fmt", "fmt_summary", "fmt_diff", "fmt_params", "shift_epochs"]


def fmt(x: Any, digits: int = 2) -> str:
    """The one number formatter of the report."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_summary(s: dict[str, Any], digits: int = 2) -> str:
    if s["n"] < 2 or s["std"] is None or (isinstance(s["std"], float) and math.isnan(s["std"])):
        return fmt(s["mean"], digits)
    return f"{fmt(s['mean'], digits)} ± {fmt(s['std'], digits)}"


def fmt_diff(d: dict[str, Any], digits: int = 2) -> str:
    base = f"{d['mean']:+.{digits}f}"
    if d.get("ci_low") is None:
        return base + " (1 seed)"
    return f"{base} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def shift_epochs(history: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """A run's history with its epochs counted from ``offset`` (an arm's curve continues its start's)."""
    return [{**h, "epoch": h["epoch"] + offset} for h in history]


def _diff_obj(d: dict[str, Any]) -> PairedDifference:
    keys = ("mean", "std", "n", "ci_low", "ci_high", "confidence", "method", "p_value")
    return PairedDifference(**{k: d[k] for k in keys})


def fmt_params(n: int | None) -> str:
    """A parameter count in millions, ``1.234M`` (``n/a`` when unknown)."""
    return "n/a" if n is None else f"{n / 1e6:.3f}M"


def write_demo_report(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the curves' PNGs into ``out``; returns the two report paths."""
    doc = Document("RefConv demo report")
    doc.sections += [_what_was_run(results), _verdict_section(results), _results_section(results),
                     _curves_section(results, out), _cost_section(results), _equivalence_section(results),
                     _analyses_section(results, out), _reproduce_section(results)]
    return doc.write(out)


def _arms_text(p: dict[str, Any], seeds: list[int]) -> str:
    """The arms every model trains, with the profile's budget, warm-up and BatchNorm recalibration."""
    best = p.get("best_setting")
    return (f"with the same recipe and a budget of {p['arm_epochs']} epochs each, over {len(seeds)} seed(s) "
            f"({', '.join(str(x) for x in seeds)}): **refconv** (the authors' defaults: convert, frozen basis, "
            "Refocusing Learning), "
            + (f"**{best[0]}** (the best setting of the recorded studies: "
               f"{', '.join(f'{k}={v}' for k, v in best[1].items())}), " if best else "")
            + f"**continue** (plain training, same recipe) and **finetune** (plain, lr x{p['finetune_lr_mult']}). "
            + (f"Every arm warms up for {p['arm_warmup_epochs']:g} epoch(s) (5 % of the budget, as the authors) "
               if p.get("arm_warmup_epochs") else "")
            + (f"and is scored after its BatchNorm statistics are recomputed on {p['bn_recalibrate_batches']} "
               "training batches (the same for every arm)." if p.get("bn_recalibrate_batches") else ""))


def _what_was_run(results: dict[str, Any]) -> Section:
    p = results["profile"]
    s = Section("What was run")
    subset = (
        f"a class-stratified subset of {fmt(p['subset_train'])} training and {fmt(p['subset_test'])} test images"
        if p.get("subset_train") or p.get("subset_test")
        else "the full training and test sets"
    )
    arms_text = _arms_text(p, results["seeds"])
    s.add(Text(f"Profile **{p['name']}** on {p['data']} ({subset}, resized to {p['image_size']}x{p['image_size']})."))
    for model, m in results["models"].items():
        st = m["start"]
        if st.get("kind") == "pretrained":
            card = st.get("card") or {}
            recipe = (card.get("recipe") or {}).get("command", "its recipe")
            s.add(Text(
                f"**{model}** starts from the shipped converged model **{st['name']}**: test top-1 "
                f"**{fmt(card.get('test_top1'))} %** on the full test set (its card: {fmt(card.get('epochs'))} epochs of "
                f"`{recipe}`, SHA-256 `{str(card.get('sha256'))[:16]}...`), {fmt(st['final']['top1'])} % on this demo's "
                f"test split. From it, {arms_text}"
            ))
        else:
            s.add(Text(f"**{model}**: a baseline trained {fmt(st.get('epochs'))} epochs from scratch here (seed 0), an "
                       f"under-trained start; from that checkpoint, {arms_text}"))
    if p.get("subset_train") or p.get("subset_test") or p["arm_epochs"] < 3:
        s.add(Text(
            "This is a reduced run (subsampled data, few epochs): its numbers show the pipeline and this run's "
            "outcome, not the paper's ImageNet-scale claims. The recorded study (docs/pretrained-study.md) and "
            "`refconv demo --profile full` measure more."
        ))
    return s


def _verdict_section(results: dict[str, Any]) -> Section:
    s = Section("Verdict")
    for model, m in results["models"].items():
        for ref in (r for r in m["table"] if r["method"] == "refconv"):
            name = "RefConv (authors' defaults)" if ref["arm"] == "refconv" else f"RefConv ({ref['arm']})"
            for ctrl in ("continue", "finetune", "baseline"):
                d = ref["vs"][ctrl]
                label = ctrl if ctrl != "baseline" else _start_label(m)
                s.add(Text(f"**{model}**, {name} top-1 vs {label}: {verdict(_diff_obj(d), label)}"))
    return s


def _results_section(results: dict[str, Any]) -> Section:
    s = Section("Results")
    seeds = results["seeds"]
    for model, m in results["models"].items():
        rows = [[_start_label(m), fmt(m["start"]["epochs"]), fmt(m["start"]["final"]["top1"]),
                 fmt(m["start"]["final"]["top5"]), "", "", ""]]
        top5 = {r["arm"]: r for r in m["table_top5"]}
        for r in m["table"]:
            vs = r["vs"]
            rows.append([r["arm"], fmt(r["epochs"]), fmt_summary(r["summary"]), fmt_summary(top5[r["arm"]]["summary"]),
                         *[fmt_diff(vs[c]) if c in vs else "" for c in ("continue", "finetune", "baseline")]])
        s.add(Table(
            ["method", "epochs", "top-1 %", "top-5 %", "Δ top-1 vs continue", "Δ vs finetune", "Δ vs start"],
            rows,
            caption=f"{model}: test accuracy after the last epoch, mean ± sample std over {len(seeds)} seed(s); Δ is "
                    "the paired per-seed difference with its 95% t interval.",
        ))
        per_seed = [[r["arm"]] + [fmt(m["cells"][f"{r['arm']}/seed{sd}"]["final"]["top1"]) for sd in seeds]
                    for r in m["table"]]
        s.add(Table(["method"] + [f"seed {sd}" for sd in seeds], per_seed, caption=f"{model}: top-1 per seed."))
    return s


def _curves_section(results: dict[str, Any], out: Path) -> Section:
    """Each model's per-epoch curves (a PNG per model in ``out``): the baseline's, then the arms' after it."""
    s = Section("Training curves")
    for model, m in results["models"].items():
        trained_here = bool(m["start"]["history"])
        hist = {"baseline": [m["start"]["history"]]} if trained_here else {}
        offset = m["start"]["epochs"] if trained_here else 0
        for arm in (r["arm"] for r in m["table"]):
            hist[arm] = [shift_epochs(m["cells"][f"{arm}/seed{sd}"]["history"], offset) for sd in results["seeds"]]
        png = out / f"curves-{m['slug']}.png"
        plot_curves(hist, png, keys=("train_loss", "test_loss", "test_top1"), title=model)
        where = ("the arms start from the baseline's last epoch" if trained_here else
                 f"epochs of the arms, from {m['start']['name']} (top-1 {fmt(m['start']['final']['top1'])} % on this "
                 "test split)")
        s.add(Image(str(png.relative_to(out)), caption=f"{model}: per-epoch curves; {where}."))
    return s


def _cost_section(results: dict[str, Any]) -> Section:
    s = Section("Cost: training time vs deployed")
    for model, m in results["models"].items():
        eq = m["equivalence"][0]
        tt = m["cells"]["refconv/seed0"]
        ct = m["cells"]["continue/seed0"]
        lat = eq["latency_ms"]
        tsf = eq["train_step_flops"]
        rows = [
            ["start / continue", fmt_params(eq["params"]["baseline"]), fmt_params(ct["trainable_params"]),
             fmt(eq["flops_per_image"]["baseline"] / 1e6), fmt(tsf["baseline"] / 1e9, 3),
             fmt(lat["baseline"]["median_ms"]), fmt(mean_epoch_time(ct))],
            ["refconv, training time", fmt_params(eq["params"]["training_time"]),
             fmt_params(eq["params"]["training_time_trainable"]), "", fmt(tsf["refconv"] / 1e9, 3), "",
             fmt(mean_epoch_time(tt))],
            ["refconv, folded (deployed)", fmt_params(eq["params"]["folded"]), "",
             fmt(eq["flops_per_image"]["folded"] / 1e6), "", fmt(lat["folded"]["median_ms"]), ""],
        ]
        s.add(Table(["model", "params", "trainable", "inference MFLOPs / image",
                     f"train-step GFLOPs (batch {tsf['batch']})", f"latency ms (batch {lat['batch']})",
                     "s / epoch"], rows,
                    caption=f"{model}: folded params and FLOPs equal the start's: {fmt(eq['cost_equal'])}. "
                            "Latency: median of interleaved runs of the start and folded on the same input; "
                            "epoch time: mean training seconds per epoch of seed 0."))
    return s


def _equivalence_section(results: dict[str, Any]) -> Section:
    s = Section("Folding equivalence")
    for model, m in results["models"].items():
        rows = [[fmt(e["seed"]), fmt(e["test_images"]), f"{e['max_abs_logit_err']:.3g}", f"{e['max_rel_logit_err']:.3g}",
                 f"{fmt(e['identical_predictions'])} / {fmt(e['test_images'])}", fmt(e["top1_unfolded"]),
                 fmt(e["top1_folded"]), fmt(e["cost_equal"])] for e in m["equivalence"]]
        s.add(Table(["seed", "test images", "max |Δ logit|", "relative", "identical predictions", "top-1 unfolded",
                     "top-1 folded", "params & FLOPs = start"], rows,
                    caption=f"{model}: the trained RefConv model (unfolded) vs its folded weights loaded with "
                            "strict=True into the stock model, on the whole test set."))
    return s


def _analyses_section(results: dict[str, Any], out: Path) -> Section:
    """Per model: the analyses' table over seeds (RefConv vs the same seed's continue) and seed 0's plots."""
    s = Section("Analyses")
    for model, m in results["models"].items():
        a = m["analysis"]
        rows_in = a["over_seeds"]
        n = len(rows_in[0]["seeds"]) if rows_in else 0
        s.add(Text(f"**{model}**: each seed's RefConv model against the same seed's same-budget continue control, "
                   f"over {n} seed(s); Δ is the paired per-seed difference RefConv − continue with its 95% t "
                   "interval. Definitions in docs/analysis.md; the plots below are seed 0's."))
        start_red = (a["seed0"].get("baseline_redundancy") or {}).get("overall")
        rows = []
        for r in rows_in:
            ref_col = fmt(start_red, 4) if start_red is not None and r["metric"].startswith("channel diversity") else ""
            digits = 4 if "%" not in r["metric"] else 2
            rows.append([r["metric"], fmt_summary(r["continue_summary"], digits), fmt_summary(r["refconv_summary"], digits),
                         fmt_diff(r["diff"], digits), ref_col])
        if rows:
            s.add(Table(["metric", "continue", "refconv", "Δ refconv − continue", "start"], rows,
                        caption=f"{model}: mean ± sample std over seeds. Sharpness: mean loss rise at a small radius "
                                "along three random filter-normalised directions shared by both models (lower = "
                                "flatter); robustness: L-inf attacks in pixel units on the attacked test images."))
        seed0 = a["seed0"]
        for f in seed0.get("files", []):
            if f.endswith(".png"):
                s.add(Image(str((Path(seed0["out_dir"]) / f).relative_to(out)), caption=f"{model}, seed 0: {f[:-4]}"))
    return s


def _reproduce_section(results: dict[str, Any]) -> Section:
    s = Section("Reproduce")
    s.add(Text("Command:"))
    s.add(Code("\n".join(results["commands"])))
    env = results["environment"]
    s.add(Table(["", ""], [[k, str(v)] for k, v in env.items()] +
                [["wall time", f"{fmt(results['wall_time_s'] / 60, 1)} min"]]))
    s.add(Text("Every number in this report is read from results.json in the same directory, written by this run "
               "(cached stages reuse the runs in runs/)."))
    return s


def _start_label(m: dict[str, Any]) -> str:
    st = m["start"]
    return f"start ({st['name']})" if st.get("kind") == "pretrained" else "baseline"
