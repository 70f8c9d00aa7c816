"""``refconv demo``: the paper's protocol end to end on the embedded default data, with a report.

Stages, each cached in the output directory (a rerun skips what is done, an interrupted one resumes):

1. the starting model, per model: a converged model shipped in the registry (``fmnist/...``: where users start,
   and where the paper says RefConv works), evaluated on this demo's test split; or, with a ``*-scratch``
   profile, a baseline trained here from scratch;
2. from that start, with the same budget and several seeds: ``refconv``, ``continue``, ``finetune``;
3. fold each RefConv run; check folded vs unfolded on the whole test set (max logit error, identical
   predictions), parameters and FLOPs against the start, and latency folded vs start side by side;
4. the analyses (cost, channel redundancy, kernel skeleton, loss landscape, adversarial robustness) for every
   seed, summarised over the seeds;
5. ``results.json`` (every number), ``report.md`` and a self-contained ``report.html`` built from it.

No number in the report comes from anywhere but this run's directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import RunConfig, RunResult
from ..engine.config import make_config
from ..engine.rundir import clear as clear_dir
from ..engine.rundir import is_empty
from ..errors import CheckpointError, ConfigError
from ..environment import environment
from .cells import Arm, Cell, cell_config, cell_record, study_dir
from .demo_profile import PROFILES, DemoProfile, load_profile, profile
from .progress import StudyProgress
from .runner import StudyModels, execute
from .tables import arm_table

__all__ = ["DemoProfile", "PROFILES", "DemoResult", "run_demo", "profile", "load_profile", "plan_cells",
           "demo_arms"]

DEMO_FILE = "demo.json"
RESULTS_FILE = "results.json"
N_STAGES = 5
STAGE_ARMS = ("baseline", "refconv", "continue")  # the runs whose models the fold check and the analyses read


@dataclass
class DemoResult:
    out_dir: Path
    results: dict[str, Any]
    report_md: Path
    report_html: Path


def _slug(model: str) -> str:
    return model.replace("/", "-").replace(":", "-")


def _base_config(p: DemoProfile, model: str, data_dir: str | None, workers: int, progress: str,
                 download: bool = False) -> RunConfig:
    return make_config(
        dict(
            model=model, data=p.data, data_dir=data_dir, download=download, image_size=p.image_size,
            subset_train=p.subset_train, subset_test=p.subset_test, batch_size=p.batch_size, base_lr=p.base_lr,
            finetune_lr_mult=p.finetune_lr_mult, bn_recalibrate_batches=p.bn_recalibrate_batches, workers=workers,
            progress=progress,
        )
    )


def demo_arms(p: DemoProfile) -> list[Arm]:
    """The authors' RefConv, the best setting of the studies (when the profile names one), continue, finetune."""
    common = {"warmup_epochs": p.arm_warmup_epochs}
    arms = [Arm("refconv", "refconv", p.arm_epochs, {**common, **p.refconv_overrides})]
    if p.best_setting:
        name, overrides = p.best_setting
        arms.append(Arm(name, "refconv", p.arm_epochs, {**common, **overrides}))
    return arms + [Arm(c, c, p.arm_epochs, common) for c in ("continue", "finetune")]


def plan_cells(p: DemoProfile, out: Path, bases: Mapping[str, RunConfig]) -> list[Cell]:
    """Every training run of the demo, once, for whichever runner takes them: per model, its baseline when
    trained here (``<model>/baseline``), then each arm and seed (``<model>/<arm>/seed<s>``) from the start."""
    cells = []
    for mi, model in enumerate(p.models):
        slug, root, base = _slug(model), out / "runs" / _slug(model), bases[model]
        if p.starts:
            weights = p.starts[mi]
        else:
            arm = Arm("baseline", "baseline", p.baseline_epochs)
            cells.append(Cell(arm, 0, base.replace(method="baseline", epochs=p.baseline_epochs,
                                                   warmup_epochs=p.warmup_epochs, seed=0, out=str(root / "baseline")),
                              key=f"{slug}/baseline"))
            weights = str(root / "baseline")
        cells += [Cell(a, s, cell_config(base, weights, a, s, root), key=f"{slug}/{a.name}/seed{s}")
                  for s in range(p.seeds) for a in demo_arms(p)]
    return cells


