"""The job of one cell (:class:`CellJob`), the picklable callable submitit runs on a node, and how it turns
Slurm's warning signal into a checkpoint and a requeue (see :mod:`refconv.protocol.launch`)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...engine import RunInterrupted
from ...errors import short_reason
from .state import LaunchError, read_state, write_state

__all__ = ["CellJob"]


class _Preemption:
    """Slurm's warning signal -> the engine's stop request; afterwards, submitit's own handler (checkpoint +
    requeue) runs, once the engine has saved."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        self.received: int | None = None
        self.previous: Any = None

    def __enter__(self) -> _Preemption:
        if self.signum is not None:
            self.previous = signal.signal(self.signum, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        print(f"[launch] {signal.Signals(signum).name} received: stopping at the next step and saving a checkpoint, "
              "then requeueing.", file=sys.stderr, flush=True)

    def hook(self, event: Any) -> bool:
        return self.received is not None

    def __exit__(self, *exc: Any) -> None:
        if self.signum is not None and self.previous is not None:
            signal.signal(self.signum, self.previous)

    def forward(self) -> None:
        """Run the handler submitit installed (calls :meth:`CellJob.checkpoint`, requeues, exits the process)."""
        if callable(self.previous) and self.received is not None:
            self.previous(self.received, None)


def _job_environment() -> Any:
    """submitit's JobEnvironment when this process is a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit

        return submitit.JobEnvironment()
    except Exception:  # not a submitit job after all
        return None


class CellJob:
    """The job of one cell: a picklable callable submitit runs on a node.

    It runs the cell as :func:`refconv.protocol.cells.run_cell` does (the finished run is returned, an interrupted
    one resumed, a new one started), reports to its state file, and turns Slurm's warning signal into a
    checkpoint and a requeue (see :mod:`refconv.protocol.launch`, "Preemption and time limits"). ``hooks`` are
    engine step callbacks installed for the run (fault injection in tests, a user's watchdog); they must pickle.
    """

    def __init__(self, key: str, config: Mapping[str, Any], state_file: str, max_requeues: int = 3,
                 hooks: Sequence[Callable[..., Any]] = ()) -> None:
        self.key = key
        self.config = dict(config)
        self.state_file = state_file
        self.max_requeues = max_requeues
        self.hooks = tuple(hooks)

    def __call__(self) -> dict[str, Any]:
        import torch

        from ...engine.config import make_config
        from ...engine.callbacks import installed
        from ..cells import run_cell

        os.environ["REFCONV_CELL"] = self.key  # which cell this process runs (logs, a user's hooks)
        env = _job_environment()
        if env is not None and env.num_tasks > 1:  # several GPUs / nodes: torchrun's environment, the engine's DDP
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        rank0 = env is None or env.global_rank == 0
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        torch.set_num_threads(int(cpus) if cpus and cpus.isdigit() else 1)
        cfg = make_config(self.config)
        requeues = int(read_state(self.state_file).get("requeues", 0))
        if rank0:
            write_state(self.state_file, status="running", job_id=env.job_id if env else str(os.getpid()),
                        node=socket.gethostname(), started=time.time(), requeues=requeues, reason=None,
                        log=str(env.paths.stderr) if env else None)
        usr = env._usr_sig() if env is not None else None
        with _Preemption(usr) as pre:
            try:
                with installed(*self.hooks, pre.hook):  # a hook that signals is heard at the same step
                    res = run_cell(cfg)
            except RunInterrupted:
                if pre.received is None:
                    if rank0:
                        write_state(self.state_file, status="interrupted",
                                    reason="stopped by SIGTERM/SIGINT (scancel, a node failure or Ctrl-C); its "
                                           "checkpoint is kept: resubmit to resume it")
                    raise
                if requeues >= self.max_requeues:
                    reason = (f"preempted or timed out {requeues + 1} times, more than max_requeues="
                              f"{self.max_requeues}; its checkpoint is kept. Raise --time or --max-requeues and "
                              "submit again: it resumes from there")
                    if rank0:
                        write_state(self.state_file, status="failed", reason=reason)
                    raise LaunchError(f"{self.key}: {reason}.") from None
                if rank0:
                    write_state(self.state_file, status="requeued", requeues=requeues + 1)
                pre.forward()  # submitit: checkpoint() + requeue + exit (never returns on rank 0)
                raise
            except Exception as exc:
                if rank0:
                    write_state(self.state_file, status="failed", reason=short_reason(exc))
                raise
        if rank0:
            write_state(self.state_file, status="done", reason=None, finished=time.time())
        return res.to_dict()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption hook: requeue the same job. Its state is on disk (``last.pt``, written before this
        is called), so the requeued job simply resumes the run."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)
