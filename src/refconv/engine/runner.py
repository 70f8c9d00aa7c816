"""``run(config) -> RunResult``: one training run from data to deployable weights.

The run is a function so that Python users, ``refconv train`` / ``detect`` / ``segment`` and the protocol drivers
(demo, sweep) share one code path; what it trains is the config's task (:mod:`refconv.engine.task`: data, model,
loss step, metric, fold check, export), everything else is here. A run directory is the unit of work:

- ``config.yaml``: the resolved config; ``log.txt``: everything printed;
- ``metrics.jsonl``: one JSON object per epoch (loss, top-1, top-5, lr, images/s, epoch time...);
- ``checkpoints/last.pt`` / ``checkpoints/best.pt``: full training state, written atomically (``last.pt`` also mid-epoch with
  ``checkpoint_every_steps`` and on Ctrl-C), enough to resume exactly;
- ``model.safetensors`` (plain methods) or ``folded.safetensors`` (``refconv``): the deployable weights, which
  load ``strict=True`` into the stock model, with a ``.json`` sidecar; ``model.onnx`` when asked;
- ``done.json``: the :class:`RunResult`, written last. Its presence marks a finished run: calling ``run()``
  again with the same config returns it without training; a different config is refused unless
  ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.deterministic
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..convert import conversion_config, refconv_layers, state_dict_format
from ..errors import CheckpointError, ConfigError, CorruptImageError, DataError, RefConvError
from ..runlayout import CHECKPOINT_DIR, CONFIG_FILE, DONE_FILE, METRICS_FILE, checkpoint_path
from . import distributed as dist_utils
from . import rundir
from .checkpoint import (
    atomic_copy,
    atomic_write_bytes,
    is_run_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import RunConfig, config_hash, make_config, warmup_warning
from .export import save_weights
from .hooks import StepEvent, call_step_hooks
from .loop import NonFiniteLossError, TrainMeter, amp_dtype, train_one_epoch
from .modeling import count_params, load_format_checked
from .bn import recalibrate_bn
from .optim import build_optimizer, build_scheduler
from .refocusing import setup_refocusing
from .progress import Reporter
from .sampling import ResumableSampler, ShardSampler
from .task import Task, task_class

__all__ = ["run", "RunResult", "RunInterrupted"]

class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped the run after saving ``checkpoint``; resume with ``run(cfg, resume=True)``."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class RunResult:
    """What a finished run produced. ``final`` is the last epoch's test metrics of the exported model
    (the EMA model when ``ema``), ``best`` the best epoch's; ``history`` one dict per epoch. The metrics are the
    task's (classification: loss, top-1, top-5; detection: COCO mAP...; segmentation: mIoU...)."""

    run_dir: Path
    method: str
    model: str
    data: str
    config: dict[str, Any]
    config_hash: str
    final: dict[str, Any]
    best: dict[str, Any]
    history: list[dict[str, Any]]
    weights_path: Path | None = None  # deployable plain weights (folded for refconv)
    folded_path: Path | None = None  # set for refconv runs
    folded_metrics: dict[str, Any] | None = None
    fold_max_abs_err: float | None = None
    fold: dict[str, Any] | None = None  # the fold check's full report (detection: detections compared too)
    onnx: dict[str, Any] | None = None
    trainable_params: int = 0
    total_params: int = 0
    deploy_params: int = 0
    wall_time_s: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("run_dir", "weights_path", "folded_path"):
            d[key] = None if d[key] is None else str(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, cached: bool = False) -> RunResult:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("run_dir", "weights_path", "folded_path"):
            if d.get(key) is not None:
                d[key] = Path(d[key])
        d["cached"] = cached
        return cls(**d)


