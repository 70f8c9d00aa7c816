"""The train state: everything a run needs to continue exactly, and whose ``state_dict()`` *is* ``last.pt``.

The checkpoint's keys are the run directory's file format (``checkpoints/*.pt``, read back by
``run(cfg, resume=True)``, :func:`refconv.engine.modeling.load_checkpoint` users and ``refconv export``); this
class writes and reads exactly those keys, so checkpoints written before it existed resume unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..convert import conversion_config, state_dict_format
from . import distributed as dist_utils
from .checkpoint import rng_state, set_rng_state
from .loop import TrainMeter
from .modeling import load_format_checked

if TYPE_CHECKING:
    from .config import RunConfig
    from .progress import Reporter
    from .task import Task

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """The model, its optimisation and where the run stands (epoch, step, history, best, this epoch's meter).

    ``model`` is the unwrapped model (what is saved, folded and exported); ``meter`` is the running epoch's
    :class:`TrainMeter` (None between epochs); ``meter_state`` the share of an interrupted epoch a resume hands
    to the next epoch's meter.
    """

    cfg: RunConfig
    task: Task
    config_hash: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None  # timm ModelEmaV3
    refocusing: Any = None  # implicit refocusing (refconv.engine.refocusing); its state goes into the checkpoint
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps of epoch ``epoch`` finished
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    meter: TrainMeter | None = None
    meter_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under DDP: every rank's RNG state and meter are gathered)."""
        rngs = dist_utils.all_gather_object(rng_state())
        meters = dist_utils.all_gather_object(self.meter.state_dict() if self.meter is not None else None)
        model, task = self.model, self.task
        layers = conversion_config(model)
        return {
            "task": task.name,
            **task.checkpoint_meta(),
            "method": self.cfg.method,
            "state_dict": model.state_dict(),
            "state_dict_format": state_dict_format(model.state_dict()),
            "conversion": {"layers": layers, "kwargs": task.conversion_kwargs} if layers else None,
            "implicit_refocus": self.refocusing.state_dict() if self.refocusing is not None else None,
            "state_dict_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "meter": meters[0],  # rank 0's (what checkpoints before per-rank meters held)
            "meters": meters,  # every rank's share of the epoch so far: the epoch's metrics need them all
            "history": self.history,
            "best": self.best,
            "rng": rngs,
            "config": self.cfg.to_dict(),
            "config_hash": self.config_hash,
        }

    def load_state_dict(self, ckpt: dict[str, Any], info: dist_utils.DistInfo, *, source: str,
                        reporter: Reporter) -> None:
        """Continue from ``ckpt`` (read from ``source``): weights, optimisation, position, this rank's RNG.

        The implicit refocusing state is read when the refocusing is set up (it decides how the model is
        built), not here.
        """
        load_format_checked(self.model, ckpt["state_dict"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(ckpt["state_dict_ema"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.history, self.best = list(ckpt["history"]), dict(ckpt["best"])
        self.meter_state = resumed_meter_state(ckpt, info) if self.step_in_epoch else None
        rngs = ckpt["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            reporter.log(f"resuming on {info.world_size} processes a run saved on {len(rngs)}: RNG streams restart.")


def resumed_meter_state(ckpt: dict[str, Any], info: dist_utils.DistInfo) -> dict[str, Any] | None:
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