def _check_out_dir(out: Path, p: DemoProfile, overwrite: bool) -> None:
    marker = out / DEMO_FILE
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("profile") != p.to_dict():
            diff = {k: (saved.get("profile", {}).get(k), v) for k, v in p.to_dict().items()
                    if saved.get("profile", {}).get(k) != v}
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:6])
            if not overwrite:
                raise CheckpointError(
                    f"{out} holds a demo with a different configuration ({shown}). Use another --out, or pass "
                    "--overwrite to recompute it there."
                )
            clear_dir(out)  # keeps the lock this demo holds
    elif not is_empty(out) and not overwrite:
        raise CheckpointError(
            f"{out} exists, is not empty and is not a demo directory. Choose another --out (or --overwrite)."
        )
    elif overwrite and not is_empty(out):
        clear_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"profile": p.to_dict()}, indent=2))


def run_demo(
    p: DemoProfile,
    out: str | os.PathLike = "demo-out",
    *,
    data_dir: str | None = None,
    overwrite: bool = False,
    workers: int = 0,
    progress: str = "plain",
    download: bool = False,
    log: Callable[[str], None] | None = None,
    launcher: Any = None,
) -> DemoResult | None:
    """Run the whole protocol for profile ``p`` into ``out``; see the module docstring.

    ``launcher`` (:mod:`refconv.protocol.launch`): a submitit launcher first runs every training run as a job; the
    stages then read them back (folding, analyses and the report run here). None when submitted without waiting.
    """
    with study_dir(Path(out)):
        return _run_demo(p, Path(out), data_dir=data_dir, overwrite=overwrite, workers=workers, progress=progress,
                         download=download, log=log or (lambda s: print(s, file=sys.stderr, flush=True)),
                         launcher=launcher)


def _run_demo(p: DemoProfile, out: Path, *, data_dir: str | None, overwrite: bool, workers: int, progress: str,
              download: bool, log: Callable[[str], None], launcher: Any = None) -> DemoResult | None:
    t0 = time.perf_counter()
    _check_inputs(p, data_dir, download)
    _check_out_dir(out, p, overwrite)
    bases = {m: _base_config(p, m, data_dir, workers, progress, download) for m in p.models}
    starts: dict[str, dict[str, Any]] = {}
    prog = StudyProgress("demo", 0, log)
    if p.starts:
        prog.stage(1, N_STAGES, "starting models (shipped, converged): evaluated on this demo's test split")
        starts = {m: _pretrained_start(name, bases[m], out, data_dir) for m, name in zip(p.models, p.starts)}
    cells = plan_cells(p, out, bases)
    prog.total = len(cells)
    prog.stage(2, N_STAGES, ("" if p.starts else f"baseline(s) ({p.baseline_epochs} epochs from scratch), then ")
               + f"{', '.join(a.name for a in demo_arms(p))} from the start, {p.seeds} seed(s), {p.arm_epochs} "
               f"epochs each")
    runs = execute(cells, out, launcher=launcher, log=log, resubmit=_commands(p, out)[0],
                   keep_models=lambda cell: cell.arm.name in STAGE_ARMS,  # only the models a later stage reads
                   on_done=lambda c, r, i, n: prog.cell(c.key, r))
    if runs is None:  # submitted to a cluster without waiting
        return None
    results: dict[str, Any] = {"profile": p.to_dict(), "models": {}, "commands": _commands(p, out),
                               "environment": environment(), "seeds": list(range(p.seeds))}
    models = StudyModels()
    for model in p.models:
        results["models"][model] = _model_results(p, model, out, runs, starts.get(model), models, data_dir, prog)
    prog.stage(5, N_STAGES, "report")
    results["wall_time_s"] = time.perf_counter() - t0
    from .demo_report import write_demo_report

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    md, html = write_demo_report(results, out)
    log(f"[demo] done in {results['wall_time_s'] / 60:.1f} min: {md} and {html}")
    return DemoResult(out_dir=out, results=results, report_md=md, report_html=html)