# ---------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rank0_decides(info: dist_utils.DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its error) to every rank, so no rank waits forever on a
    rank that failed."""
    if not info.distributed:
        return fn()
    result: tuple[str, Any] = ("ok", None)
    if info.is_main:
        try:
            result = ("ok", fn())
        except RefConvError as exc:
            result = ("error", exc)
        except Exception as exc:  # not every exception pickles: send its text
            result = ("error", RuntimeError(f"rank 0: {type(exc).__name__}: {exc}"))
    result = dist_utils.broadcast_object(result)
    if result[0] == "error":
        raise result[1]
    return result[1]


class _StopFlag:
    """Ctrl-C / SIGTERM handling: the first signal asks the loop to stop at a step boundary and save; a
    second Ctrl-C aborts at once."""

    def __init__(self, reporter: Reporter) -> None:
        self.requested = False
        self.reporter = reporter
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reporter.log("interrupt received: finishing this step and saving a checkpoint (Ctrl-C again aborts).")

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _resumed_meter_state(ckpt: dict[str, Any], info: dist_utils.DistInfo) -> dict[str, Any] | None:
    """This rank's share of the interrupted epoch's training sums.

    Each rank saved its own meter ("meters"); on the same number of processes each takes its own back. On a
    different number (or from a checkpoint that only kept rank 0's "meter"), rank 0 takes the sum of all saved
    meters and the others start at zero: the epoch's totals (a sum over ranks) are the same either way.
    """
    saved = ckpt.get("meters") or []
    meters = [m for m in saved if m is not None]
    if len(saved) == info.world_size and len(meters) == len(saved):
        return saved[info.rank]
    if not info.is_main:
        return None
    if not meters:
        return ckpt.get("meter")
    total = {key: sum(m[key] for m in meters) for key in ("loss_sum", "correct1", "images")}
    return {**total, "steps": meters[0]["steps"], "seconds": meters[0]["seconds"]}


def _stopped_on_corrupt_image(exc: Exception, ep: int, start_step: int, start_gstep: int, meter: TrainMeter,
                              info: dist_utils.DistInfo, save_last: Callable[..., Path], run_dir: Path,
                              steps_per_epoch: int, reporter: Reporter, task: Task) -> DataError:
    """The error for an unreadable image mid-epoch, after saving a checkpoint at the last finished step.

    The steps before the bad batch are kept (single process: the state is consistent between steps); once the
    file is replaced, ``--resume`` continues exactly there. Under DDP the other ranks cannot be told to save
    in step, so the last periodic checkpoint is what is kept.
    """
    step = meter.steps  # the meter counts every step of this epoch, including those before a resume
    saved = None
    if not info.distributed and step > start_step and meter.finite():
        saved = save_last(ep, step, start_gstep + step - start_step, meter)
    last = checkpoint_path(run_dir)
    where = (f"saved {saved} at epoch {ep + 1}, step {step}/{steps_per_epoch}" if saved else
             f"the last checkpoint {last} is kept" if last.is_file() else "no checkpoint had been written yet")
    msg = (f"{exc} Training stopped; {where}. After replacing the file, `{task.resume_command(run_dir)}` continues "
           "from there (after deleting it: the data changed, so start over with --overwrite).")
    reporter.log(msg)
    return CorruptImageError(msg)


# ---------------------------------------------------------------------------------------------- run
def run(config: RunConfig | dict[str, Any], *, resume: bool = False, reporter: Reporter | None = None) -> RunResult:
    """Train one run as ``config`` says, in ``config.run_dir()``, and return what it produced.

    Args:
        config: a :class:`RunConfig` or a dict of its keys.
        resume: continue the unfinished run in ``config.out`` from its ``last.pt`` (model, optimizer,
            scheduler, EMA, RNG states, epoch and position in the epoch). The config must equal the run's
            (keys that do not change results, like ``workers``, may differ).
        reporter: where progress goes (default: stderr, bars on a terminal, plain lines otherwise).

    Returns:
        The :class:`RunResult`; ``cached=True`` when the directory already held this finished run.

    Raises:
        ConfigError / DataError / ModelError: bad config, data or model name (before anything is written).
        CheckpointError: an existing run directory that must not be touched, unreadable/mismatched weights,
            resume of a different config, an unwritable output path.
        StateDictFormatError: a RefConv checkpoint where plain weights are needed, or vice versa.
        NonFiniteLossError: the loss became NaN/inf; ``last.pt`` keeps the last good state.
        RunInterrupted: Ctrl-C/SIGTERM; a checkpoint was saved first.
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else make_config(config)
    cfg.validate()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = dist_utils.init_distributed(cfg.device)
    reporter = reporter or Reporter(enabled=info.is_main, mode=cfg.progress)
    if not info.is_main:
        reporter.enabled = False
    run_dir = cfg.run_dir()
    # Rank 0 owns the directory from its first look until the last file is written (folding, export, done.json).
    lock = rundir.RunDirLock(run_dir)

    def _own_and_prepare() -> dict[str, Any] | None:
        lock.acquire()
        return rundir.prepare(cfg, run_dir, resume)

    failed = True
    try:
        cached = _rank0_decides(info, _own_and_prepare)
        if cached is not None:
            failed = False
            result = RunResult.from_dict(cached, cached=True)
            reporter.log(f"{run_dir}: finished run with this config found; returning its result without training.")
            reporter.summary(f"refconv {cfg.method}: {run_dir} (cached)", summary_rows(result))
            return result

        deterministic = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled(),
                         torch.utils.deterministic.fill_uninitialized_memory)
        try:
            result = _train(cfg, info, run_dir, resume, reporter, t_start)
            failed = False
            return result
        finally:
            reporter.close()
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # leave as found
            torch.utils.deterministic.fill_uninitialized_memory = deterministic[2]
    finally:
        lock.release(remove_if_empty=failed)  # a run that failed validation leaves no empty directory


