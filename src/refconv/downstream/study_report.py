"""Write the downstream study's ``results.json``, ``report.md`` and ``curves.png`` (see :mod:`.study`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..engine.checkpoint import atomic_write_bytes
from ..report import Bullets, Document, Image, Section, Table, Text

__all__ = ["render_markdown", "report_document", "write_report"]

_LABEL = {"map_50": "mAP@0.5", "map": "mAP@[.5:.95]", "miou": "mIoU", "pixel_acc": "pixel acc."}
_TEST = "test_"  # the engine's metrics.jsonl / history column of a test metric: test_map_50, test_miou...


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _diff(d: dict[str, Any]) -> str:
    if d.get("ci_low") is None:
        return f"{100 * d['mean']:+.2f} (1 seed, no interval)"
    return f"{100 * d['mean']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _verdict(task: dict[str, Any], key: str) -> str:
    table = task["tables"][key]
    best = table["best_control"]
    if best is None:
        return ""
    d = table["refconv_vs"][best]
    label = _LABEL.get(key, key)
    if d.get("ci_low") is None:
        return f"{label}: refconv − {best} (the best control) {100 * d['mean']:+.2f} pt from one seed: no claim."
    if d["ci_low"] > 0:
        word = "beats"
    elif d["ci_high"] < 0:
        word = "is below"
    else:
        word = "is not distinguishable from"
    return (f"{label}: refconv {word} the best equal-budget control ({best}): {_diff(d)} pt, 95 % CI over "
            f"{d['n']} seeds.")


def render_markdown(results: dict[str, Any]) -> str:
    """The report: what was run, the baseline's curve, the arms over seeds, refconv's paired differences, the
    fold checks, and the wall time."""
    return report_document(results).to_markdown()


def report_document(results: dict[str, Any]) -> Document:
    """The report as a :class:`~refconv.report.Document`: the study, then a section per task (and the curves)."""
    study = results["study"]
    doc = Document(f"Downstream transfer study: {study['name']}")
    doc.add(
        Text(f"Backbone: **{study['backbone']}** (this project's registry; its classifier trunk loaded into each "
             f"model). Seeds {study['seeds']}; arms {', '.join(study['arms'])} from the same baseline checkpoint, same "
             "budget (finetune: lr x 0.1). Data: the synthetic Fashion-MNIST collages (VOC / Cityscapes format), so "
             "the numbers say how RefConv compares with more training *here*, nothing about Pascal VOC or "
             "Cityscapes."),
        Text(f"Command: `{results.get('command') or 'refconv downstream-study ...'}`  \n"
             f"Wall time: **{results['wall_time_s'] / 60:.1f} min** on {results['machine']['cpus']} CPU cores "
             f"({results['machine']['platform']}, torch {results['machine']['torch']})."),
        Text("Differences are refconv minus the other arm, in points (x100), per seed then averaged; intervals are "
             "Student-t 95 % over the seed pairs (`refconv.stats.paired_difference`)."),
    )
    doc.sections += [_task_section(name, task, study["arms"]) for name, task in results["tasks"].items()]
    if results.get("plot"):
        doc.sections[-1].add(Image(results["plot"], alt="curves"))
    return doc


def _task_section(name: str, task: dict[str, Any], arms: list[str]) -> Section:
    keys = list(task["tables"])
    labels = [_LABEL.get(k, k) for k in keys]
    base = task["baseline"]
    s = Section(f"{name.capitalize()}: {task['arch']} on {task['data']}")
    bb = task.get("backbone") or {}
    if bb:
        acc = bb.get("test_top1")
        s.add(Text(f"Backbone {bb.get('name') or bb.get('source')}"
                   + (f" ({acc:.2f} % Fashion-MNIST test top-1)" if isinstance(acc, (int, float)) else "")
                   + f": {bb.get('loaded')}/{bb.get('trunk_tensors')} trunk tensors loaded."))
    s.section(f"Baseline ({_epochs(base['epochs'])} from the pretrained backbone, "
              f"{(base.get('wall_time_s') or 0) / 60:.1f} min)").add(Table(
        ["epoch", "train loss", *labels],
        [[row["epoch"], f"{row.get('train_loss', float('nan')):.3f}", *[_pct(row.get(_TEST + k)) for k in keys]]
         for row in base["history"]]))
    s.section(f"Arms ({_epochs(task['budget_epochs'])} each from the baseline; mean ± sd over seeds, x100)").add(Table(
        ["arm", *labels],
        [["baseline (start)", *[_pct(base["metrics"].get(k)) for k in keys]]]
        + [[arm, *[_mean_sd(task["tables"][k]["arms"][arm]) for k in keys]] for arm in arms]))
    s.section("RefConv minus each other arm (points, 95 % CI)").add(
        Table(["vs", *labels], [[other, *[_diff(task["tables"][k]["refconv_vs"][other]) for k in keys]]
                                for other in task["tables"][keys[0]]["refconv_vs"]]),
        Bullets([_verdict(task, k) for k in keys]))
    folds = [r for r in task["runs"].get("refconv", []) if r.get("fold")]
    if folds:
        s.add(_fold_section(name, keys, folds))
    params = task["runs"].get("refconv", [{}])[0]
    if params.get("trainable_params"):
        s.add(Text(f"RefConv trains {params['trainable_params']:,} parameters and deploys "
                   f"{params['deploy_params']:,} (the baseline's {base.get('deploy_params') or 0:,})."))
    return s.add(Text(f"Task wall time: {task['wall_time_s'] / 60:.1f} min."))


def _mean_sd(s: dict[str, Any]) -> str:
    sd = "" if s["n"] < 2 or s["std"] is None or math.isnan(s["std"]) else f" ± {100 * s['std']:.2f}"
    return f"{100 * s['mean']:.2f}{sd}"


def _fold_section(name: str, keys: list[str], folds: list[dict[str, Any]]) -> Section:
    """Every RefConv run folded into the stock model: its raw outputs' error, metrics, detections or mask pixels."""
    detection = name == "detection"
    rows = []
    for r in folds:
        f = r["fold"]
        if detection:
            det = f.get("detections") or {}
            last = f"{det.get('unmatched')} / {det.get('detections')}"
        else:
            masks = f.get("masks") or {}
            last = f"{masks.get('pixels_equal')} / {masks.get('pixels')}"
        rows.append([r["seed"], f"{f['max_abs_err']:.2g}",
                     *[f"{_pct(f['unfolded'].get(k))} / {_pct(f['folded'].get(k))}" for k in keys], last])
    headers = ["seed", "raw outputs max abs err", *[f"{_LABEL.get(k, k)} unfolded / folded" for k in keys],
               "detections unmatched / total" if detection else "mask pixels equal / total"]
    return Section("Fold + equivalence (every RefConv run folded into the stock model)").add(Table(headers, rows))


def _plot(results: dict[str, Any], path: Path) -> bool:
    from ..report.plots import new_figure, save_figure

    tasks = results["tasks"]
    try:
        fig, axes = new_figure(len(tasks), figsize=(5.5 * len(tasks), 4))
    except ImportError:  # matplotlib is optional: the report goes without its plot
        return False
    for ax, (name, task) in zip(axes[0], tasks.items()):
        key = _TEST + next(iter(task["tables"]))
        base = task["baseline"]["history"]
        xs = [r["epoch"] for r in base]
        ax.plot(xs, [100 * (r.get(key) or 0) for r in base], "k-o", label="baseline")
        n0 = xs[-1] if xs else 0
        for arm, colour in zip(results["study"]["arms"], ("tab:red", "tab:blue", "tab:green")):
            for i, run in enumerate(task["runs"][arm]):
                h = run["history"]
                ax.plot([n0] + [n0 + r["epoch"] for r in h], [100 * (base[-1].get(key) or 0)]
                        + [100 * (r.get(key) or 0) for r in h], "-", color=colour, alpha=0.7,
                        label=arm if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_LABEL[key[len(_TEST):]] + " (%)")
        ax.set_title(f"{name}: {task['arch']}")
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def write_report(results: dict[str, Any], out: str | Path) -> None:
    """Write ``results.json``, ``report.md`` and (matplotlib permitting) ``curves.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if _plot(results, out / "curves.png"):
        results["plot"] = "curves.png"
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=float) + "\n").encode())
    atomic_write_bytes(out / "report.md", render_markdown(results).encode())
