"""``refconv demo``: the paper's protocol end to end on the embedded default data, with a report.

Stages, each cached in the output directory (a rerun skips what is done, an interrupted one resumes):

1. train the baseline (per model);
2. from that checkpoint, with the same budget and several seeds: ``refconv``, ``continue``, ``finetune``;
3. fold each RefConv run; check folded vs unfolded on the whole test set (max logit error, identical
   predictions), parameters and FLOPs against the baseline, and latency folded vs baseline side by side;
4. the analyses (cost, channel redundancy, kernel skeleton, loss landscape, adversarial robustness);
5. ``results.json`` (every number), ``report.md`` and a self-contained ``report.html`` built from it.

No number in the report comes from anywhere but this run's directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine import RunConfig, RunResult
from ..engine.config import make_config
from ..engine.rundir import RunDirLock, check_out_path, is_empty
from ..engine.rundir import clear as clear_dir
from ..errors import CheckpointError, ConfigError
from .cells import Arm, Cell, arm_table, cell_config, run_cell, run_cells

__all__ = ["DemoProfile", "PROFILES", "DemoResult", "run_demo", "profile"]

DEMO_FILE = "demo.json"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class DemoProfile:
    """Everything that defines a demo; stored in ``demo.json`` and compared on rerun."""

    name: str
    models: tuple[str, ...]
    seeds: int
    baseline_epochs: int
    arm_epochs: int
    data: str = "fashion-mnist"
    image_size: int = 32
    subset_train: int | None = None
    subset_test: int | None = None
    batch_size: int = 128
    base_lr: float = 0.1
    warmup_epochs: float = 1.0
    arm_warmup_epochs: float = 0.0
    finetune_lr_mult: float = 0.1
    # analyses (refconv.analysis.AnalysisConfig keys)
    analysis: dict[str, Any] = field(default_factory=dict)
    analysis_batch_size: int = 128
    latency_repeats: int = 20

    def to_dict(self) -> dict[str, Any]:
        # JSON round trip: the form stored in demo.json (tuples become lists), so comparisons are like for like.
        return json.loads(json.dumps(dataclasses.asdict(self)))


PROFILES: dict[str, DemoProfile] = {
    # For tests: a few hundred images, one epoch each; every stage runs, nothing is meaningful.
    "tiny": DemoProfile(
        name="tiny", models=("timm/mobilenetv3_small_050",), seeds=2, baseline_epochs=1, arm_epochs=1,
        subset_train=256, subset_test=128, batch_size=64, warmup_epochs=0.0,
        analysis=dict(num_batches=1, resolution_1d=5, resolution_2d=3, eps=(0.0, 0.02), pgd_steps=2,
                      attack_batches=1, latency_warmup=1, latency_repeats=3, max_pairs=500),
        analysis_batch_size=64, latency_repeats=3,
    ),
    # <= 10 minutes on a 2-core CPU: a class-stratified subset of Fashion-MNIST, 2 seeds.
    "quick": DemoProfile(
        name="quick", models=("timm/mobilenetv3_small_100",), seeds=2, baseline_epochs=5, arm_epochs=2,
        subset_train=10000, subset_test=2000, batch_size=128, warmup_epochs=1.0,
        analysis=dict(num_batches=2, resolution_1d=21, resolution_2d=9, eps=(0.0, 0.01, 0.03), pgd_steps=5,
                      attack_batches=4, latency_warmup=2, latency_repeats=10),
        latency_repeats=20,
    ),
    # The honest small-scale reproduction: all of Fashion-MNIST, 3 seeds, two architectures (an hour or more).
    "full": DemoProfile(
        name="full", models=("timm/mobilenetv3_small_100", "tv/shufflenet_v2_x1_0"), seeds=3, baseline_epochs=6,
        arm_epochs=3, batch_size=128, warmup_epochs=1.0,
        analysis=dict(num_batches=8, resolution_1d=41, resolution_2d=21, eps=(0.0, 0.01, 0.02, 0.03), pgd_steps=10,
                      attack_batches=20),
        latency_repeats=50,
    ),
}


def profile(name: str, *, seeds: int | None = None, models: Sequence[str] | None = None) -> DemoProfile:
    """A named profile with optional overrides of the seed count and models."""
    if name not in PROFILES:
        raise ConfigError(f"unknown demo profile {name!r}; choose one of {sorted(PROFILES)}.")
    p = PROFILES[name]
    changes: dict[str, Any] = {}
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}.")
        changes["seeds"] = seeds
    if models:
        changes["models"] = tuple(models)
    return dataclasses.replace(p, **changes) if changes else p


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
            workers=workers, progress=progress,
        )
    )


class _Progress:
    """Stage and ETA lines on stderr: the demo is long and must show where it is."""

    def __init__(self, total_cells: int, log: Callable[[str], None]) -> None:
        self.total = total_cells
        self.done = 0
        self.trained_time = 0.0
        self.trained = 0
        self.t0 = time.perf_counter()
        self.log = log

    def stage(self, i: int, n: int, text: str) -> None:
        self.log(f"[demo] stage {i}/{n}: {text}")

    def cell(self, label: str, res: RunResult) -> None:
        self.done += 1
        if not res.cached:
            self.trained += 1
            self.trained_time += res.wall_time_s
        left = self.total - self.done
        eta = ""
        if self.trained and left:
            eta = f", ETA for training ~{self.trained_time / self.trained * left / 60:.1f} min"
        state = "cached" if res.cached else f"{res.wall_time_s:.0f}s"
        self.log(f"[demo]   run {self.done}/{self.total} {label}: top1 {res.final.get('top1', float('nan')):.2f} "
                 f"({state}){eta}")


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
) -> DemoResult:
    """Run the whole protocol for profile ``p`` into ``out``; see the module docstring."""
    out = Path(out)
    check_out_path(out)
    lock = RunDirLock(out).acquire()  # one demo per directory; each of its runs also locks its own
    try:
        return _run_demo(p, out, data_dir=data_dir, overwrite=overwrite, workers=workers, progress=progress,
                         download=download, log=log)
    finally:
        lock.release(remove_if_empty=True)


def _run_demo(p: DemoProfile, out: Path, *, data_dir: str | None, overwrite: bool, workers: int, progress: str,
              download: bool, log: Callable[[str], None] | None) -> DemoResult:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    # Fail on bad input before any work: data present, model names known.
    from ..data import build_dataset
    from ..models import create_model

    build_dataset(p.data, "test", data_dir=data_dir, image_size=p.image_size, subset=p.subset_test, download=download)
    for m in p.models:
        create_model(m, num_classes=10, in_chans=1)
    _check_out_dir(out, p, overwrite)

    seeds = list(range(p.seeds))
    arms = [
        Arm("refconv", "refconv", p.arm_epochs, {"warmup_epochs": p.arm_warmup_epochs}),
        Arm("continue", "continue", p.arm_epochs, {"warmup_epochs": p.arm_warmup_epochs}),
        Arm("finetune", "finetune", p.arm_epochs, {"warmup_epochs": p.arm_warmup_epochs}),
    ]
    n_stages = 5
    prog = _Progress(len(p.models) * (1 + len(arms) * len(seeds)), log)
    results: dict[str, Any] = {"profile": p.to_dict(), "models": {}, "commands": _commands(p, out),
                               "environment": _environment(), "seeds": seeds}
    for mi, model in enumerate(p.models):
        slug = _slug(model)
        root = out / "runs" / slug
        base = _base_config(p, model, data_dir, workers, progress, download)
        prog.stage(1, n_stages, f"baseline of {model} ({p.baseline_epochs} epochs)")
        base_cfg = base.replace(method="baseline", epochs=p.baseline_epochs, warmup_epochs=p.warmup_epochs,
                                seed=0, out=str(root / "baseline"))
        baseline = run_cell(base_cfg)
        prog.cell(f"{model} baseline", baseline)

        prog.stage(2, n_stages, f"{', '.join(a.name for a in arms)} from the baseline, {len(seeds)} seed(s), "
                   f"{p.arm_epochs} epochs each")
        cells = [Cell(a, s, cell_config(base, baseline.run_dir, a, s, root)) for s in seeds for a in arms]
        cell_results = run_cells(cells, on_done=lambda c, r, i, n: prog.cell(f"{model} {c.arm.name} seed {c.seed}", r))
        table = arm_table(arms, seeds, cell_results,
                          reference={"baseline": [float(baseline.final["top1"])] * len(seeds)})
        table_top5 = arm_table(arms, seeds, cell_results, metric="top5")

        prog.stage(3, n_stages, f"fold and check equivalence on the whole test set ({model})")
        from .equivalence import check_folding

        equivalence = [check_folding(cell_results[("refconv", s)], baseline, p, data_dir) for s in seeds]

        prog.stage(4, n_stages, f"analyses ({model})")
        from .analyses import run_analyses

        analysis = run_analyses(cell_results[("continue", 0)], cell_results[("refconv", 0)], baseline,
                                out / "analysis" / slug, p, data_dir)

        results["models"][model] = {
            "slug": slug,
            "baseline": _run_summary(baseline, out),
            "cells": {f"{a.name}/seed{s}": _run_summary(cell_results[(a.name, s)], out) for a in arms for s in seeds},
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


def _run_summary(res: RunResult, out: Path) -> dict[str, Any]:
    return {
        "run_dir": os.path.relpath(res.run_dir, out),
        "method": res.method,
        "final": res.final,
        "best": res.best,
        "history": res.history,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "deploy_params": res.deploy_params,
        "wall_time_s": res.wall_time_s,
        "cached": res.cached,
        "fold_max_abs_err": res.fold_max_abs_err,
        "seed": res.config.get("seed"),
        "epochs": res.config.get("epochs"),
        "lr": res.config.get("lr"),
    }


def _commands(p: DemoProfile, out: Path) -> list[str]:
    return [" ".join(["refconv"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("refconv") else
            f"refconv demo --profile {p.name} --seeds {p.seeds} --models {' '.join(p.models)} --out {out}"]


def _environment() -> dict[str, Any]:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
           "cuda": torch.cuda.is_available()}
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    from .. import __version__

    env["refconv"] = __version__
    return env
