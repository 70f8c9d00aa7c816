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

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..engine import RunConfig
from ..engine.config import make_config
from ..engine.rundir import is_empty
from ..engine.rundir import clear as clear_dir
from ..errors import CheckpointError, ConfigError
from ..environment import environment
from .cells import Arm, Cell, cell_config, cell_record, run_cell, run_cells, study_dir
from .progress import StudyProgress
from .tables import arm_table

__all__ = ["DemoProfile", "PROFILES", "DemoResult", "run_demo", "profile"]

DEMO_FILE = "demo.json"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class DemoProfile:
    """Everything that defines a demo; stored in ``demo.json`` and compared on rerun."""

    name: str
    models: tuple[str, ...]
    seeds: int
    baseline_epochs: int  # 0 with ``starts``: nothing is trained before the arms
    arm_epochs: int
    # Registry names the arms start from, one per model (``fmnist/mobilenetv3_small_100``); empty: a baseline of
    # ``baseline_epochs`` is trained here from scratch.
    starts: tuple[str, ...] = ()
    data: str = "fashion-mnist"
    image_size: int = 32
    subset_train: int | None = None
    subset_test: int | None = None
    batch_size: int = 128
    base_lr: float = 0.1
    warmup_epochs: float = 1.0
    arm_warmup_epochs: float = 0.0
    finetune_lr_mult: float = 0.1
    bn_recalibrate_batches: int = 0  # fresh BN statistics before every evaluation (the fair protocol)
    # A second RefConv arm beside the authors' defaults: the best setting the recorded studies found
    # (name, RunConfig overrides); empty: the authors' arm only.
    best_setting: tuple[str, dict[str, Any]] | tuple[()] = ()
    # RunConfig keys of the authors' RefConv arm (``refocus_impl`` / ``refocus_precond`` from the CLI)
    refconv_overrides: dict[str, Any] = field(default_factory=dict)
    # analyses (refconv.analysis.AnalysisConfig keys)
    analysis: dict[str, Any] = field(default_factory=dict)
    analysis_batch_size: int = 128
    latency_repeats: int = 20

    def to_dict(self) -> dict[str, Any]:
        # JSON round trip: the form stored in demo.json (tuples become lists), so comparisons are like for like.
        return json.loads(json.dumps(dataclasses.asdict(self)))


# The best RefConv setting of the recorded short-budget study (docs/pretrained-study.md: zero init, RT lr x0.01; it
# ties the best control after 1 epoch from both starts), shown beside the authors' defaults by the quick demo, whose
# budget (2 epochs from the converged model) is a short one.
BEST_SETTING: tuple[str, dict[str, Any]] = ("refconv-best", {"init": "zeros", "refocus_lr_mult": 0.01,
                                                             "refocus_impl": "implicit"})

