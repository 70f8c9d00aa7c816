"""The downstream transfer study: does RefConv of a pretrained backbone beat more training, on detection and
segmentation? (The paper's third claim, measured with the demo's protocol.)

Per task (detection, segmentation) of a :class:`StudyConfig`:

1. **baseline**: the detector / segmenter trained with the registry backbone (``backbone``, e.g.
   ``fmnist/mobilenetv3_small_100``) on the synthetic data until it is useful (its curve is recorded);
2. from that baseline's last checkpoint, with the same budget and recipe, for every seed: ``refconv`` (the
   trunk converted, bases frozen), ``continue`` (plain training) and ``finetune`` (plain, ``lr x 0.1``);
3. every RefConv run is folded into the stock model and checked (raw outputs, detections / masks, and the
   folded model's metrics);
4. per metric (mAP@0.5, mAP@[.5:.95]; mIoU, pixel accuracy): mean ± sd over seeds and the paired difference of
   ``refconv`` to each control and to the baseline, with 95 % intervals (:mod:`refconv.stats`).

Each run is an engine run (:func:`refconv.downstream.run_downstream`) in its own directory under ``work_dir``,
reused when finished and resumed when interrupted as the sweep's cells are (the study runner every study shares,
:func:`refconv.protocol.runner.execute`), so the study can be stopped and started again; the study reads
each run's :class:`~refconv.engine.RunResult` (``final``, ``history`` with the engine's ``test_*`` columns,
``fold``, ``extra["backbone"]``).
What must last goes to ``out``: ``results.json``, ``report.md``, ``curves.png`` (see
:mod:`refconv.downstream.study_report`).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import RunConfig
from ..engine.runner import RunResult
from ..errors import ConfigError
from ..protocol.cells import Arm, Cell
from ..protocol.spec import known_keys, packaged_specs, read_spec
from ..runlayout import checkpoint_path
from ..stats import paired_difference, summarize
from .run import LineReporter, downstream_config

__all__ = ["ARMS", "METRICS", "StudyConfig", "TaskPlan", "load_study_config", "packaged_studies", "run_study"]

ARMS = ("refconv", "continue", "finetune")
METRICS = {"detection": ("map_50", "map"), "segmentation": ("miou", "pixel_acc")}
_FIXED = {"task", "arch", "data", "method", "weights", "weights_backbone", "epochs", "seed", "out"}


@dataclass
class TaskPlan:
    """One task of the study.

    Attributes:
        task / arch / data: as in :func:`~refconv.downstream.run.downstream_config` (a ``*_timm`` arch).
        baseline_epochs: epochs of the baseline from the pretrained backbone.
        budget_epochs: epochs of every arm from the baseline (the equal budget).
        run: other :func:`downstream_config` settings shared by every run of the task (data sizes, recipe...).
    """

    task: str
    arch: str
    data: str
    baseline_epochs: int
    budget_epochs: int
    run: dict[str, Any] = field(default_factory=dict)

    def config(self, *, method: str, seed: int, out: Path, backbone: str | None = None,
               weights: str | None = None) -> RunConfig:
        epochs = self.baseline_epochs if method == "baseline" else self.budget_epochs
        return downstream_config(self.task, **{
            **self.run, "arch": self.arch, "data": self.data, "method": method, "seed": seed,
            "epochs": epochs, "weights_backbone": backbone, "weights": weights, "out": str(out),
        }).validate()


@dataclass
class StudyConfig:
    """A downstream study: which backbone, which tasks, which arms, which seeds, where."""

    name: str
    backbone: str
    seeds: list[int]
    tasks: list[TaskPlan]
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    work_dir: str = "runs/downstream-study"
    out: str = "docs/results/downstream-transfer"
    # torch CPU threads while the study runs (None: torch's default). On a shared 2-core machine one thread
    # measured 4-5x faster per step than two: two threads oversubscribe cores other processes are using.
    threads: int | None = 1

    def validate(self) -> StudyConfig:
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}.")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or "refconv" not in self.arms:
            raise ConfigError(f"arms must include refconv and be among {ARMS}, got {self.arms}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be an int >= 1 or null, got {self.threads!r}.")
        if not self.tasks:
            raise ConfigError("a study needs at least one task (detection or segmentation).")
        for plan in self.tasks:
            if plan.baseline_epochs < 1 or plan.budget_epochs < 1:
                raise ConfigError(f"{plan.task}: baseline_epochs and budget_epochs must be >= 1.")
            fixed = sorted(_FIXED & set(plan.run))
            if fixed:
                raise ConfigError(f"{plan.task}: run must not set {fixed}: the study sets them for every run.")
            plan.config(method="baseline", seed=self.seeds[0], out=Path(self.work_dir), backbone=self.backbone)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Build and validate, refusing unknown keys at either level (a typo must not be ignored)."""
        try:
            tasks = [TaskPlan(**known_keys(TaskPlan, t, "task")) for t in (data.get("tasks") or [])]
            return cls(**{**known_keys(cls, data, "study"), "tasks": tasks}).validate()
        except TypeError as exc:  # a required key left out
            raise ConfigError(f"study config: {exc}.") from None


