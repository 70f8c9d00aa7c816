"""Process-group plumbing for ``torchrun``: the only module of refconv that imports ``torch.distributed``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_distributed` reads them and
joins the group (NCCL on GPUs, gloo on CPU, which is what CI uses); without them everything here is a no-op,
so the engine has one code path for one process and for many.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown",
    "barrier",
    "all_reduce_sum",
    "any_true",
    "broadcast_object",
    "all_gather_object",
    "sync_buffers",
    "wrap_model",
    "unwrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, checkpoints and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str = "auto", *, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (or none when run directly).

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
        timeout_s: collective timeout; a rank that dies makes the others fail after this long, not hang.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available. Use --device cpu (or auto).")
    if use_cuda:
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
            if use_cuda:
                kwargs["device_id"] = dev
            dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev, backend=backend)


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity for one process) and return it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_true(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank: how all ranks agree to stop together (Ctrl-C, NaN)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (used to share rank 0's decisions and errors)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (used to checkpoint each rank's RNG state)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers *before* each training forward, so after the last step every rank holds statistics
    updated by its own batch; evaluating or saving without this would mix per-rank models.
    """
    if not _active():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=src)


def wrap_model(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` when running under torchrun (else ``model`` itself).

    ``sync_bn`` converts BatchNorm layers to SyncBatchNorm first; PyTorch implements it for GPUs only, so on
    CPU it is refused with an error rather than silently computing per-rank statistics.
    """
    if not info.distributed:
        return model
    if sync_bn:
        if info.device.type != "cuda":
            raise ConfigError(
                "sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel). Drop --sync-bn for CPU runs."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