PROFILES: dict[str, DemoProfile] = {
    # For tests: a few hundred images, one epoch each; every stage runs, nothing is meaningful.
    "tiny": DemoProfile(
        name="tiny", models=("timm/mobilenetv3_small_050",), seeds=2, baseline_epochs=1, arm_epochs=1,
        subset_train=256, subset_test=128, batch_size=64, warmup_epochs=0.0,
        analysis=dict(num_batches=1, resolution_1d=5, resolution_2d=3, eps=(0.0, 0.02), pgd_steps=2,
                      attack_batches=1, latency_warmup=1, latency_repeats=3, max_pairs=500),
        analysis_batch_size=64, latency_repeats=3,
    ),
    # The README's first command, <= 10 minutes on a 2-core CPU: from the shipped converged MobileNetV3-Small
    # (64 px, full test set on its card), 2 seeds of each arm on a class-stratified subset.
    "quick": DemoProfile(
        name="quick", models=("timm/mobilenetv3_small_100",), starts=("fmnist/mobilenetv3_small_100",), seeds=2,
        baseline_epochs=0, arm_epochs=2, image_size=64, subset_train=6000, subset_test=2000, batch_size=128,
        warmup_epochs=0.0, arm_warmup_epochs=0.1, bn_recalibrate_batches=20, best_setting=BEST_SETTING,
        analysis=dict(num_batches=2, resolution_1d=21, resolution_2d=0, eps=(0.0, 0.01, 0.03), pgd_steps=5,
                      attack_batches=2, latency_warmup=2, latency_repeats=10),
        latency_repeats=20,
    ),
    # The former quick demo: a baseline trained here from scratch (5 epochs on 10k images), an under-trained start.
    "quick-scratch": DemoProfile(
        name="quick-scratch", models=("timm/mobilenetv3_small_100",), seeds=2, baseline_epochs=5, arm_epochs=2,
        subset_train=10000, subset_test=2000, batch_size=128, warmup_epochs=1.0,
        analysis=dict(num_batches=2, resolution_1d=21, resolution_2d=9, eps=(0.0, 0.01, 0.03), pgd_steps=5,
                      attack_batches=4, latency_warmup=2, latency_repeats=10),
        latency_repeats=20,
    ),
    # From both shipped converged models, all of Fashion-MNIST, 3 seeds (hours on a CPU; minutes on a GPU).
    "full": DemoProfile(
        name="full", models=("timm/mobilenetv3_small_100", "tv/shufflenet_v2_x1_0"),
        starts=("fmnist/mobilenetv3_small_100", "fmnist/shufflenet_v2_x1_0"), seeds=3, baseline_epochs=0,
        arm_epochs=3, image_size=64, batch_size=128, warmup_epochs=0.0,
        analysis=dict(num_batches=8, resolution_1d=41, resolution_2d=21, eps=(0.0, 0.01, 0.02, 0.03), pgd_steps=10,
                      attack_batches=20),
        latency_repeats=50,
    ),
    # The former full demo: baselines trained here from scratch (6 epochs) at 32 px.
    "full-scratch": DemoProfile(
        name="full-scratch", models=("timm/mobilenetv3_small_100", "tv/shufflenet_v2_x1_0"), seeds=3,
        baseline_epochs=6, arm_epochs=3, batch_size=128, warmup_epochs=1.0,
        analysis=dict(num_batches=8, resolution_1d=41, resolution_2d=21, eps=(0.0, 0.01, 0.02, 0.03), pgd_steps=10,
                      attack_batches=20),
        latency_repeats=50,
    ),
}


def profile(name: str, *, seeds: int | None = None, models: Sequence[str] | None = None,
            starts: Sequence[str] | None = None, refocus_impl: str | None = None,
            refocus_precond: str | None = None) -> DemoProfile:
    """A named profile with optional overrides of the seed count, the models, the pretrained starts and how the
    authors' RefConv arm refocuses (``refocus_impl``, ``refocus_precond``: docs/method.md).

    With a pretrained profile, ``models`` picks the shipped entries of those architectures (``starts`` names
    entries directly); a model the registry has no entry for is refused, naming the ``*-scratch`` profiles.
    """
    if name not in PROFILES:
        raise ConfigError(f"unknown demo profile {name!r}; choose one of {sorted(PROFILES)}.")
    p = PROFILES[name]
    changes: dict[str, Any] = {}
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}.")
        changes["seeds"] = seeds
    if starts:
        from ..models import pretrained

        entries = [pretrained.entry(s) for s in starts]  # unknown names list the registry
        changes["starts"] = tuple(e.name for e in entries)
        changes["baseline_epochs"] = 0
        changes["models"] = tuple(e.model for e in entries)
        sizes = {e.image_size for e in entries}
        if len(sizes) > 1:
            raise ConfigError(f"the starts {', '.join(starts)} have different input sizes {sorted(sizes)}: run them "
                              "in separate demos.")
        changes["image_size"] = sizes.pop()
    elif models and p.starts:
        changes.update(starts=tuple(_start_for(m, p) for m in models), models=tuple(models))
    elif models:
        changes["models"] = tuple(models)
    refocus = {k: v for k, v in (("refocus_impl", refocus_impl), ("refocus_precond", refocus_precond)) if v}
    if refocus:
        make_config({"method": "refconv", "weights": "start", **refocus})  # one-line error for a bad combination
        changes["refconv_overrides"] = refocus
    return dataclasses.replace(p, **changes) if changes else p