def packaged_studies() -> dict[str, Path]:
    """The study configs shipped in ``refconv/configs/downstream`` by name."""
    return packaged_specs("downstream")


def load_study_config(name_or_path: str | Path, **overrides: Any) -> StudyConfig:
    """Read a study YAML (a path or a packaged name, e.g. ``transfer``); ``overrides`` replace top-level keys."""
    data, _, _ = read_spec(name_or_path, "downstream")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------ running
def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """Every run of the study, once, for the study runner or a launcher: per task its baseline
    (``<task>/baseline``), then each arm and seed (``<task>/<arm>/seed<s>``) from the baseline's last checkpoint."""
    work = Path(cfg.work_dir)
    cells = []
    for plan in cfg.tasks:
        base_dir = work / plan.task / "baseline"
        cells.append(Cell(Arm("baseline", "baseline", plan.baseline_epochs), cfg.seeds[0],
                          plan.config(method="baseline", seed=cfg.seeds[0], out=base_dir, backbone=cfg.backbone),
                          key=f"{plan.task}/baseline"))
        start = str(checkpoint_path(base_dir))
        cells += [Cell(Arm(arm, arm, plan.budget_epochs), seed,
                       plan.config(method=arm, seed=seed, out=work / plan.task / f"{arm}-s{seed}", weights=start),
                       key=f"{plan.task}/{arm}/seed{seed}")
                  for seed in cfg.seeds for arm in cfg.arms]
    return cells


def _metrics(done: RunResult, keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(done.final[k]) for k in keys if done.final.get(k) is not None}


def _fold_summary(done: RunResult, keys: tuple[str, ...]) -> dict[str, Any] | None:
    fold = done.fold
    if not fold:
        return None
    out = {"max_abs_err": fold.get("max_abs_err"), "rel_err": fold.get("rel_err"),
           "folded": {k: (done.folded_metrics or {}).get(k) for k in keys},
           "unfolded": {k: done.final.get(k) for k in keys}}
    for part in ("detections", "masks"):
        if part in fold:
            out[part] = fold[part]
    return out


def _task_tables(plan: TaskPlan, arms: list[str], seeds: list[int], runs: dict[str, list[dict[str, float]]],
                 baseline: dict[str, float]) -> dict[str, Any]:
    """Per metric: each arm's summary over seeds, and refconv's paired differences to the controls and baseline."""
    tables: dict[str, Any] = {}
    for key in METRICS[plan.task]:
        values = {a: [r[key] for r in runs[a]] for a in arms}
        rows = {a: summarize(v).to_dict() for a, v in values.items()}
        vs = {c: paired_difference(values["refconv"], values[c]).to_dict() for c in arms if c != "refconv"}
        vs["baseline"] = paired_difference(values["refconv"], [baseline[key]] * len(seeds)).to_dict()
        controls = [c for c in arms if c != "refconv"]
        best = max(controls, key=lambda c: rows[c]["mean"]) if controls else None
        tables[key] = {"arms": rows, "refconv_vs": vs, "best_control": best}
    return tables


def run_study(config: StudyConfig, *, log: Callable[[str], None] | None = None,
              command: str | None = None, overwrite: bool = False, launcher: Any = None) -> dict[str, Any]:
    """Run (or resume) every run of the study, then write ``results.json``, ``report.md`` and a plot to ``out``.

    ``overwrite`` recomputes every run (also one whose directory holds another config, otherwise refused).
    ``launcher`` (:mod:`refconv.protocol.launch`): a submitit launcher first runs every unfinished run as a job
    (bookkeeping in ``work_dir/launch``); the study then reads them back from their directories.

    Returns:
        The results dict written to ``results.json``.
    """
    import torch

    say = log or print
    cfg = config.validate()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_study(cfg, say, command, overwrite, launcher)
    finally:
        torch.set_num_threads(threads)


def _run_study(cfg: StudyConfig, say: Callable[[str], None], command: str | None,
               overwrite: bool, launcher: Any = None) -> dict[str, Any]:
    import torch

    from ..models import resolve_weights_path
    from ..protocol.runner import execute
    from .study_report import write_report

    resolve_weights_path(cfg.backbone)  # an unknown name or a missing / corrupt file fails now, not after a task
    t0 = time.perf_counter()
    cells = plan_cells(cfg)
    say(f"{len(cells)} runs: per task a baseline from {cfg.backbone}, then {', '.join(cfg.arms)} x seeds "
        f"{cfg.seeds} from it")

    def on_done(cell: Cell, res: RunResult, i: int, n: int) -> None:
        state = f"reusing {res.run_dir} (finished, same config)" if res.cached else f"{res.wall_time_s:.0f} s"
        say(f"[{i}/{n}] {cell.key}: {cell.arm.epochs} epochs, {state}")

    runs = execute(cells, Path(cfg.work_dir), launcher=launcher, overwrite=overwrite, on_done=on_done, log=say,
                   resubmit=command or "refconv downstream-study",
                   reporter=LineReporter(lambda line: say("  " + line)))
    if runs is None:  # submitted to a cluster without waiting
        return {"study": cfg.to_dict(), "command": command, "submitted": True}
    results: dict[str, Any] = {"study": cfg.to_dict(), "command": command,
                               "tasks": {plan.task: _task_results(cfg, plan, runs) for plan in cfg.tasks}}
    results["wall_time_s"] = time.perf_counter() - t0
    results["machine"] = {"platform": platform.platform(), "cpus": _cpus(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}
    out = Path(cfg.out)
    write_report(results, out)
    say(f"wrote {out / 'report.md'} and {out / 'results.json'} ({results['wall_time_s'] / 60:.1f} min)")
    return results


def _task_results(cfg: StudyConfig, plan: TaskPlan, runs: dict[str, RunResult]) -> dict[str, Any]:
    """One task's part of ``results.json``: the baseline, every arm's runs and the tables over seeds."""
    keys = METRICS[plan.task]
    base = runs[f"{plan.task}/baseline"]
    arm_runs = {a: [runs[f"{plan.task}/{a}/seed{seed}"] for seed in cfg.seeds] for a in cfg.arms}
    details = {a: [{"seed": seed, "metrics": _metrics(done, keys), "fold": _fold_summary(done, keys),
                    "history": done.history, "wall_time_s": done.wall_time_s,
                    "trainable_params": done.trainable_params, "deploy_params": done.deploy_params}
                   for seed, done in zip(cfg.seeds, arm_runs[a])] for a in cfg.arms}
    baseline = _metrics(base, keys)
    return {
        "arch": plan.arch, "data": plan.data, "backbone": base.extra.get("backbone"),
        "baseline": {"metrics": baseline, "history": base.history, "epochs": plan.baseline_epochs,
                     "wall_time_s": base.wall_time_s, "deploy_params": base.deploy_params},
        "budget_epochs": plan.budget_epochs, "runs": details,
        "tables": _task_tables(plan, cfg.arms, cfg.seeds, {a: [d["metrics"] for d in details[a]] for a in cfg.arms},
                               baseline),
        "wall_time_s": sum(r.wall_time_s for r in [base, *(r for rs in arm_runs.values() for r in rs)]),
    }


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
