"""The training loop of one run as a :class:`Trainer` of short steps: ``setup()`` -> ``fit()`` -> ``finish()``.

- ``setup``: the task's data and loaders, the checkpoint a resume continues, the model (converted, wrapped
  for DDP / compiled), its optimisation (optimizer, schedule, AMP scaler, EMA, implicit refocusing), the
  :class:`~refconv.engine.state.TrainState` (loaded from the checkpoint on resume) and the run directory;
- ``fit``: epoch after epoch, ``_train_epoch`` (the loop of :func:`~refconv.engine.loop.train_one_epoch`, its
  sync points, periodic checkpoints and the stop requests of signals and callbacks) then ``_end_epoch``
  (evaluation, the history row, best / snapshot checkpoints, epoch callbacks);
- ``finish``: the deployable outputs (fold check, weights, ONNX) and the :class:`~refconv.engine.RunResult`.

Every checkpoint is ``state.state_dict()`` written by :meth:`Trainer.save`. What is trained is the config's task
(:mod:`refconv.engine.task`); :func:`refconv.engine.run` owns the run directory, the lock and the torch globals.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..convert import refconv_layers
from ..errors import CheckpointError, ConfigError, CorruptImageError, DataError
from ..runlayout import CHECKPOINT_DIR, CONFIG_FILE, DONE_FILE, METRICS_FILE, checkpoint_path
from . import distributed as dist_utils
from .bn import recalibrate_bn
from .callbacks import CallbackList, EpochEvent, StepEvent
from .checkpoint import atomic_copy, atomic_write_bytes, is_run_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, config_hash, warmup_warning
from .export import save_weights
from .loop import NonFiniteLossError, TrainMeter, amp_dtype, train_one_epoch
from .modeling import count_params
from .optim import build_optimizer, build_scheduler
from .progress import Reporter
from .refocusing import setup_refocusing
from .result import RunInterrupted, RunResult, TrainedModels, summary_rows
from .sampling import ResumableSampler, ShardSampler
from .state import TrainState
from .stopping import DEFAULT_STOP_SIGNALS, StopFlag
from .task_registry import task_class
from .task import Task

__all__ = ["Trainer", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _Epoch:
    """The epoch being trained: where it started (a resume starts mid-epoch), its meter and progress bar."""

    index: int  # 0-based
    start_step: int
    start_gstep: int
    meter: TrainMeter
    bar: Any


class Trainer:
    """One run's training, from a validated config to its :class:`RunResult` (see the module)."""

    def __init__(self, cfg: RunConfig, info: dist_utils.DistInfo, run_dir: Path, *, resume: bool,
                 reporter: Reporter, callbacks: CallbackList, t_start: float,
                 stop_signals: tuple[int, ...] = DEFAULT_STOP_SIGNALS) -> None:
        self.cfg, self.info, self.run_dir, self.resume = cfg, info, run_dir, resume
        self.reporter, self.callbacks, self.t_start = reporter, callbacks, t_start
        self.stop_signals = stop_signals
        self.device = info.device
        self.stop = StopFlag(reporter, ())  # replaced by the signal-handling flag while fit() runs
        self.final_eval: dict[str, Any] = {}
        self.task: Task
        self.state: TrainState

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build everything the loop needs; nothing is written before all that can fail on bad input is built."""
        cfg = self.cfg
        self.amp = amp_dtype(cfg.amp, self.device)
        if cfg.amp != "none" and self.amp is None:
            self.reporter.log(f"amp={cfg.amp} ignored: mixed precision is used on CUDA only (this run is on "
                              f"{self.device.type}).")
        self.task = task_class(cfg.task)(cfg)
        warnings = self._build_data()
        ckpt = self._read_checkpoint()  # read first: a task may rebuild its model from its record
        self._build_model(ckpt)
        self._build_state(ckpt)
        if self.info.is_main:  # everything that can fail on bad input has been built: now the run directory fills
            self._open_run_dir(warnings)
        if cfg.epochs == 0 and ckpt is None:  # evaluate, fold and export the starting weights: they are the state
            self.save()

    def _build_data(self) -> list[str]:
        cfg, info, task = self.cfg, self.info, self.task
        warnings = task.build_data(info)
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                              f"{info.world_size} processes.")
        self.per_rank_batch = cfg.batch_size // info.world_size
        self.sampler = ResumableSampler(len(task.train_ds), batch_size=self.per_rank_batch, seed=cfg.seed,
                                        rank=info.rank, world_size=info.world_size, shuffle=True)
        steps = self.sampler.steps_per_epoch
        if steps < 1:
            raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(task.train_ds)} training images: "
                              "no full batch. Lower --batch-size or use more data (--subset-train).")
        self.steps_per_epoch = min(steps, task.max_steps or steps)
        self.test_sampler = ShardSampler(len(task.test_ds), rank=info.rank, world_size=info.world_size)
        self.train_loader, self.test_loader, self.pipeline = task.loaders(self.sampler, self.test_sampler,
                                                                          self.per_rank_batch, info)
        return warnings

    def _read_checkpoint(self) -> dict[str, Any] | None:
        self.config_hash = config_hash(self.cfg)
        if not self.resume:
            return None
        path = checkpoint_path(self.run_dir)
        ckpt = load_checkpoint(path, map_location=self.device)
        if not is_run_checkpoint(ckpt) or ckpt.get("config_hash") != self.config_hash:
            raise CheckpointError(f"{path} was not written by this run's config; start over with --overwrite.")
        return ckpt

    def _build_model(self, ckpt: dict[str, Any] | None) -> None:
        """The model, the same on every rank (seeded before building); on resume the checkpoint holds every
        weight, so the starting weights need not exist any more."""
        cfg, info, task = self.cfg, self.info, self.task
        seed_everything(cfg.seed)
        model = task.build_model(ckpt=ckpt, reporter=self.reporter)
        self.refocusing = setup_refocusing(model, cfg, ckpt)  # implicit refocusing folds the model back here
        self.trainable, self.total = count_params(model)
        model.to(self.device)
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
        self.model, self.train_model, self.eval_model = model, train_model, eval_model

    def _build_state(self, ckpt: dict[str, Any] | None) -> None:
        """Optimizer, schedule, AMP scaler, EMA and BN calibration batches; the train state, resumed or seeded."""
        cfg, model, refocusing = self.cfg, self.model, self.refocusing
        optimizer = build_optimizer(model, cfg, refocusing)
        if refocusing is not None:
            refocusing.attach(optimizer)  # the preconditioned update: before every step, after unscale/clipping
            if cfg.grad_clip and cfg.refocus_impl == "implicit":
                self.reporter.log("warning: --grad-clip with --refocus-impl implicit clips the norm of the kernels' "
                                  "gradients, not RT's: the run is no longer exactly the explicit one. Drop "
                                  "--grad-clip for exactness.")
        scheduler = build_scheduler(optimizer, cfg, self.steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(model, decay=cfg.ema_decay)
        self.state = TrainState(cfg=cfg, task=self.task, config_hash=self.config_hash, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, ema=ema, refocusing=refocusing)
        self.calibration = self._calibration_loader()
        if ckpt is None:
            seed_everything(cfg.seed + self.info.rank)
            return
        self.state.load_state_dict(ckpt, self.info, source=str(checkpoint_path(self.run_dir)), reporter=self.reporter)
        self.reporter.log(f"resumed {self.run_dir} at epoch {self.state.epoch + 1}, step "
                          f"{self.state.step_in_epoch}/{self.steps_per_epoch}.")

    def _calibration_loader(self) -> Any:
        """Training batches in their own order for BN recalibration before evaluation (None when off)."""
        cfg, info = self.cfg, self.info
        if not cfg.bn_recalibrate_batches:
            return None
        sampler = ResumableSampler(len(self.task.train_ds), batch_size=self.per_rank_batch, seed=cfg.seed + 104729,
                                   rank=info.rank, world_size=info.world_size, shuffle=True)
        return self.task.loaders(sampler, self.test_sampler, self.per_rank_batch, info)[0]

    def _open_run_dir(self, warnings: list[str]) -> None:
        """Rank 0: the directory's checkpoint folder, log, resolved config and metrics, and the start-up lines."""
        cfg, task, run_dir, reporter = self.cfg, self.task, self.run_dir, self.reporter
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        reporter.attach_file(run_dir / "log.txt")
        atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        _write_metrics(run_dir, self.state.history)
        start_weights = task.start_weights
        reporter.log(
            f"run {run_dir}: {cfg.method} {cfg.model} on {task.describe_data()}, "
            f"{cfg.epochs} epochs x {self.steps_per_epoch} steps of {cfg.batch_size}, lr {cfg.recipe_lr():.4g}, "
            f"{self.info.world_size} process(es) on {self.device.type}; params trainable {self.trainable:,} / total "
            f"{self.total:,} (deployed {task.deploy_params:,})" + (f"; weights {start_weights}" if start_weights else "")
            + "".join(f"; {value}" for _, value in task.fact_rows(task.run_facts()))
        )
        source = (f"split held as uint8 on {self.device.type}, batches augmented at once"
                  if self.pipeline == "resident" else f"DataLoader, {cfg.workers} workers")
        reporter.log(
            f"input: {self.pipeline} ({source}); memory format "
            f"{'channels_last' if cfg.channels_last else 'contiguous'}; "
            f"{'fused' if cfg.fused_optimizer else 'unfused'} optimizer"
            + ("; torch.compile: compiles once on the first training batch and once on the first evaluation batch"
               if cfg.compile else "")
        )
        for warning in [*warnings, warmup_warning(cfg.warmup_epochs, cfg.epochs) if cfg.epochs else None]:
            if warning:
                reporter.log("warning: " + warning)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write ``last.pt`` from the train state (a collective: every rank calls it; rank 0 writes)."""
        state = self.state.state_dict()
        path = checkpoint_path(self.run_dir)
        if self.info.is_main:
            save_checkpoint(path, state)
        return path

    def _save_mid_epoch(self, epoch: _Epoch, step: int, gstep: int) -> Path:
        st = self.state
        st.epoch, st.step_in_epoch, st.global_step, st.meter = epoch.index, step, gstep, epoch.meter
        return self.save()

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Train the remaining epochs; signals in ``stop_signals`` and callbacks may stop at a step boundary."""
        with StopFlag(self.reporter, self.stop_signals) as self.stop:
            while self.state.epoch < self.cfg.epochs:
                meter = self._train_epoch()
                self._end_epoch(meter)

    def _begin_epoch(self) -> _Epoch:
        cfg, st = self.cfg, self.state
        self.sampler.set_epoch(st.epoch)
        self.sampler.set_start(st.step_in_epoch)
        if isinstance(self.train_loader, DataLoader):
            self.train_loader.generator.manual_seed(cfg.seed * 7919 + st.epoch)  # worker seeds: function of the epoch
            if hasattr(self.train_loader.dataset, "set_epoch"):  # items seeded per epoch (SeededItems)
                self.train_loader.dataset.set_epoch(st.epoch)
        meter = TrainMeter(self.device)
        if st.meter_state is not None:
            meter.load_state_dict(st.meter_state)
            st.meter_state = None
        bar = self.reporter.bar(self.steps_per_epoch * cfg.batch_size, f"epoch {st.epoch + 1}/{cfg.epochs}",
                                initial=st.step_in_epoch * cfg.batch_size)
        return _Epoch(index=st.epoch, start_step=st.step_in_epoch, start_gstep=st.global_step, meter=meter, bar=bar)

    def _train_epoch(self) -> TrainMeter:
        """One epoch's steps (from where a resume left it); saves and raises :class:`RunInterrupted` if stopped."""
        cfg, st = self.cfg, self.state
        epoch = self._begin_epoch()
        try:
            with epoch.bar:
                outcome = train_one_epoch(
                    self.train_model, self.train_loader, st.optimizer, st.scheduler, step_fn=self._step,
                    device=self.device, meter=epoch.meter, global_step=st.global_step, start_step=st.step_in_epoch,
                    steps_per_epoch=self.steps_per_epoch, scaler=st.scaler, ema=st.ema, grad_clip=cfg.grad_clip,
                    is_sync_step=self._is_sync_step, on_sync=functools.partial(self._on_sync, epoch),
                    stop_requested=functools.partial(self._stop_requested, epoch), on_batch=epoch.bar.update,
                )
        except NonFiniteLossError as exc:
            raise self._diverged(exc, epoch) from None
        except CorruptImageError as exc:
            raise self._stopped_on_corrupt_image(exc, epoch) from None
        st.global_step = outcome.global_step
        if outcome.stopped:
            path = self._save_mid_epoch(epoch, outcome.step_in_epoch, outcome.global_step)
            msg = (f"interrupted at epoch {epoch.index + 1}, step {outcome.step_in_epoch}/{self.steps_per_epoch}; "
                   f"saved {path}. Resume with: {self.task.resume_command(self.run_dir)}")
            self.reporter.log(msg)
            raise RunInterrupted(msg, path)
        return epoch.meter

    def _step(self, model: nn.Module, batch: Any) -> Any:
        return self.task.step(model, batch, device=self.device, amp=self.amp, channels_last=self.cfg.channels_last)

    def _is_sync_step(self, step: int, gstep: int) -> bool:
        cfg = self.cfg
        return (step % max(cfg.log_every_steps, 1) == 0 and cfg.log_every_steps > 0) or (
            cfg.checkpoint_every_steps > 0 and gstep % cfg.checkpoint_every_steps == 0)

    def _on_sync(self, epoch: _Epoch, step: int, gstep: int) -> None:
        """At a sync point (the loss is known finite): the progress line and the periodic checkpoint."""
        cfg, meter = self.cfg, epoch.meter
        lr = self.state.optimizer.param_groups[0]["lr"]
        if cfg.log_every_steps and step % cfg.log_every_steps == 0:
            ips = meter.images * self.info.world_size / max(meter.seconds, 1e-9)
            loss = float(meter.loss_sum.item()) / max(meter.images, 1)
            if self.reporter.lines:
                self.reporter.log(f"epoch {epoch.index + 1}/{cfg.epochs} step {step}/{self.steps_per_epoch} "
                                  f"loss {loss:.4f} lr {lr:.3g} {ips:.0f} img/s")
            epoch.bar.set_postfix_str(f"loss {loss:.3f} lr {lr:.3g}")
        if cfg.checkpoint_every_steps and gstep % cfg.checkpoint_every_steps == 0 and step < self.steps_per_epoch:
            self._save_mid_epoch(epoch, step, gstep)

    def _stop_requested(self, epoch: _Epoch, gstep: int) -> bool:
        """After every step: the step callbacks, then whether a signal or a callback asked to stop."""
        event = StepEvent(global_step=gstep, model=self.state.model, epoch=epoch.index,
                          step_in_epoch=epoch.start_step + gstep - epoch.start_gstep)
        if self.callbacks.step_end(event):
            self.stop.requested = True
        return self.stop.requested

    def _diverged(self, exc: NonFiniteLossError, epoch: _Epoch) -> NonFiniteLossError:
        last = checkpoint_path(self.run_dir)
        kept = (f"the last good checkpoint {last} (epoch {len(self.state.history)}) is kept" if last.is_file()
                else "no checkpoint had been written yet")
        msg = (f"training loss became NaN/inf ({exc}, epoch {epoch.index + 1}, lr "
               f"{self.state.optimizer.param_groups[0]['lr']:.3g}). Stopped; {kept}. Lower the learning rate (--lr), "
               "add --grad-clip 1.0, or use --amp bf16 instead of fp16, and start again (new --out or --overwrite).")
        self.reporter.log(msg)
        return NonFiniteLossError(msg)

    def _stopped_on_corrupt_image(self, exc: Exception, epoch: _Epoch) -> DataError:
        """The error for an unreadable image mid-epoch, after saving a checkpoint at the last finished step.

        The steps before the bad batch are kept (single process: the state is consistent between steps); once the
        file is replaced, ``--resume`` continues exactly there. Under DDP the other ranks cannot be told to save
        in step, so the last periodic checkpoint is what is kept.
        """
        step = epoch.meter.steps  # the meter counts every step of this epoch, including those before a resume
        saved = None
        if not self.info.distributed and step > epoch.start_step and epoch.meter.finite():
            saved = self._save_mid_epoch(epoch, step, epoch.start_gstep + step - epoch.start_step)
        last = checkpoint_path(self.run_dir)
        where = (f"saved {saved} at epoch {epoch.index + 1}, step {step}/{self.steps_per_epoch}" if saved else
                 f"the last checkpoint {last} is kept" if last.is_file() else "no checkpoint had been written yet")
        msg = (f"{exc} Training stopped; {where}. After replacing the file, `{self.task.resume_command(self.run_dir)}` "
               "continues from there (after deleting it: the data changed, so start over with --overwrite).")
        self.reporter.log(msg)
        return CorruptImageError(msg)

    # ------------------------------------------------------------------------------------------ epoch end
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The task's test metrics of ``model`` (after BN recalibration when the run asks for it)."""
        if self.calibration is not None:
            recalibrate_bn(model, self.calibration, self.cfg.bn_recalibrate_batches, self._step)
        return self.task.evaluate(model, self.test_loader, device=self.device, amp=self.amp,
                                  channels_last=self.cfg.channels_last)

    def _end_epoch(self, meter: TrainMeter) -> None:
        """Evaluate (when due), record the epoch, save ``last.pt`` (and best / snapshot), call epoch callbacks."""
        cfg, st, task = self.cfg, self.state, self.task
        ep = st.epoch
        train = meter.totals()
        dist_utils.sync_buffers(st.model)  # BN statistics drift per rank; evaluate (and save) rank 0's
        evaluated = (ep + 1) % cfg.eval_every_epochs == 0 or ep + 1 == cfg.epochs
        test = self.evaluate(self.eval_model) if evaluated else None
        ema_test = self.evaluate(st.ema.module) if evaluated and st.ema is not None else None
        row: dict[str, Any] = {
            "epoch": ep + 1,
            "global_step": st.global_step,
            "lr": st.optimizer.param_groups[0]["lr"],
            **task.epoch_row(train, test, ema_test),
            "images_per_s": train["images"] / max(meter.seconds, 1e-9),
            "epoch_time_s": meter.seconds,
        }
        st.history.append(row)
        scored = ema_test if ema_test is not None else test
        is_best = scored is not None and (not st.best or _better(scored[task.score], st.best[task.score]))
        if is_best:
            st.best = task.best_entry(ep + 1, scored)
        st.epoch, st.step_in_epoch, st.meter = ep + 1, 0, None
        path = self.save()
        if self.info.is_main:
            self._record_epoch(path, row, train, test, ema_test, is_best)
        if scored is not None:
            self.final_eval = scored
        self._epoch_callbacks(row)

    def _record_epoch(self, path: Path, row: dict[str, Any], train: dict[str, Any], test: dict[str, Any] | None,
                      ema_test: dict[str, Any] | None, is_best: bool) -> None:
        """Rank 0: ``metrics.jsonl``, ``best.pt`` / ``epoch-N.pt`` copies of ``last.pt``, the epoch's log line."""
        cfg, task, ep = self.cfg, self.task, row["epoch"]
        _write_metrics(self.run_dir, self.state.history)
        if is_best:
            atomic_copy(path, checkpoint_path(self.run_dir, "best"))
        if ep in cfg.snapshot_epochs:  # an under-trained start of the same recipe (docs/pretrained.md)
            atomic_copy(path, checkpoint_path(self.run_dir, f"epoch-{ep}"))
        self.reporter.log(
            f"epoch {ep}/{cfg.epochs}: train loss {train['loss']:.4f}"
            + (f" top-1 {train['top1']:.2f}%" if "train_top1" in row else "") + " | "
            + (("test " + task.format_metrics(test)) if test is not None
               else f"test not evaluated (every {cfg.eval_every_epochs})")
            + (f" | ema {task.format_metrics(ema_test)}" if ema_test is not None else "")
            + f" | {row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f}s"
        )

    def _epoch_callbacks(self, row: dict[str, Any]) -> None:
        """The epoch callbacks; a stop asked by any of them (on any rank) ends the run here, resumable."""
        st = self.state
        stop = self.callbacks.epoch_end(EpochEvent(epoch=st.epoch, global_step=st.global_step, model=st.model,
                                                   row=row))
        if dist_utils.any_true(stop, self.device):
            path = checkpoint_path(self.run_dir)
            msg = (f"stopped by a callback after epoch {st.epoch}/{self.cfg.epochs}; saved {path}. Resume with: "
                   f"{self.task.resume_command(self.run_dir)}")
            self.reporter.log(msg)
            raise RunInterrupted(msg, path)

    # ------------------------------------------------------------------------------------------ finish
    def finish(self) -> RunResult:
        """Fold (RefConv runs), check and write the deployable weights (and ONNX), then ``done.json``."""
        cfg, st, task, info = self.cfg, self.state, self.task, self.info
        deploy_model = st.ema.module if st.ema is not None else st.model
        if not self.final_eval:  # resumed a run whose last epoch had finished (or trained none): evaluate once more
            self.final_eval = self.evaluate(deploy_model)
        final = {"epoch": cfg.epochs, **task.final_metrics(self.final_eval)}
        outputs, plain = self._deploy(deploy_model)
        result = RunResult(
            run_dir=self.run_dir, method=cfg.method, model=cfg.model, data=task.data_name(), config=cfg.to_dict(),
            config_hash=self.config_hash, final=final, best=st.best, history=st.history, **outputs,
            trainable_params=self.trainable, total_params=self.total, deploy_params=task.deploy_params,
            wall_time_s=time.perf_counter() - self.t_start,
            extra={"world_size": info.world_size, "device": str(self.device), "steps_per_epoch": self.steps_per_epoch,
                   "input_pipeline": self.pipeline, "start_weights": task.start_weights, **task.run_facts()},
            task=task.name,
            models=TrainedModels(trained=_kept(deploy_model), deployed=_kept(plain)),
        )
        if info.is_main:
            atomic_write_bytes(self.run_dir / DONE_FILE, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
            self.reporter.summary(f"refconv {cfg.method}: {self.run_dir}", summary_rows(result))
        dist_utils.barrier()
        return result

    def _deploy(self, deploy_model: nn.Module) -> tuple[dict[str, Any], nn.Module]:
        """The deployable weights (folded for RefConv models, with the fold check) and ONNX: RunResult fields, and
        the deployable model."""
        task, reporter = self.task, self.reporter
        sample = task.sample(self.device)
        folded_metrics = fold_report = fold_err = onnx_info = None
        if refconv_layers(deploy_model):
            plain, fold_report = task.fold(deploy_model, sample)
            fold_err = fold_report["max_abs_err"]
            folded_metrics = task.final_metrics(self.evaluate(plain))
            weights_path = self.run_dir / "folded.safetensors"
        else:
            plain = deploy_model
            weights_path = self.run_dir / "model.safetensors"
        if self.info.is_main:
            save_weights(plain, weights_path, task.weights_meta(fold_report))
            if fold_err is not None:
                reporter.log(f"folded -> {weights_path}: max |folded - refconv| = {fold_err:.3g}; folded test "
                             f"{task.format_metrics(folded_metrics)}")
            if self.cfg.export_onnx:
                onnx_info = task.export_onnx(plain, self.run_dir / "model.onnx", sample)
                reporter.log(f"ONNX -> {onnx_info['path']} (onnxruntime max abs err {onnx_info['max_abs_err']:.3g})")
        return ({"weights_path": weights_path, "folded_path": weights_path if fold_report is not None else None,
                 "folded_metrics": folded_metrics, "fold_max_abs_err": fold_err, "fold": fold_report, "onnx": onnx_info},
                plain)


def _kept(model: nn.Module) -> nn.Module:
    """A finished run's model as the caller keeps it: on the CPU, in eval mode, without the last step's gradients
    (a study holds several of these)."""
    for p in model.parameters():
        p.grad = None
    return model.cpu().eval()


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the history (so a resumed run never shows epochs it rolled back)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode())


def _better(score: float, best: float) -> bool:
    """Whether ``score`` beats ``best`` (a NaN best, e.g. a detector's mAP with nothing found yet, is beaten by
    any number)."""
    return score > best or (math.isnan(best) and not math.isnan(score))