def _start_for(model: str, p: DemoProfile) -> str:
    """The shipped converged entry of ``model`` at the profile's input size (snapshots are not starts)."""
    from ..models import pretrained

    for name in pretrained.names():
        e = pretrained.entry(name)
        if e.snapshot_epoch is None and pretrained.same_model(model, e.model) and e.image_size == p.image_size \
                and e.data == p.data:
            return name
    raise ConfigError(
        f"the registry has no pretrained {p.data} model {model!r} at {p.image_size} px for profile {p.name!r} to start "
        f"from (it has: {', '.join(pretrained.names())}). Pick one of those with --models, or train a baseline here "
        f"from scratch with --profile {p.name}-scratch."
    )


@dataclass
class DemoResult:
    out_dir: Path
    results: dict[str, Any]
    report_md: Path
    report_html: Path


ARMS = ("refconv", "continue", "finetune")


def _slug(model: str) -> str:
    return model.replace("/", "-").replace(":", "-")


def _base_config(p: DemoProfile, model: str, data_dir: str | None, workers: int, progress: str,
                 download: bool = False) -> RunConfig:
    return make_config(
        dict(
            model=model, data=p.data, data_dir=data_dir, download=download, image_size=p.image_size, subset_train=p.subset_train,
            subset_test=p.subset_test, batch_size=p.batch_size, base_lr=p.base_lr, finetune_lr_mult=p.finetune_lr_mult,
            bn_recalibrate_batches=p.bn_recalibrate_batches, workers=workers, progress=progress,
        )
    )


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
                         download=download, log=log, launcher=launcher)