def _train(cfg: RunConfig, info: dist_utils.DistInfo, run_dir: Path, resume: bool, reporter: Reporter,
           t_start: float) -> RunResult:
    device = info.device
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also NaN-fills every new uninitialised tensor (a debugging aid that changes no
        # result of correct code): 1,200 fills per step of a converted MobileNetV3-Small, ~8 % of its time.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    amp = amp_dtype(cfg.amp, device)
    if cfg.amp != "none" and amp is None:
        reporter.log(f"amp={cfg.amp} ignored: mixed precision is used on CUDA only (this run is on {device.type}).")
    task = task_class(cfg.task)(cfg)

    # ---- data
    warnings = task.build_data(info)
    train_ds, test_ds = task.train_ds, task.test_ds
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                          f"{info.world_size} processes.")
    per_rank_batch = cfg.batch_size // info.world_size
    sampler = ResumableSampler(len(train_ds), batch_size=per_rank_batch, seed=cfg.seed, rank=info.rank,
                               world_size=info.world_size, shuffle=True)
    steps_per_epoch = sampler.steps_per_epoch
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_ds)} training images: no full "
                          "batch. Lower --batch-size or use more data (--subset-train).")
    steps_per_epoch = min(steps_per_epoch, task.max_steps or steps_per_epoch)
    test_sampler = ShardSampler(len(test_ds), rank=info.rank, world_size=info.world_size)
    train_loader, test_loader, pipeline = task.loaders(sampler, test_sampler, per_rank_batch, info)

    # ---- the checkpoint a resume continues (read first: a task may rebuild its model from its record)
    chash = config_hash(cfg)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(checkpoint_path(run_dir), map_location=device)
        if not is_run_checkpoint(ckpt) or ckpt.get("config_hash") != chash:
            raise CheckpointError(f"{checkpoint_path(run_dir)} was not written by this run's config; "
                                  "start over with --overwrite.")

    # ---- model (same init on every rank: seeded before building)
    seed_everything(cfg.seed)
    # On resume the checkpoint holds every weight: the starting weights need not exist any more.
    model = task.build_model(ckpt=ckpt, reporter=reporter)
    refocusing = setup_refocusing(model, cfg, ckpt)  # implicit refocusing folds the model back here
    deploy_params, start_weights = task.deploy_params, task.start_weights
    trainable, total = count_params(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = dist_utils.wrap_model(model, info, sync_bn=cfg.sync_bn)
    if cfg.sync_bn and info.distributed:
        model = dist_utils.unwrap_model(train_model)  # SyncBN conversion replaced the BN modules
    eval_model: nn.Module = model
    if cfg.compile:
        # One compiled module for training and evaluation (Dynamo compiles a train and an eval graph once
        # each); the uncompiled ``model`` shares its parameters and is what gets saved, folded and exported.
        train_model = torch.compile(train_model, dynamic=False)
        eval_model = train_model if not info.distributed else torch.compile(model, dynamic=False)

    optimizer = build_optimizer(model, cfg, refocusing)
    if refocusing is not None:
        refocusing.attach(optimizer)  # the preconditioned update: before every step, after unscale/clipping
        if cfg.grad_clip and cfg.refocus_impl == "implicit":
            reporter.log("warning: --grad-clip with --refocus-impl implicit clips the norm of the kernels' gradients, "
                         "not RT's: the run is no longer exactly the explicit one. Drop --grad-clip for exactness.")
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)

    def step_fn(m: nn.Module, batch: Any) -> Any:
        return task.step(m, batch, device=device, amp=amp, channels_last=cfg.channels_last)

    calibration = (task.loaders(ResumableSampler(len(train_ds), batch_size=per_rank_batch, seed=cfg.seed + 104729,
                                                 rank=info.rank, world_size=info.world_size, shuffle=True),
                                test_sampler, per_rank_batch, info)[0]
                   if cfg.bn_recalibrate_batches else None)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        if calibration is not None:
            recalibrate_bn(m, calibration, cfg.bn_recalibrate_batches,
                           lambda mm, b: task.step(mm, b, device=device, amp=amp, channels_last=cfg.channels_last))
        return task.evaluate(m, test_loader, device=device, amp=amp, channels_last=cfg.channels_last)

    # ---- state
    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    meter_state: dict[str, Any] | None = None
    if ckpt is not None:
        load_format_checked(model, ckpt["state_dict"], str(checkpoint_path(run_dir)))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("state_dict_ema") is not None:
            ema.module.load_state_dict(ckpt["state_dict_ema"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        history, best = list(ckpt["history"]), dict(ckpt["best"])
        if step_in_epoch:
            meter_state = _resumed_meter_state(ckpt, info)
        rngs = ckpt["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            reporter.log(f"resuming on {info.world_size} processes a run saved on {len(rngs)}: RNG streams restart.")
        reporter.log(f"resumed {run_dir} at epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}.")
    else:
        seed_everything(cfg.seed + info.rank)

    if info.is_main:  # everything that can fail on bad input has been built: now the run directory fills
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        reporter.attach_file(run_dir / "log.txt")
        atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        _write_metrics(run_dir, history)
        reporter.log(
            f"run {run_dir}: {cfg.method} {cfg.model} on {task.describe_data()}, "
            f"{cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size}, lr {cfg.recipe_lr():.4g}, "
            f"{info.world_size} process(es) on {device.type}; params trainable {trainable:,} / total {total:,} "
            f"(deployed {deploy_params:,})" + (f"; weights {start_weights}" if start_weights else "")
            + "".join(f"; {value}" for _, value in task.fact_rows(task.run_facts()))
        )
        source = (f"split held as uint8 on {device.type}, batches augmented at once" if pipeline == "resident"
                  else f"DataLoader, {cfg.workers} workers")
        reporter.log(
            f"input: {pipeline} ({source}); memory format {'channels_last' if cfg.channels_last else 'contiguous'}; "
            f"{'fused' if cfg.fused_optimizer else 'unfused'} optimizer"
            + ("; torch.compile: compiles once on the first training batch and once on the first evaluation batch"
               if cfg.compile else "")
        )
        for warning in [*warnings, warmup_warning(cfg.warmup_epochs, cfg.epochs) if cfg.epochs else None]:
            if warning:
                reporter.log("warning: " + warning)

    def state_dict_for_ckpt(ep: int, step: int, gstep: int, meter: TrainMeter | None) -> dict[str, Any]:
        rngs = dist_utils.all_gather_object(rng_state())
        meters = dist_utils.all_gather_object(meter.state_dict() if meter is not None else None)
        layers = conversion_config(model)
        return {
            "task": task.name,
            **task.checkpoint_meta(),
            "method": cfg.method,
            "state_dict": model.state_dict(),
            "state_dict_format": state_dict_format(model.state_dict()),
            "conversion": {"layers": layers, "kwargs": task.conversion_kwargs} if layers else None,
            "implicit_refocus": refocusing.state_dict() if refocusing is not None else None,
            "state_dict_ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": ep,
            "step_in_epoch": step,
            "global_step": gstep,
            "meter": meters[0],  # rank 0's (what checkpoints before per-rank meters held)
            "meters": meters,  # every rank's share of the epoch so far: the epoch's metrics need them all
            "history": history,
            "best": best,
            "rng": rngs,
            "config": cfg.to_dict(),
            "config_hash": chash,
        }

    def save_last(ep: int, step: int, gstep: int, meter: TrainMeter | None) -> Path:
        state = state_dict_for_ckpt(ep, step, gstep, meter)  # collective (RNG gather): all ranks
        path = checkpoint_path(run_dir)
        if info.is_main:
            save_checkpoint(path, state)
        return path

    if cfg.epochs == 0 and ckpt is None:  # evaluate, fold and export the starting weights: they are the run's state
        save_last(0, 0, 0, None)
    stop = _StopFlag(reporter)
    final_eval: dict[str, Any] = {}
    with stop:
        while epoch < cfg.epochs:
            sampler.set_epoch(epoch)
            sampler.set_start(step_in_epoch)
            if isinstance(train_loader, DataLoader):
                train_loader.generator.manual_seed(cfg.seed * 7919 + epoch)  # worker seeds: function of the epoch
            meter = TrainMeter(device)
            if meter_state is not None:
                meter.load_state_dict(meter_state)
                meter_state = None
            ep = epoch
            bar = reporter.bar(steps_per_epoch * cfg.batch_size, f"epoch {ep + 1}/{cfg.epochs}",
                               initial=step_in_epoch * cfg.batch_size)

            def is_sync(step: int, gstep: int) -> bool:
                return (step % max(cfg.log_every_steps, 1) == 0 and cfg.log_every_steps > 0) or (
                    cfg.checkpoint_every_steps > 0 and gstep % cfg.checkpoint_every_steps == 0)

            def on_sync(step: int, gstep: int, _ep: int = ep, _meter: TrainMeter = meter, _bar: Any = bar) -> None:
                lr = optimizer.param_groups[0]["lr"]
                if cfg.log_every_steps and step % cfg.log_every_steps == 0:
                    ips = _meter.images * info.world_size / max(_meter.seconds, 1e-9)
                    loss = float(_meter.loss_sum.item()) / max(_meter.images, 1)
                    if reporter.lines:
                        reporter.log(f"epoch {_ep + 1}/{cfg.epochs} step {step}/{steps_per_epoch} loss {loss:.4f} "
                                     f"lr {lr:.3g} {ips:.0f} img/s")
                    _bar.set_postfix_str(f"loss {loss:.3f} lr {lr:.3g}")
                if cfg.checkpoint_every_steps and gstep % cfg.checkpoint_every_steps == 0 and step < steps_per_epoch:
                    save_last(_ep, step, gstep, _meter)

            def stop_requested(gstep: int) -> bool:
                if call_step_hooks(StepEvent(global_step=gstep, model=model)):
                    stop.requested = True
                return stop.requested

            try:
                with bar:
                    outcome = train_one_epoch(
                        train_model, train_loader, optimizer, scheduler, step_fn=step_fn, device=device, meter=meter,
                        global_step=global_step, start_step=step_in_epoch, steps_per_epoch=steps_per_epoch,
                        scaler=scaler, ema=ema, grad_clip=cfg.grad_clip,
                        is_sync_step=is_sync, on_sync=on_sync, stop_requested=stop_requested,
                        on_batch=bar.update,
                    )
            except NonFiniteLossError as exc:
                last = checkpoint_path(run_dir)
                kept = (f"the last good checkpoint {last} (epoch {len(history)}) is kept" if last.is_file()
                        else "no checkpoint had been written yet")
                msg = (f"training loss became NaN/inf ({exc}, epoch {ep + 1}, lr {optimizer.param_groups[0]['lr']:.3g}). "
                       f"Stopped; {kept}. Lower the learning rate (--lr), add --grad-clip 1.0, or use --amp bf16 "
                       "instead of fp16, and start again (new --out or --overwrite).")
                reporter.log(msg)
                raise NonFiniteLossError(msg) from None
            except CorruptImageError as exc:
                raise _stopped_on_corrupt_image(exc, ep, step_in_epoch, global_step, meter, info, save_last,
                                                run_dir, steps_per_epoch, reporter, task) from None
            global_step = outcome.global_step
            if outcome.stopped:
                path = save_last(ep, outcome.step_in_epoch, global_step, meter)
                msg = (f"interrupted at epoch {ep + 1}, step {outcome.step_in_epoch}/{steps_per_epoch}; saved {path}. "
                       f"Resume with: {task.resume_command(run_dir)}")
                reporter.log(msg)
                raise RunInterrupted(msg, path)

            train = meter.totals()
            dist_utils.sync_buffers(model)  # BN statistics drift per rank; evaluate (and save) rank 0's
            evaluated = (ep + 1) % cfg.eval_every_epochs == 0 or ep + 1 == cfg.epochs
            test = evaluate(eval_model) if evaluated else None
            ema_test = evaluate(ema.module) if evaluated and ema is not None else None
            row: dict[str, Any] = {
                "epoch": ep + 1,
                "global_step": global_step,
                "lr": optimizer.param_groups[0]["lr"],
                **task.epoch_row(train, test, ema_test),
                "images_per_s": train["images"] / max(meter.seconds, 1e-9),
                "epoch_time_s": meter.seconds,
            }
            history.append(row)
            scored = ema_test if ema_test is not None else test
            is_best = scored is not None and (not best or _better(scored[task.score], best[task.score]))
            if is_best:
                best = task.best_entry(ep + 1, scored)
            epoch, step_in_epoch = ep + 1, 0
            path = save_last(epoch, 0, global_step, None)
            if info.is_main:
                _write_metrics(run_dir, history)
                if is_best:
                    atomic_copy(path, checkpoint_path(run_dir, "best"))
                if ep + 1 in cfg.snapshot_epochs:  # an under-trained start of the same recipe (docs/pretrained.md)
                    atomic_copy(path, checkpoint_path(run_dir, f"epoch-{ep + 1}"))
                reporter.log(
                    f"epoch {ep + 1}/{cfg.epochs}: train loss {train['loss']:.4f}"
                    + (f" top-1 {train['top1']:.2f}%" if "train_top1" in row else "") + " | "
                    + (("test " + task.format_metrics(test)) if test is not None
                       else f"test not evaluated (every {cfg.eval_every_epochs})")
                    + (f" | ema {task.format_metrics(ema_test)}" if ema_test is not None else "")
                    + f" | {row['images_per_s']:.0f} img/s, {meter.seconds:.1f}s"
                )
            if scored is not None:
                final_eval = scored

    # ---- deployable outputs
    deploy_model = ema.module if ema is not None else model
    if not final_eval:  # resumed a run whose last epoch had finished (or trained none): evaluate once more
        final_eval = evaluate(deploy_model)
    final = {"epoch": cfg.epochs, **task.final_metrics(final_eval)}
    sample = task.sample(device)
    folded_metrics = fold_report = fold_err = onnx_info = None
    if refconv_layers(deploy_model):
        plain, fold_report = task.fold(deploy_model, sample)
        fold_err = fold_report["max_abs_err"]
        folded_metrics = task.final_metrics(evaluate(plain))
        weights_name = "folded.safetensors"
    else:
        plain = deploy_model
        weights_name = "model.safetensors"
    weights_path = run_dir / weights_name
    if info.is_main:
        save_weights(plain, weights_path, task.weights_meta(fold_report))
        if fold_err is not None:
            reporter.log(f"folded -> {weights_path}: max |folded - refconv| = {fold_err:.3g}; folded test "
                         f"{task.format_metrics(folded_metrics)}")
        if cfg.export_onnx:
            onnx_info = task.export_onnx(plain, run_dir / "model.onnx", sample)
            reporter.log(f"ONNX -> {onnx_info['path']} (onnxruntime max abs err {onnx_info['max_abs_err']:.3g})")

    result = RunResult(
        run_dir=run_dir, method=cfg.method, model=cfg.model, data=task.data_name(), config=cfg.to_dict(),
        config_hash=config_hash(cfg), final=final, best=best, history=history, weights_path=weights_path,
        folded_path=weights_path if fold_report is not None else None, folded_metrics=folded_metrics,
        fold_max_abs_err=fold_err, fold=fold_report, onnx=onnx_info, trainable_params=trainable, total_params=total,
        deploy_params=deploy_params, wall_time_s=time.perf_counter() - t_start,
        extra={"world_size": info.world_size, "device": str(device), "steps_per_epoch": steps_per_epoch,
               "input_pipeline": pipeline, "start_weights": start_weights, **task.run_facts()}, task=task.name,
    )
    if info.is_main:
        atomic_write_bytes(run_dir / DONE_FILE, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
        reporter.summary(f"refconv {cfg.method}: {run_dir}", summary_rows(result))
    dist_utils.barrier()
    return result


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the history (so a resumed run never shows epochs it rolled back)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode())


def _better(score: float, best: float) -> bool:
    """Whether ``score`` beats ``best`` (a NaN best, e.g. a detector's mAP with nothing found yet, is beaten by
    any number)."""
    return score > best or (math.isnan(best) and not math.isnan(score))


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """The end-of-run summary as (label, value) rows."""
    task = task_class(result.task)
    f, b = result.final, result.best
    score = task.score
    rows = [
        ("run", str(result.run_dir)),
        ("method / model / data", f"{result.method} / {result.model} / {result.data}"),
        ("final test", task.format_metrics(f)),
        ("best test", f"{score} {b.get(score, float('nan')):.4g} at epoch {b.get('epoch', '-')}"
         if result.task != "classification" else
         f"top-1 {b.get('top1', float('nan')):.2f}% at epoch {b.get('epoch', '-')}"),
        ("params", f"trainable {result.trainable_params:,} / total {result.total_params:,} / deployed "
                   f"{result.deploy_params:,}"),
    ]
    rows += task.fact_rows(result.extra)
    if result.history and "eval_images_per_s" in result.history[-1]:
        last = result.history[-1]
        rows.append(("throughput", f"{last['images_per_s']:.0f} img/s train, {last['eval_images_per_s']:.0f} img/s eval"))
    if result.folded_metrics is not None:
        fm = result.folded_metrics
        if "correct1" in fm:
            same = "identical" if fm["correct1"] == f["correct1"] else "DIFFERENT"
            rows.append(("folded", f"top-1 {fm['top1']:.2f}% ({same} to RefConv), max abs err "
                                   f"{result.fold_max_abs_err:.3g}"))
        else:
            rows.append(("folded", f"{task.format_metrics(fm)}, max abs err {result.fold_max_abs_err:.3g}"))
    if result.weights_path is not None:
        rows.append(("deployable weights", str(result.weights_path)))
    if result.onnx:
        rows.append(("onnx", f"{result.onnx['path']} (max abs err {result.onnx['max_abs_err']:.3g})"))
    rows.append(("wall time", f"{result.wall_time_s:.1f}s"))
    if "loss" in f and not math.isfinite(f["loss"]):
        rows.append(("warning", "final loss is not finite"))
    return rows