def _model_results(p: DemoProfile, model: str, out: Path, runs: Mapping[str, RunResult],
                   start: dict[str, Any] | None, models: StudyModels, data_dir: str | None,
                   prog: StudyProgress) -> dict[str, Any]:
    """One model's part of ``results.json``: its start, cells and tables (stage 2), the fold check (stage 3) and
    the analyses over seeds (stage 4), every model taken from ``models`` (in memory when trained here)."""
    from .analyses import compared_sides, run_analyses, summarize_analyses
    from .equivalence import check_folding
    from .evaldata import test_loader

    slug, arms, seeds = _slug(model), demo_arms(p), list(range(p.seeds))
    arm_runs = {(a.name, s): runs[f"{slug}/{a.name}/seed{s}"] for a in arms for s in seeds}
    baseline_run = None
    if start is None:  # a *-scratch profile: the baseline trained here is the start
        baseline_run = runs[f"{slug}/baseline"]
        start = {**cell_record(baseline_run, out), "kind": "trained here", "name": None,
                 "weights": str(baseline_run.run_dir), "card": None}
    start_model = models.start(start["weights"], trained_here=baseline_run)
    loader = test_loader(arm_runs[("refconv", 0)].config, data_dir=data_dir, batch_size=p.analysis_batch_size)

    prog.stage(3, N_STAGES, f"fold and check equivalence on the whole test split ({model})")
    equivalence = [check_folding(arm_runs[("refconv", s)], models.of(arm_runs[("refconv", s)]), start_model, loader,
                                 latency_repeats=p.latency_repeats) for s in seeds]
    prog.stage(4, N_STAGES, f"analyses ({model}, every seed)")
    per_seed = [run_analyses(models.deployed(arm_runs[("continue", s)]), models.trained(arm_runs[("refconv", s)]),
                             start_model if s == seeds[0] else None, loader, out / "analysis" / slug / f"seed{s}", p,
                             plot=s == seeds[0], compared=compared_sides(arm_runs[("continue", s)],
                                                                         arm_runs[("refconv", s)]))
                for s in seeds]
    return {
        "slug": slug,
        "start": start,
        "cells": {f"{a.name}/seed{s}": cell_record(arm_runs[(a.name, s)], out) for a in arms for s in seeds},
        "table": _table(arms, seeds, arm_runs, start, "top1"),
        "table_top5": _table(arms, seeds, arm_runs, start, "top5"),
        "equivalence": equivalence,
        "analysis": {"seed0": per_seed[0], "over_seeds": summarize_analyses(per_seed, seeds),
                     "per_seed_dirs": [os.path.relpath(a["out_dir"], out) for a in per_seed]},
    }


def _table(arms: list[Arm], seeds: list[int], runs: Mapping[tuple[str, int], RunResult], start: Mapping[str, Any],
           metric: str) -> list[dict[str, Any]]:
    """The arms' ``metric`` over seeds, each against the controls and the start."""
    return arm_table(arms, seeds, runs, metric=metric,
                     reference={"baseline": [float(start["final"][metric])] * len(seeds)})


def _check_inputs(p: DemoProfile, data_dir: str | None, download: bool) -> None:
    """Fail on bad input before any work: data present, model names known, starts verified."""
    from ..data import build_dataset
    from ..models import get_model

    build_dataset(p.data, "test", data_dir=data_dir, image_size=p.image_size, subset=p.subset_test, download=download)
    _check_starts(p)
    for m in p.models:
        get_model(m, num_classes=10, in_chans=1)


def _check_starts(p: DemoProfile) -> None:
    """Pretrained starts exist, verify (SHA-256) and fit the profile's input, before any work."""
    if not p.starts:
        if p.baseline_epochs < 1:
            raise ConfigError(f"profile {p.name!r} has neither pretrained starts nor baseline epochs.")
        return
    from ..models import pretrained

    if len(p.starts) != len(p.models):
        raise ConfigError(f"profile {p.name!r}: {len(p.starts)} start(s) for {len(p.models)} model(s).")
    for name, model in zip(p.starts, p.models):
        pretrained.check_compatible(name, model=model, data=p.data, image_size=p.image_size)
        pretrained.weights_path(name)  # missing / corrupt weights: one line naming how to make or restore them


def _pretrained_start(name: str, base: RunConfig, out: Path, data_dir: str | None) -> dict[str, Any]:
    """The shipped model's record for the report: its card, and its accuracy on this demo's test split (cached in
    ``start-<name>.json`` by the weights' SHA-256: a republished model is evaluated again)."""
    from ..models import pretrained
    from .evaldata import evaluate_start

    card = pretrained.read_card(name) or {}
    rec = evaluate_start(name, base, out / f"start-{_slug(name)}.json", data_dir=data_dir)
    return {"kind": "pretrained", "name": name, "weights": name, "method": "pretrained", "final": rec["final"],
            "epochs": card.get("epochs"), "history": [], "seed": None, "wall_time_s": rec["wall_time_s"],
            "card": {k: card.get(k) for k in ("sha256", "test_top1", "test", "epochs", "machine", "recipe", "plateau",
                                              "params", "image_size")}}


def _commands(p: DemoProfile, out: Path) -> list[str]:
    return [" ".join(["refconv"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("refconv") else
            f"refconv demo --profile {p.name} --seeds {p.seeds} --models {' '.join(p.models)} --out {out}"]
