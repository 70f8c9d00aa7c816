"""One training epoch and one evaluation pass: plain PyTorch, nothing RefConv-specific.

Metrics are exact counts (summed over ranks under DDP), not running averages of per-batch means, so
accuracy is an integer number of correct images over the test set: a folded model can be checked to score
*exactly* what its RefConv model scored. Losses and counts stay on the device between sync points (no
``.item()`` per step), which keeps GPUs busy; every sync point checks the loss is finite on all ranks, and
the runner only checkpoints at sync points, so a NaN never reaches a checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..errors import RefConvError
from . import distributed as dist_utils

__all__ = [
    "NonFiniteLossError",
    "TrainMeter",
    "EpochOutcome",
    "train_one_epoch",
    "evaluate",
    "autocast",
    "amp_dtype",
    "topk_correct",
    "to_device",
]


class NonFiniteLossError(RefConvError, FloatingPointError):
    """The training loss became NaN or infinite; the run stopped before writing any checkpoint after it."""


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: None on CPU (AMP is a CUDA feature here) or for ``none``."""
    if device.type != "cuda" or amp == "none":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is among the top-``k`` logits, per ``k`` (``k`` capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def to_device(images: Tensor, targets: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


@dataclass
class TrainMeter:
    """Running sums of one epoch of training (loss x items, correct, items, seconds) for one rank.

    ``images`` counts the items of a step (images; a detection or segmentation step's images too); ``correct1``
    stays 0 for tasks without an accuracy.

    Kept as device tensors between sync points; :meth:`totals` sums them over ranks.
    """

    device: torch.device
    loss_sum: Tensor = field(init=False)
    correct1: Tensor = field(init=False)
    images: int = 0
    steps: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct1 = torch.zeros((), dtype=torch.int64, device=self.device)

    def add(self, loss: Tensor, n: int, correct: Tensor | None = None) -> None:
        self.loss_sum += loss.detach().double() * n
        if correct is not None:
            self.correct1 += correct
        self.images += n
        self.steps += 1

    def finite(self) -> bool:
        """Whether the loss has stayed finite on every rank (a collective: call it on all ranks together)."""
        bad = not bool(torch.isfinite(self.loss_sum).item())
        return not dist_utils.any_true(bad, self.device)

    def totals(self) -> dict[str, float]:
        """Loss, top-1 and image count summed over ranks (a collective)."""
        t = torch.stack([self.loss_sum, self.correct1.double(), torch.tensor(float(self.images), device=self.device,
                                                                               dtype=torch.float64)])
        t = dist_utils.all_reduce_sum(t).tolist()
        n = max(t[2], 1.0)
        return {"loss": t[0] / n, "top1": 100.0 * t[1] / n, "images": int(t[2])}

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum.item()), "correct1": int(self.correct1.item()), "images": self.images,
                "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.fill_(state["loss_sum"])
        self.correct1.fill_(state["correct1"])
        self.images = int(state["images"])
        self.steps = int(state["steps"])
        self.seconds = float(state["seconds"])


@dataclass
class EpochOutcome:
    global_step: int
    step_in_epoch: int
    stopped: bool


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: Optimizer,
    scheduler: Any,
    *,
    step_fn: Callable[[nn.Module, Any], Any],
    device: torch.device,
    meter: TrainMeter,
    global_step: int,
    start_step: int = 0,
    steps_per_epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    ema: Any = None,
    grad_clip: float | None = None,
    is_sync_step: Callable[[int, int], bool] = lambda step, gstep: False,
    on_sync: Callable[[int, int], None] | None = None,
    stop_requested: Callable[[int], bool] = lambda gstep: False,
    on_batch: Callable[[int], None] | None = None,
) -> EpochOutcome:
    """Train over ``loader`` (which already skips the ``start_step`` steps done before a resume).

    Args:
        step_fn: ``(model, batch) -> StepOutput`` (:class:`refconv.engine.task.StepOutput`): the task's forward
            pass and loss, under autocast when the run uses AMP; the loop does the rest of the step.
        is_sync_step: ``(step_in_epoch, global_step) -> bool``: where ranks check the loss is finite, agree on
            stopping and call ``on_sync`` (logging, periodic checkpoints). The epoch's last step always is one.
        on_sync: called at sync points after the finite check, so anything it saves is good.
        stop_requested: ``global_step -> bool``, polled after every step (Ctrl-C flag, :mod:`~refconv.engine.callbacks`).
            With one process the epoch stops right there; under DDP at the next sync point, together.
        on_batch: called with the batch size after every step (progress bars).

    Raises:
        NonFiniteLossError: at the first sync point that sees a NaN/inf loss on any rank.
    """
    model.train()
    distributed = dist_utils._active()
    step = start_step
    stop = False
    t_last = time.perf_counter()
    for batch in loader:
        scheduler.step_update(num_updates=global_step)
        out = step_fn(model, batch)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        global_step += 1
        step += 1
        if ema is not None:
            ema.update(dist_utils.unwrap_model(model), step=global_step)
        meter.add(loss, out.count, out.correct)
        if on_batch is not None:
            on_batch(out.count)
        stop = stop or stop_requested(global_step)
        if is_sync_step(step, global_step) or step >= steps_per_epoch or (stop and not distributed):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            meter.seconds += now - t_last
            if not meter.finite():
                raise NonFiniteLossError(f"at global step {global_step}")
            if on_sync is not None:
                on_sync(step, global_step)
            t_last = time.perf_counter()  # time spent logging/checkpointing is not training time
            if dist_utils.any_true(stop, device):
                return EpochOutcome(global_step=global_step, step_in_epoch=step, stopped=True)
        if step >= steps_per_epoch:
            break
    return EpochOutcome(global_step=global_step, step_in_epoch=step, stopped=False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) and throughput over ``loader``, exact over all ranks.

    Top-5 is top-``min(5, num_classes)``. The loss is plain cross-entropy (no label smoothing), as timm reports.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, correct1, correct5, n
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        c1, c5 = topk_correct(logits, targets, (1, 5))
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        sums += torch.stack([loss.double(), c1.double(), c5.double(),
                             torch.tensor(float(targets.shape[0]), dtype=torch.float64, device=device)])
        if on_batch is not None:
            on_batch(targets.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_sum, c1, c5, n = dist_utils.all_reduce_sum(sums).tolist()
    model.train(was_training)
    n_safe = max(n, 1.0)
    return {
        "loss": loss_sum / n_safe,
        "top1": 100.0 * c1 / n_safe,
        "top5": 100.0 * c5 / n_safe,
        "correct1": int(c1),
        "images": int(n),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }
