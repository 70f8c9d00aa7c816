"""The pretrained-model study's one-page summary: two recorded sweeps (one per start) read side by side.

The question the page answers: in which regime (converged or under-trained start) and at which budget, if any,
does a RefConv setting beat the best equal-budget control, and how does RefConv − best control move from the
under-trained to the converged start. Every number is read from the sweeps' ``results.json``; nothing is
recomputed except the table layout::

    refconv study-summary converged=docs/results/pretrained-study/converged-fair \\
        undertrained=docs/results/pretrained-study/undertrained-fair --out docs/pretrained-study.md

The page's reading, written by hand from its tables, lies between :data:`READING_START` and :data:`READING_END`;
regenerating the page keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report import Bullets, Document, Image, Markdown, Section, Table, Text
from .study_analyses import analyses_section, load_analyses

__all__ = ["load_study", "write_study_summary", "read_reading", "READING_START", "READING_END"]

# The page's reading is written by hand from its tables; regenerating the page keeps what lies between these markers.
READING_TITLE = "What it means (written by hand from the tables above; regenerating the page keeps it)"
READING_START = "<!-- reading: written by hand, kept when the page is regenerated -->"
READING_END = "<!-- /reading -->"


def load_study(dirs: dict[str, str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """``{start label: results.json of its sweep}``, in the given order, with its recorded analyses (if any)
    under ``"analyses"``."""
    out = {}
    for label, d in dirs.items():
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: run the sweep first (its command is in its YAML).")
        out[label] = json.loads(path.read_text())
        analyses = load_analyses(d)
        if analyses is not None:
            out[label]["analyses"] = analyses
    return out


def _ci(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.2f} (1 seed)"
    return f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def _ms(s: dict[str, Any]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s.get("std") is not None and s["n"] > 1 else f"{s['mean']:.2f}"


def _rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for b in res["budgets"] for r in b["rows"]]


def write_study_summary(study: dict[str, dict[str, Any]], out: str | os.PathLike, *,
                        plot: bool = True) -> Path:
    """Write the summary page (and ``<stem>-delta.png`` beside it); returns the page's path.

    The hand-written reading of an existing page, between :data:`READING_START` and :data:`READING_END`, is kept.
    """
    out = Path(out)
    reading = read_reading(out)
    doc = Document("Does RefConv beat more training? The pretrained-model study")
    doc.add(*_intro(study))
    doc.sections += [_answer_section(study), _delta_section(study), _controls_section(study)]
    doc.sections += [analyses_section(res["analyses"], label=label) for label, res in study.items()
                     if res.get("analyses")]
    png = out.with_name(out.stem + "-delta.png")
    if plot and _plot(study, png):
        doc.sections[-1].add(Image(png.name, alt="RefConv minus the best control, by budget"))
    doc.sections.append(Section("Reproduce").add(Bullets([
        f"{label}: `{res.get('command', '')}` ({res.get('wall_time_s', 0) / 60:.0f} min, "
        f"{res.get('environment', {}).get('platform', '')})" for label, res in study.items()])))
    if reading is not None:
        doc.sections.append(Section(READING_TITLE).add(Markdown(f"{READING_START}\n{reading}\n{READING_END}")))
    out.write_text(doc.to_markdown(out.parent))
    return out


def read_reading(page: str | os.PathLike) -> str | None:
    """The hand-written text between the reading markers of an existing page (None: no page, or no markers)."""
    page = Path(page)
    if not page.is_file():
        return None
    text = page.read_text()
    if READING_START not in text or READING_END not in text:
        return None
    return text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip("\n")


def _intro(study: dict[str, dict[str, Any]]) -> list[Text | Table]:
    """How to read the page, the scale of the sweeps, and one row per start."""
    base = next(iter(study.values()))["spec"]["base"]
    rows = [[f"{label} (`{_weights_label(res['spec'])}`)", f"{res['baseline']['final']['top1']:.2f}",
             len(res["spec"]["seeds"]), ", ".join(str(b) for b in res["spec"]["budgets"]),
             f"`{res['spec'].get('name')}`: {res.get('command', '')}"] for label, res in study.items()]
    return [
        Text("Every figure below is read from the two sweeps' `results.json` (linked per start); RefConv settings and "
             "the two equal-budget controls (`continue`: plain training with the same recipe; `finetune`: the same at "
             "0.1x the learning rate) start from the same weights, train for the same number of epochs and are scored "
             "on the same test images; Δ is the paired per-seed difference to the **best control at that budget**, "
             "with its 95 % t interval over the seeds. A setting *beats* the best control only when the whole interval "
             "is above zero."),
        Text(f"Scale: `{base['model']}` at "
             + (f"{base['image_size']} px" if base.get("image_size") else "its native size") + "; an epoch is "
             + (f"a fixed class-stratified {base['subset_train']:,}-image subset of the training set"
                if base.get("subset_train") else "the whole 60,000-image training set")
             + f", batch {base['batch_size']}, scored on "
             + (f"a fixed {base['subset_test']:,}-image subset of the test set" if base.get("subset_test")
                else "the full test set") + "."),
        Table(["start", "start top-1", "seeds", "budgets", "sweep"], rows, align="lrrll"),
    ]


def _answer_section(study: dict[str, dict[str, Any]]) -> Section:
    wins = [(label, r) for label, res in study.items() for r in _rows(res)
            if r["kind"] == "setting" and (r.get("vs_best") or {}).get("ci_low") is not None
            and r["vs_best"]["ci_low"] > 0]
    items = [f"**{r['arm']}** beats the best control from the {label} start at {r['budget']} epoch(s): "
             f"Δ {_ci(r['vs_best'])} pt." for label, r in wins]
    if not wins:
        items.append("**No RefConv setting beats the best equal-budget control at any budget, from either start.**")
    for label, res in study.items():
        r = max((r for r in _rows(res) if r["kind"] == "setting"), key=lambda r: r["vs_best"]["mean"])
        items.append(f"Closest from the {label} start: **{r['arm']}** at {r['budget']} epoch(s), "
                     f"Δ {_ci(r['vs_best'])} pt vs {r['best_control']} ({_ms(r['summary'])} % top-1).")
    return Section("The answer").add(Bullets(items))


def _delta_section(study: dict[str, dict[str, Any]]) -> Section:
    """Per setting and budget: each start's top-1 and its difference to that start's best control."""
    labels = list(study)
    keyed = {label: {(r["arm"], r["budget"]): r for r in _rows(res)} for label, res in study.items()}
    order = [(r["arm"], r["budget"]) for r in _rows(study[labels[0]]) if r["kind"] == "setting"]
    order.sort(key=lambda k: (k[0] != "authors", k[0], k[1]))
    rows = []
    for key in order:
        cells = [keyed[lb].get(key) for lb in labels]
        rows.append([key[0], key[1], *[_ms(c["summary"]) if c else "n/a" for c in cells],
                     *[_ci(c.get("vs_best")) if c else "n/a" for c in cells]])
    headers = (["setting", "budget"] + [f"{label}: top-1 %" for label in labels]
               + [f"{label}: Δ vs best control [95 % CI]" for label in labels])
    return Section("RefConv − best control, by start and budget").add(
        Table(headers, rows, align="lr" + "r" * (2 * len(labels))))


def _controls_section(study: dict[str, dict[str, Any]]) -> Section:
    labels = list(study)
    keyed = {label: {(r["arm"], r["budget"]): r for r in _rows(res)} for label, res in study.items()}
    ctrl = sorted({(r["arm"], r["budget"]) for r in _rows(study[labels[0]]) if r["kind"] != "setting"})
    rows = [[key[0], key[1], *[_ms(keyed[lb][key]["summary"]) if key in keyed[lb] else "n/a" for lb in labels]]
            for key in ctrl]
    return Section("The controls").add(Table(["control", "budget", *[f"{lb}: top-1 %" for lb in labels]], rows,
                                             align="lr" + "r" * len(labels)))


def _weights_label(spec: dict[str, Any]) -> str:
    """What the arms started from, as the sweep recorded it: a registry name (sweeps recorded before names were
    kept hold the registry file's path, shown by its name)."""
    from ..models import pretrained

    w = str((spec.get("baseline") or {}).get("weights", ""))
    return next((n for n in pretrained.names() if w.replace(os.sep, "/").endswith(f"/{n}.safetensors")), w)


def _plot(study: dict[str, dict[str, Any]], path: Path) -> bool:
    try:
        from matplotlib.ticker import ScalarFormatter
    except ImportError:  # pragma: no cover
        return False
    from ..report.plots import new_figure, save_figure

    fig, axes = new_figure(len(study), figsize=(5.5 * len(study), 4), sharey=True)
    for ax, (label, res) in zip(axes[0], study.items()):
        by_arm: dict[str, list[dict[str, Any]]] = {}
        for r in _rows(res):
            if r["kind"] == "setting":
                by_arm.setdefault(r["arm"], []).append(r)
        for arm, rows in by_arm.items():
            rows.sort(key=lambda r: r["budget"])
            x = [r["budget"] for r in rows]
            y = [r["vs_best"]["mean"] for r in rows]
            lo = [r["vs_best"]["mean"] - (r["vs_best"]["ci_low"] if r["vs_best"]["ci_low"] is not None
                                          else r["vs_best"]["mean"]) for r in rows]
            hi = [(r["vs_best"]["ci_high"] if r["vs_best"]["ci_high"] is not None else r["vs_best"]["mean"])
                  - r["vs_best"]["mean"] for r in rows]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=arm)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["budget"] for r in _rows(res)}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("budget (epochs)")
        ax.set_title(f"{label} start ({res['baseline']['final']['top1']:.2f} %)")
    axes[0][0].set_ylabel("top-1 Δ vs best control, pt (95 % CI)")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path)
    return True