def _run_demo(p: DemoProfile, out: Path, *, data_dir: str | None, overwrite: bool, workers: int, progress: str,
              download: bool, log: Callable[[str], None] | None, launcher: Any = None) -> DemoResult | None:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    # Fail on bad input before any work: data present, model names known.
    from ..data import build_dataset
    from ..models import create_model

    build_dataset(p.data, "test", data_dir=data_dir, image_size=p.image_size, subset=p.subset_test, download=download)
    _check_starts(p)
    for m in p.models:
        create_model(m, num_classes=10, in_chans=1)
    _check_out_dir(out, p, overwrite)

    seeds = list(range(p.seeds))
    arms = demo_arms(p)
    if launcher is not None:  # every training run as a job first; the stages below read them back
        from .launch import run_with_launcher

        if not run_with_launcher(launcher, _launch_cells(p, out, arms, seeds, data_dir, workers, progress, download),
                                 out, log, resubmit=_commands(p, out)[0]):
            return None
    n_stages = 5
    prog = StudyProgress("demo", len(p.models) * (len(arms) * len(seeds) + (0 if p.starts else 1)), log)
    results: dict[str, Any] = {"profile": p.to_dict(), "models": {}, "commands": _commands(p, out),
                               "environment": environment(), "seeds": seeds}
    for mi, model in enumerate(p.models):
        slug = _slug(model)
        root = out / "runs" / slug
        base = _base_config(p, model, data_dir, workers, progress, download)
        if p.starts:
            prog.stage(1, n_stages, f"starting model {p.starts[mi]} (shipped, converged): evaluated on this demo's "
                       "test split")
            start = _pretrained_start(p.starts[mi], base, out, data_dir)
        else:
            prog.stage(1, n_stages, f"baseline of {model} ({p.baseline_epochs} epochs from scratch)")
            base_cfg = base.replace(method="baseline", epochs=p.baseline_epochs, warmup_epochs=p.warmup_epochs,
                                    seed=0, out=str(root / "baseline"))
            baseline = run_cell(base_cfg)
            prog.cell(f"{model} baseline", baseline)
            start = {**cell_record(baseline, out), "kind": "trained here", "name": None,
                     "weights": str(baseline.run_dir), "card": None}

        prog.stage(2, n_stages, f"{', '.join(a.name for a in arms)} from the start, {len(seeds)} seed(s), "
                   f"{p.arm_epochs} epochs each")
        cells = [Cell(a, s, cell_config(base, start["weights"], a, s, root)) for s in seeds for a in arms]
        cell_results = run_cells(cells, on_done=lambda c, r, i, n: prog.cell(f"{model} {c.arm.name} seed {c.seed}", r))
        start_top1 = float(start["final"]["top1"])
        table = arm_table(arms, seeds, cell_results, reference={"baseline": [start_top1] * len(seeds)})
        table_top5 = arm_table(arms, seeds, cell_results, metric="top5",
                               reference={"baseline": [float(start["final"]["top5"])] * len(seeds)})

        prog.stage(3, n_stages, f"fold and check equivalence on the whole test split ({model})")
        from .equivalence import check_folding

        equivalence = [check_folding(cell_results[("refconv", s)], start["weights"], p, data_dir) for s in seeds]

        prog.stage(4, n_stages, f"analyses ({model}, every seed)")
        from .analyses import run_analyses, summarize_analyses

        per_seed = [run_analyses(cell_results[("continue", s)], cell_results[("refconv", s)], start["weights"],
                                 out / "analysis" / slug / f"seed{s}", p, data_dir, plot=s == seeds[0],
                                 with_start_redundancy=s == seeds[0])
                    for s in seeds]
        analysis = {"seed0": per_seed[0], "over_seeds": summarize_analyses(per_seed, seeds),
                    "per_seed_dirs": [os.path.relpath(a["out_dir"], out) for a in per_seed]}

        results["models"][model] = {
            "slug": slug,
            "start": start,
            "cells": {f"{a.name}/seed{s}": cell_record(cell_results[(a.name, s)], out) for a in arms for s in seeds},
            "table": table,
            "table_top5": table_top5,
            "equivalence": equivalence,
            "analysis": analysis,
        }

    prog.stage(5, n_stages, "report")
    results["wall_time_s"] = time.perf_counter() - t0
    from .demo_report import write_demo_report

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    md, html = write_demo_report(results, out)
    log(f"[demo] done in {results['wall_time_s'] / 60:.1f} min: {md} and {html}")
    return DemoResult(out_dir=out, results=results, report_md=md, report_html=html)


def demo_arms(p: DemoProfile) -> list[Arm]:
    """The authors' RefConv, the best setting of the studies (when the profile names one), continue, finetune."""
    common = {"warmup_epochs": p.arm_warmup_epochs}
    arms = [Arm("refconv", "refconv", p.arm_epochs, {**common, **p.refconv_overrides})]
    if p.best_setting:
        name, overrides = p.best_setting
        arms.append(Arm(name, "refconv", p.arm_epochs, {**common, **overrides}))
    return arms + [Arm(c, c, p.arm_epochs, common) for c in ("continue", "finetune")]


def _launch_cells(p: DemoProfile, out: Path, arms: list[Arm], seeds: list[int], data_dir: str | None, workers: int,
                  progress: str, download: bool) -> list[Any]:
    """The demo's training runs (per model: its baseline when trained here, then every arm and seed), configured
    exactly as the stages configure them."""
    from .launch import LaunchCell

    cells = []
    for mi, model in enumerate(p.models):
        root = out / "runs" / _slug(model)
        base = _base_config(p, model, data_dir, workers, progress, download)
        if p.starts:
            weights = p.starts[mi]
        else:
            cells.append(LaunchCell(f"{_slug(model)}/baseline", base.replace(
                method="baseline", epochs=p.baseline_epochs, warmup_epochs=p.warmup_epochs, seed=0,
                out=str(root / "baseline"))))
            weights = str(root / "baseline")
        cells += [LaunchCell(f"{_slug(model)}/{a.name}/seed{s}", cell_config(base, weights, a, s, root))
                  for s in seeds for a in arms]
    return cells


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
