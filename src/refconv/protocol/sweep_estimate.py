"""The sweep's time estimate: a few timed training steps per distinct model, scaled to what is left to train.

A sweep is refused when its estimate exceeds ``time_budget_minutes`` (unless ``--yes``), so the estimate is
measured on the machine at hand rather than guessed, and building every distinct conversion on the real model
checks each setting before anything trains.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine import RunConfig
from ..engine.config import config_hash
from ..errors import ConfigError, ConversionError
from .cells import Cell
from .evaldata import run_split, study_device
from .sweep_spec import SweepSpec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SweepTooLarge", "estimate_sweep", "estimate_text"]

# The estimate's step timing: warm-up steps, then between MIN and MAX timed steps within a time budget.
_WARMUP_STEPS = 2
_TIMED_STEPS_MIN = 5
_TIMED_STEPS_MAX = 15
_TIMING_BUDGET_S = 3.0
_RUN_OVERHEAD_S = 1.0  # per run: checkpoint and weight files, done.json (added to the measured model build time)


class SweepTooLarge(ConfigError):
    """The estimated wall time exceeds ``time_budget_minutes`` and ``yes`` was not given."""

    def __init__(self, message: str, estimate: dict[str, Any]) -> None:
        super().__init__(message)
        self.estimate = estimate


def _time_settings(spec: SweepSpec, base: RunConfig, plain: Any, plain_cpu: Any, time_step: Callable[[Any], float],
                   time_eval: Callable[[Any], float]) -> tuple[dict[str, float], float, list[str]]:
    """Training-step seconds of the plain model and of each distinct conversion, one evaluation forward, and
    warnings about settings that resolve to the same run. Conversion errors become a ConfigError naming the
    setting."""
    from ..engine.modeling import apply_conversion, convert_kwargs, select_layers

    step_s: dict[str, float] = {"plain": time_step(plain)}
    eval_s = time_eval(plain)
    by_conv: dict[str, float] = {}
    resolved: dict[str, str] = {}
    warnings: list[str] = []
    for s in spec.settings:
        cfg = base.replace(method="refconv", weights="baseline", **s.overrides)
        kw = convert_kwargs(cfg)
        try:
            names = select_layers(plain_cpu, kw)
        except ConversionError as exc:
            raise ConfigError(f"setting {s.name!r} cannot be applied to {base.model}: {exc}") from None
        # Two settings that pick the same layers with the same options are the same run (e.g. layers: no-stem and
        # layers: depthwise on a model whose stem is its only dense conv): say so rather than spend the time twice.
        same = config_hash(cfg.replace(include=names, exclude=[], layers="all"))
        if same in resolved:
            warnings.append(f"settings {resolved[same]!r} and {s.name!r} convert the same layers of {base.model} with "
                            "the same options: they are the same run, trained twice.")
        resolved.setdefault(same, s.name)
        ckey = json.dumps({**{k: v for k, v in kw.items() if k not in ("init", "basis")}, "names": names},
                          sort_keys=True)
        if ckey not in by_conv:
            model = copy.deepcopy(plain_cpu)
            try:
                apply_conversion(model, kw)
            except ConversionError as exc:  # names the layer and the rule; add the setting
                raise ConfigError(f"setting {s.name!r} cannot be applied to {base.model}: {exc}") from None
            by_conv[ckey] = time_step(model)
            del model
        step_s[s.name] = by_conv[ckey]
    return step_s, eval_s, warnings


class _Bench:
    """What the timing runs on: the study's splits (as the runs build them) and one training batch on its device,
    made by the engine's input path; ``spreads`` collects each timed model's (first quartile, third quartile) /
    median step time."""

    def __init__(self, base: RunConfig, device: Any) -> None:
        import torch

        from ..engine.loop import amp_dtype

        self.base, self.device = base, device
        self.train_ds, self.info = run_split(base, "train")
        self.test_ds, _ = run_split(base, "test")
        self.steps = len(self.train_ds) // base.batch_size  # the engine drops the last partial batch
        if self.steps < 1:
            raise ConfigError(f"batch_size={base.batch_size} is larger than the {len(self.train_ds)} training images: "
                              "no full batch. Lower batch_size in base or use more data (subset_train).")
        self.eval_batches = math.ceil(len(self.test_ds) / base.batch_size)
        x, y, self.data_s = self._batch()
        x, y = x.to(device), y.to(device)
        if base.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.y = x, y
        self.spreads: list[tuple[float, float]] = []
        self.amp = amp_dtype(base.amp, device)

    def _batch(self) -> tuple[Any, Any, float]:
        """One batch by the engine's own input path, and the median seconds it takes (the first call pays one-off
        costs and is left out)."""
        import torch

        from ..data import build_loader
        from ..data.resident import resident_images

        base, bs = self.base, self.base.batch_size
        resident = (resident_images(self.train_ds, device=self.device, channels_last=base.channels_last)
                    if base.input_pipeline != "loader" else None)
        index = torch.arange(bs)
        data_times = []
        for _ in range(3):
            t = time.perf_counter()
            if resident is not None:
                x, y = resident.batch(index, torch.Generator().manual_seed(0))
            else:
                x, y = next(iter(build_loader(self.train_ds, batch_size=bs, train=True)))
            data_times.append(time.perf_counter() - t)
        return x, y, statistics.median(data_times[1:])

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def time_step(self, model: nn.Module) -> float:
        """The median seconds of a training step (forward, backward, the engine's optimizer and memory format)."""
        import torch
        from torch import nn

        from ..engine.loop import autocast
        from ..engine.optim import build_optimizer

        base, device, x, y = self.base, self.device, self.x, self.y
        model.to(device).train()
        if base.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, base.replace(lr=1e-4))  # the engine's optimizer (fused kernels...)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, self.amp):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            self.sync()

        for _ in range(_WARMUP_STEPS):  # allocations, oneDNN primitives, the allocator's thresholds settle
            step()
        times: list[float] = []
        t_end = time.perf_counter() + _TIMING_BUDGET_S
        while len(times) < _TIMED_STEPS_MIN or (len(times) < _TIMED_STEPS_MAX and time.perf_counter() < t_end):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        # The median, not the minimum or one step: load spikes on a shared machine skew single steps by 10x.
        q1, med, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        self.spreads.append((q1 / med, q3 / med))
        return med

    def time_eval(self, model: nn.Module) -> float:
        """The seconds of one evaluation forward (after one untimed)."""
        import torch

        from ..engine.loop import autocast

        model.to(self.device).eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            model(self.x)
            self.sync()
            t0 = time.perf_counter()
            model(self.x)
            self.sync()
        return time.perf_counter() - t0


@dataclass
class _Timings:
    """The measured models: threads while timing, the plain model's build seconds, and step / eval seconds."""

    threads: int
    cell_threads: int
    build_s: float
    baseline_step: float
    step_s: dict[str, float]
    eval_s: float
    warnings: list[str]


def _time_models(spec: SweepSpec, bench: _Bench, *, parallel: int, baseline_todo: bool) -> _Timings:
    """Build the plain model (timed: every run builds one) and time it and each distinct conversion. Cells in
    parallel processes on CPU run with one thread each (refconv.protocol.run_cells): they are timed so, and the
    baseline, which runs alone, with all threads. The global RNG is left as it was."""
    import torch

    from ..engine.modeling import create_stock_model

    base, info = bench.base, bench.info
    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    cell_threads = 1 if parallel > 1 and bench.device.type == "cpu" else threads
    t = time.perf_counter()
    plain = create_stock_model(base.model, num_classes=base.num_classes or info.num_classes, in_chans=info.in_chans)
    build_s = time.perf_counter() - t
    plain_cpu = copy.deepcopy(plain)
    baseline_step_s = bench.time_step(copy.deepcopy(plain)) if baseline_todo and cell_threads != threads else None
    torch.set_num_threads(cell_threads)
    try:
        step_s, eval_s, warnings = _time_settings(spec, base, plain, plain_cpu, bench.time_step, bench.time_eval)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)
    baseline_step = baseline_step_s if baseline_step_s is not None else step_s["plain"]
    return _Timings(threads, cell_threads, build_s, baseline_step, step_s, eval_s, warnings)


