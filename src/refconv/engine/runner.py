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

Here: the run directory's ownership (lock, cached result, refusal of a different config) and the torch globals
(:mod:`~refconv.engine.torchstate`); the training itself is a :class:`~refconv.engine.trainer.Trainer`, its
checkpoint a :class:`~refconv.engine.state.TrainState`, and callers act on it through callbacks
(:mod:`~refconv.engine.callbacks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import RefConvError
from . import distributed as dist_utils
from . import rundir
from .callbacks import CallbackLike, CallbackList, active
from .config import RunConfig, make_config
from .progress import Reporter
from .result import RunInterrupted, RunResult, summary_rows
from .stopping import DEFAULT_STOP_SIGNALS, StopFlag
from .torchstate import apply_run_settings, run_globals
from .trainer import Trainer

__all__ = ["run", "RunResult", "RunInterrupted", "StopFlag", "summary_rows"]


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


def run(config: RunConfig | dict[str, Any], *, resume: bool = False, reporter: Reporter | None = None,
        callbacks: Sequence[CallbackLike] = (), stop_signals: Sequence[int] = DEFAULT_STOP_SIGNALS) -> RunResult:
    """Train one run as ``config`` says, in ``config.run_dir()``, and return what it produced.

    Args:
        config: a :class:`RunConfig` or a dict of its keys.
        resume: continue the unfinished run in ``config.out`` from its ``last.pt`` (model, optimizer,
            scheduler, EMA, RNG states, epoch and position in the epoch). The config must equal the run's
            (keys that do not change results, like ``workers``, may differ).
        reporter: where progress goes (default: stderr, bars on a terminal, plain lines otherwise).
        callbacks: called at every step and epoch end (:mod:`refconv.engine.callbacks`), after those
            :func:`~refconv.engine.callbacks.installed` around this call; any may stop the run (resumable) or raise.
        stop_signals: the signals that stop the run at the next step boundary with a checkpoint, as Ctrl-C does
            (a launcher adds its preemption warning, e.g. ``signal.SIGUSR1``); handled in the main thread only.

    Returns:
        The :class:`RunResult`; ``cached=True`` when the directory already held this finished run.

    Raises:
        ConfigError / DataError / ModelError: bad config, data or model name (before anything is written).
        CheckpointError: an existing run directory that must not be touched, unreadable/mismatched weights,
            resume of a different config, an unwritable output path.
        StateDictFormatError: a RefConv checkpoint where plain weights are needed, or vice versa.
        NonFiniteLossError: the loss became NaN/inf; ``last.pt`` keeps the last good state.
        RunInterrupted: Ctrl-C/SIGTERM (``stop_signals``) or a callback's stop; a checkpoint was saved first.
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else make_config(config)
    cfg.validate()
    run_callbacks = active(callbacks)  # those installed around this call, then the caller's
    with run_globals():  # every torch global the run sets is put back on exit, whatever the exit
        apply_run_settings(cfg.deterministic)
        return _run(cfg, resume, reporter, run_callbacks, tuple(stop_signals), t_start)


def _run(cfg: RunConfig, resume: bool, reporter: Reporter | None, callbacks: CallbackList,
         stop_signals: tuple[int, ...], t_start: float) -> RunResult:
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

        try:
            trainer = Trainer(cfg, info, run_dir, resume=resume, reporter=reporter, callbacks=callbacks,
                              t_start=t_start, stop_signals=stop_signals)
            trainer.setup()
            trainer.fit()
            result = trainer.finish()
            failed = False
            return result
        finally:
            reporter.close()
    finally:
        lock.release(remove_if_empty=failed)  # a run that failed validation leaves no empty directory