def _wall_time(spec: SweepSpec, bench: _Bench, tm: _Timings, todo: Sequence[Cell], *, parallel: int,
               baseline_todo: bool) -> tuple[float, float, float]:
    """``(baseline_s, cells_s, wall_s)`` from the timings (the formula is :func:`estimate_sweep`'s docstring)."""
    workers = max(0, bench.base.workers)

    def per_step(compute: float) -> float:
        return max(compute, bench.data_s / workers) if workers else compute + bench.data_s

    def run_s(epochs: int, compute: float, refconv: bool) -> float:
        evals = bench.eval_batches * tm.eval_s
        return (epochs * (bench.steps * per_step(compute) + evals) + (evals if refconv else 0.0) + tm.build_s
                + _RUN_OVERHEAD_S)

    baseline_s = run_s(int(spec.baseline.get("epochs", 0)), tm.baseline_step, False) if baseline_todo else 0.0
    if spec.per_seed_baselines:  # one per seed, as many at once as there are processes
        baseline_s *= -(-len(spec.seeds) // max(1, min(parallel, os.cpu_count() or 1)))
    cells_s = sum(run_s(c.arm.epochs, tm.step_s[c.arm.name.split("/", 1)[1]] if c.arm.method == "refconv"
                        else tm.step_s["plain"], c.arm.method == "refconv") for c in todo)
    # P processes share the CPU cores (at most one process per core helps); on CUDA each has the device.
    wall = baseline_s + cells_s / (min(parallel, os.cpu_count() or 1) if bench.device.type == "cpu" else parallel)
    return baseline_s, cells_s, wall


def estimate_sweep(spec: SweepSpec, base: RunConfig, *, baseline_todo: bool, todo: Sequence[Cell],
                   parallel: int, cells_total: int | None = None) -> dict[str, Any]:
    """Estimate the wall time of what is left to train, from a few timed steps per distinct model.

    Nothing expensive is measured: the train and test splits are built (as the runs will build them), one
    batch is made by the engine's input path, and training steps on it (forward, backward, the engine's
    optimizer, its memory format) are timed for the plain model and for each distinct RefConv conversion of
    the sweep: two warm-up steps, then 5-15 timed steps within about 3 s, whose **median** is used and whose
    quartiles give the estimate's range (a single step on a loaded machine was once 10x too slow). Plus one
    evaluation forward. Building each conversion also checks every setting's grouping and layer
    selection on the real model, so a bad setting fails here, before anything trains.

    Per run: ``epochs x (steps_per_epoch x (step + data) + eval_batches x eval)`` plus the measured model
    build time and a fixed overhead; RefConv runs add one more evaluation (the folded model). With
    ``workers > 0`` data loading overlaps compute: ``max(step, data / workers)``. With ``parallel`` P > 1 on
    CPU the cells are timed with one thread, as each process will run them, and their sum is divided by
    ``min(P, cores)``; on CUDA it is divided by P. The figure is a guide, not a promise: other load on the
    machine (which the timing sees only while it lasts), caches and thermal limits change it.
    """
    t_all = time.perf_counter()
    bench = _Bench(base, study_device(base.device))
    tm = _time_models(spec, bench, parallel=parallel, baseline_todo=baseline_todo)
    baseline_s, cells_s, wall = _wall_time(spec, bench, tm, todo, parallel=parallel, baseline_todo=baseline_todo)
    # The interquartile range of the steps, relative to their median, bounds the estimate (steps dominate it).
    lo = min((a for a, _ in bench.spreads), default=1.0)
    hi = max((b for _, b in bench.spreads), default=1.0)
    return {
        "method": f"median of {_TIMED_STEPS_MIN}-{_TIMED_STEPS_MAX} timed steps after {_WARMUP_STEPS} warm-up steps",
        "wall_s_range": (wall * lo, wall * hi),
        "device": str(bench.device),
        "threads": tm.threads,
        "cell_threads": tm.cell_threads,
        "baseline_step_s": tm.baseline_step,
        "batch_size": base.batch_size,
        "train_images": len(bench.train_ds),
        "test_images": len(bench.test_ds),
        "steps_per_epoch": bench.steps,
        "eval_batches": bench.eval_batches,
        "data_s_per_batch": bench.data_s,
        "step_s": tm.step_s,
        "eval_s_per_batch": tm.eval_s,
        "run_overhead_s": tm.build_s + _RUN_OVERHEAD_S,
        "baseline_todo": baseline_todo,
        "baseline_s": baseline_s,
        "cells_total": cells_total if cells_total is not None else len(todo),
        "cells_todo": len(todo),
        "cells_s": cells_s,
        "parallel": parallel,
        "wall_s": wall,
        "time_budget_s": spec.time_budget_minutes * 60,
        "measured_in_s": time.perf_counter() - t_all,
        "warnings": tm.warnings,
    }


def estimate_text(est: dict[str, Any]) -> str:
    """The estimate in one line: minutes, runs left, processes, the quartile range and the step timing."""
    todo = est["cells_todo"] + (1 if est["baseline_todo"] else 0)
    lo, hi = est.get("wall_s_range", (est["wall_s"], est["wall_s"]))
    return (f"about {est['wall_s'] / 60:.1f} min for {todo} run(s) left to train "
            f"({'baseline + ' if est['baseline_todo'] else ''}{est['cells_todo']} of {est['cells_total']} cells), "
            f"{est['parallel']} process(es) on {est['device']}; {lo / 60:.1f}-{hi / 60:.1f} min at the quartiles of "
            f"the {est['method']} ({est['steps_per_epoch']} steps/epoch, plain step "
            f"{est['step_s']['plain'] * 1000:.0f} ms)")

