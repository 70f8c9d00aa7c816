"""Where a study's cells run: in this process (or ``--parallel`` local processes), or as jobs through submitit.

A study (a sweep, the demo, the downstream study) is a list of engine runs, each in its own run directory;
some start from another's weights (the arms from their baseline). A *launcher* only decides where they run:

- :class:`LocalLauncher` (``--launcher local``, the default): today's runner, in this process or in
  ``--parallel N`` spawned processes;
- :class:`SubmititLauncher` (``--launcher slurm`` or ``submitit-local``): every cell is a job submitted through
  `submitit <https://github.com/facebookincubator/submitit>`_; on Slurm the cells that share their prerequisites
  go out as one job array (throttled by ``--array-parallelism``) that starts ``afterok`` those prerequisites;
  ``submitit-local`` runs the same job objects as local processes (prerequisites first, then at most
  ``array_parallelism`` at a time).

**The filesystem is the truth.** A cell is done when its run directory holds its ``done.json``; submitting
again skips it, and resumes an interrupted cell from its ``last.pt`` (the engine's exact resume). The launcher's
own bookkeeping lives in ``OUT/launch/``: ``submission.json`` (the last submission's job ids),
``cells/<cell>.json`` (what each job reported: running on which node, requeued, failed and why) and ``logs/``
(submitit's pickles and each job's stdout/stderr). ``refconv sweep status OUT`` reads it back.

**Preemption and time limits.** Slurm sends ``SIGUSR2`` (submitit's ``--signal``) 90 s before the time limit or on
preemption. A :class:`CellJob` turns it into the engine's own stop request (the path Ctrl-C takes: stop at the
step boundary, save ``last.pt``), then hands over to submitit's handler, which calls :meth:`CellJob.checkpoint`
and requeues the job; the requeued job resumes bit-identically from that checkpoint. A cell requeued more than
``max_requeues`` times is marked failed with that reason.

**Dependencies** are inferred: a cell whose starting weights lie in another cell's run directory runs after it
(a sweep's arms after its baseline, or after their own seed's baseline), so no study declares them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ..engine import RunConfig, RunInterrupted
from ..errors import ConfigError, RefConvError, short_reason
from ..runlayout import METRICS_FILE

__all__ = ["LAUNCHERS", "LaunchError", "LaunchCell", "LaunchOptions", "Launcher", "LocalLauncher",
           "SubmititLauncher", "CellJob", "make_launcher", "launch_options", "parse_launcher_block",
           "infer_dependencies", "cell_states", "LAUNCH_DIR", "run_with_launcher", "status_text", "squeue", "cell_done",
           "state_path", "read_state", "write_state"]

LAUNCHERS = ("local", "submitit-local", "slurm")
LAUNCH_DIR = "launch"
SUBMISSION_FILE = "submission.json"
RESOURCE_KEYS = ("partition", "account", "qos", "time", "cpus_per_task", "gpus_per_node", "nodes", "mem_gb",
                 "array_parallelism", "max_requeues", "slurm_extra")
# sbatch options the launcher sets itself: a --slurm-extra naming one would silently break dependencies, arrays,
# the preemption signal or the logs.
_OWNED_SBATCH = {"array", "dependency", "output", "error", "signal", "open-mode", "job-name", "wckey", "requeue",
                 "kill-on-invalid-dep", "ntasks-per-node"}
_NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/scratch/local", "/local", "/run")


class LaunchError(RefConvError, RuntimeError):
    """A study cannot be submitted as asked, or some of its cells failed (the message names the fix)."""


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class LaunchOptions:
    """How and with what resources a study's cells run. Defaults fit one GPU per cell.

    ``time_min`` is the job's time limit in minutes; ``extra`` are further ``sbatch`` options (``--slurm-extra
    constraint=a100``); ``max_requeues`` bounds preemptions/time-outs per cell; ``wait=False`` returns right after
    submitting (``refconv sweep status`` / ``report`` read the directory later); ``parallel`` is the local
    launcher's process count.
    """

    launcher: str = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 24 * 60
    cpus_per_task: int = 8
    gpus_per_node: int = 1
    nodes: int = 1
    mem_gb: float | None = 32.0
    array_parallelism: int = 64
    max_requeues: int = 3
    extra: tuple[tuple[str, str], ...] = ()
    wait: bool = True
    poll_s: float = 10.0
    parallel: int = 1
    processes_per_node: int | None = None  # None: one per GPU (CPU DDP, e.g. gloo in tests: set it)

    @property
    def tasks_per_node(self) -> int:
        """One process per GPU (the engine's DDP path) when a cell has several; one otherwise."""
        if self.processes_per_node is not None:
            return self.processes_per_node
        return max(1, self.gpus_per_node) if (self.gpus_per_node > 1 or self.nodes > 1) else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d


def _pos_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"launcher: {what} must be an integer >= {minimum}, got {value!r}.")
    return value


def _extra_pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{what}: give KEY=VALUE (an sbatch option without its dashes, e.g. "
                                  f"constraint=a100), got {item!r}.")
            k, v = item.split("=", 1)
            items.append((k.strip(), v.strip()))
    else:
        raise ConfigError(f"{what}: a mapping of sbatch options (constraint: a100), got {value!r}.")
    out = []
    for k, v in items:
        key = k.lstrip("-").replace("_", "-")
        if not key or not all(c.isalnum() or c == "-" for c in key):
            raise ConfigError(f"{what}: {k!r} is not an sbatch option name (e.g. constraint, exclude, mail-type).")
        if key in _OWNED_SBATCH:
            raise ConfigError(f"{what}: --{key} is set by the launcher itself (arrays, dependencies, the preemption "
                              "signal, logs); remove it.")
        out.append((key, v))
    return tuple(out)


def parse_launcher_block(block: Any, where: str = "launcher") -> dict[str, Any]:
    """Validate a study YAML's ``launcher:`` block (resources only; which launcher is a flag) into
    :class:`LaunchOptions` keyword arguments.

    Raises:
        ConfigError: unknown keys, or values Slurm would refuse (non-positive counts, a time limit under a minute).
    """
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: a mapping of resources (partition:, time:, gpus_per_node: ...), got {block!r}.")
    unknown = sorted(set(block) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RESOURCE_KEYS)} "
                          "(time in minutes; which launcher runs the cells is the --launcher flag).")
    out: dict[str, Any] = {}
    for k in ("partition", "account", "qos"):
        if block.get(k) is not None:
            if not isinstance(block[k], str) or not block[k].strip() or any(c.isspace() for c in block[k]):
                raise ConfigError(f"{where}: {k} must be one word (a Slurm {k} name), got {block[k]!r}.")
            out[k] = block[k]
    if block.get("time") is not None:
        out["time_min"] = _pos_int(block["time"], "time (minutes)")
    for k in ("cpus_per_task", "nodes", "array_parallelism"):
        if block.get(k) is not None:
            out[k] = _pos_int(block[k], k)
    for k in ("gpus_per_node", "max_requeues"):
        if block.get(k) is not None:
            out[k] = _pos_int(block[k], k, minimum=0)
    if block.get("mem_gb") is not None:
        mem = block["mem_gb"]
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0:
            raise ConfigError(f"{where}: mem_gb must be a number > 0, got {mem!r}.")
        out["mem_gb"] = float(mem)
    if block.get("slurm_extra") is not None:
        out["extra"] = _extra_pairs(block["slurm_extra"], f"{where}: slurm_extra")
    return out


def launch_options(launcher: str | None = None, block: Mapping[str, Any] | None = None, **flags: Any) -> LaunchOptions:
    """Options from a YAML ``launcher:`` block with command-line flags laid over it (``None`` flags: not given).

    ``flags`` take :class:`LaunchOptions` names (``time_min``, ``extra`` as ``KEY=VALUE`` strings ...).
    """
    launcher = launcher or "local"
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}.")
    kwargs = parse_launcher_block(block)
    given = {k: v for k, v in flags.items() if v is not None}
    if "extra" in given:
        merged = dict(kwargs.get("extra", ()))
        merged.update(_extra_pairs(list(given.pop("extra")), "--slurm-extra"))
        kwargs["extra"] = tuple(merged.items())
    check = {("time" if k == "time_min" else k): v for k, v in given.items()
             if k in ("time_min", "cpus_per_task", "nodes", "array_parallelism", "gpus_per_node", "max_requeues",
                      "mem_gb", "partition", "account", "qos")}
    kwargs.update(parse_launcher_block(check, "command line"))
    kwargs.update({k: v for k, v in given.items() if k in ("wait", "poll_s", "parallel")})
    return LaunchOptions(launcher=launcher, **kwargs)


# ------------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class LaunchCell:
    """One engine run of a study: its key (``e3/zero-init/seed0``), its config (its ``out`` is its run directory)
    and the keys of cells that must finish first (added to the inferred ones)."""

    key: str
    config: RunConfig
    after: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


def infer_dependencies(cells: Sequence[LaunchCell]) -> dict[str, tuple[str, ...]]:
    """``{key: keys it waits for}``: the explicit ``after`` plus every cell whose run directory holds the cell's
    starting weights (``weights`` is the run directory or a file in it)."""
    dirs = {c.key: c.run_dir.resolve() for c in cells}
    deps: dict[str, tuple[str, ...]] = {}
    for c in cells:
        found = list(c.after)
        w = c.config.weights
        if w:
            wp = Path(str(w)).resolve()
            for k, d in dirs.items():
                if k != c.key and (wp == d or d in wp.parents) and k not in found:
                    found.append(k)
        unknown = [k for k in found if k not in dirs]
        if unknown:
            raise ConfigError(f"cell {c.key} waits for {unknown}, which are not cells of this study.")
        deps[c.key] = tuple(found)
    _topological(cells, deps)  # refuses a cycle
    return deps


def _topological(cells: Sequence[LaunchCell], deps: Mapping[str, Sequence[str]]) -> list[list[LaunchCell]]:
    """The cells in waves: each wave's prerequisites all lie in earlier waves."""
    placed: set[str] = set()
    left = list(cells)
    waves = []
    while left:
        wave = [c for c in left if all(d in placed for d in deps[c.key])]
        if not wave:
            raise ConfigError(f"cells {[c.key for c in left]} wait for each other: no order runs them.")
        waves.append(wave)
        placed |= {c.key for c in wave}
        left = [c for c in left if c.key not in placed]
    return waves


def cell_done(cfg: RunConfig) -> bool:
    """The filesystem's answer: the run directory holds this config's finished run."""
    from ..engine import rundir

    return rundir.inspect(cfg.run_dir(), cfg).kind == "done"


# ------------------------------------------------------------------------------------------------ state files
def _slug(key: str) -> str:
    return key.replace("/", "__")


def state_path(study_out: str | os.PathLike, key: str) -> Path:
    return Path(study_out) / LAUNCH_DIR / "cells" / f"{_slug(key)}.json"


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_state(path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into a cell's state file (atomically: a reader never sees half a file)."""
    path = Path(path)
    state = {**read_state(path), **changes, "updated": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)
    return state


# ------------------------------------------------------------------------------------------------ the job
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
    checkpoint and a requeue (see the module docstring). ``hooks`` are engine step callbacks installed for the run
    (fault injection in tests, a user's watchdog); they must pickle.
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

        from ..engine.config import make_config
        from ..engine.callbacks import installed
        from .cells import run_cell

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


# ------------------------------------------------------------------------------------------------ launchers
class Launcher(Protocol):
    """Runs a study's cells somewhere; returns ``{key: "done" | "failed: reason" | "submitted"}``."""

    name: str

    def launch(self, cells: Sequence[LaunchCell], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]: ...


class LocalLauncher:
    """Today's runner: prerequisites first, then the rest in this process or ``parallel`` spawned processes."""

    name = "local"

    def __init__(self, options: LaunchOptions | None = None) -> None:
        self.options = options or LaunchOptions()

    def launch(self, cells: Sequence[LaunchCell], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]:
        from .cells import Arm, Cell, run_cells

        deps = infer_dependencies(cells)
        out: dict[str, str] = {}
        for wave in _topological(cells, deps):
            as_cells = [Cell(Arm(c.key, c.config.method, c.config.epochs), 0, c.config) for c in wave]
            run_cells(as_cells, parallel=self.options.parallel)
            out.update({c.key: "done" for c in wave})
        return out


def _shared_storage_warning(path: Path) -> str | None:
    p = str(path.resolve())
    for prefix in _NODE_LOCAL:
        if p == prefix or p.startswith(prefix + "/"):
            return (f"{path} is under {prefix}, which is usually local to each node: jobs on other nodes will not "
                    "see the study's files (nor each other's locks). Put --out on storage every node mounts (your "
                    "home or project file system).")
    return None


class SubmititLauncher:
    """Cells as submitit jobs: ``mode="slurm"`` (sbatch job arrays with ``afterok`` dependencies) or
    ``mode="submitit-local"`` (the same job objects as local processes)."""

    def __init__(self, options: LaunchOptions, *, hooks: Sequence[Callable[..., Any]] = ()) -> None:
        if options.launcher not in ("slurm", "submitit-local"):
            raise ConfigError(f"SubmititLauncher runs 'slurm' or 'submitit-local', not {options.launcher!r}.")
        self.options = options
        self.name = options.launcher
        self.hooks = tuple(hooks)
        self.command: str | None = None  # the command that resubmits the study (recorded for `sweep status`)

    # ---- checks before anything is written
    def check(self, study_out: Path, log: Callable[[str], None]) -> None:
        """Refuse what cannot work (no submitit, no sbatch, resources Slurm refuses); warn on node-local --out."""
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise LaunchError(f"--launcher {self.name} needs submitit: pip install 'refconv[cluster]'.") from None
        if self.name == "slurm":
            if shutil.which("sbatch") is None:
                raise LaunchError("--launcher slurm: no sbatch on PATH. Run this on a Slurm login node (or load the "
                                  "cluster's slurm module), or use --launcher local / submitit-local.")
            warning = _shared_storage_warning(study_out)
            if warning:
                log(f"[launch] warning: {warning}")
            self._test_only()

    def sbatch_flags(self) -> list[str]:
        """The resource flags every job of the study gets (what ``sbatch --test-only`` checks)."""
        o = self.options
        flags = [f"--time={o.time_min}", f"--nodes={o.nodes}", f"--ntasks-per-node={o.tasks_per_node}",
                 f"--cpus-per-task={o.cpus_per_task}"]
        if o.gpus_per_node:
            flags.append(f"--gpus-per-node={o.gpus_per_node}")
        if o.mem_gb is not None:
            flags.append(f"--mem={_mem(o.mem_gb)}")
        for k in ("partition", "account", "qos"):
            if getattr(o, k):
                flags.append(f"--{k}={getattr(o, k)}")
        flags += [f"--{k}={v}" for k, v in o.extra]
        return flags

    def _test_only(self) -> None:
        cmd = ["sbatch", "--test-only", *self.sbatch_flags(), "--wrap=true"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"sbatch --test-only failed to run ({short_reason(exc)}): is Slurm reachable from "
                              "here?") from None
        if proc.returncode != 0:
            msg = " ".join((proc.stderr or proc.stdout).split()).replace("sbatch: error: ", "")
            raise LaunchError(f"Slurm refuses these resources ({msg}); {' '.join(self.sbatch_flags())}. Fix the "
                              "launcher: block or the flags (sinfo lists partitions; sacctmgr show assoc your "
                              "accounts and QOS).")

    # ---- executors
    def slurm_parameters(self, study: str, after: Sequence[str] = ()) -> dict[str, Any]:
        """The ``SlurmExecutor.update_parameters`` of every job of a study (``after``: job ids it waits for)."""
        o = self.options
        params: dict[str, Any] = dict(time=o.time_min, nodes=o.nodes, ntasks_per_node=o.tasks_per_node,
                                      cpus_per_task=o.cpus_per_task, array_parallelism=o.array_parallelism,
                                      job_name=f"refconv-{study}", signal_delay_s=90)
        if o.gpus_per_node:
            params["gpus_per_node"] = o.gpus_per_node
        if o.mem_gb is not None:
            params["mem"] = _mem(o.mem_gb)
        for k in ("partition", "account", "qos"):
            if getattr(o, k):
                params[k] = getattr(o, k)
        extra: dict[str, Any] = {"requeue": True, **dict(o.extra)}
        if after:
            extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
        params["additional_parameters"] = extra
        return params

    def executor(self, study_out: Path) -> Any:
        import submitit

        o = self.options
        folder = study_out / LAUNCH_DIR / "logs" / "%j"
        if self.name == "slurm":
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=o.max_requeues)
            ex.update_parameters(**self.slurm_parameters(study_out.name))
        else:
            ex = submitit.LocalExecutor(folder=folder, max_num_timeout=o.max_requeues)
            # CUDA_VISIBLE_DEVICES=0..gpus_per_node-1 for every local job (harmless without GPUs)
            ex.update_parameters(timeout_min=o.time_min, tasks_per_node=o.tasks_per_node, gpus_per_node=o.gpus_per_node)
        return ex

    def job(self, cell: LaunchCell, study_out: Path) -> CellJob:
        return CellJob(cell.key, cell.config.to_dict(), str(state_path(study_out, cell.key)),
                       self.options.max_requeues, self.hooks)

    # ---- submission
    def launch(self, cells: Sequence[LaunchCell], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]:
        """Submit every unfinished cell, then (``wait``) wait for all of them; returns each cell's outcome.

        Raises:
            LaunchError: another submission of this study still has jobs queued or running, or the checks fail.
        """
        self.check(study_out, log)
        deps = infer_dependencies(cells)
        _refuse_live_submission(study_out)
        todo = [c for c in cells if not cell_done(c.config)]
        outcome = {c.key: "done" for c in cells if c not in todo}
        if not todo:
            log(f"[launch] all {len(cells)} cell(s) finished already: nothing to submit.")
            return outcome
        log(f"[launch] {len(todo)} cell(s) to run through {self.name} ({len(cells) - len(todo)} finished already).")
        for c in todo:
            write_state(state_path(study_out, c.key), status="queued", job_id=None, node=None, reason=None,
                        requeues=0, run_dir=str(c.run_dir))
        try:
            if self.name == "slurm":
                jobs = self._submit_slurm(todo, deps, study_out, log)
                if not self.options.wait:
                    return {**outcome, **{k: "submitted" for k in jobs}}
                outcome.update(self._wait(todo, jobs, study_out, log))
            else:
                outcome.update(self._run_local(todo, deps, study_out, log))
        except KeyboardInterrupt:
            if self.name != "slurm":  # the local jobs are this terminal's processes: Ctrl-C stopped them too
                raise RunInterrupted("interrupted; running cells saved a checkpoint where they were training. Run "
                                     "the same command again to resume (finished cells are kept).", None) from None
            raise RunInterrupted(
                f"stopped waiting; the submitted jobs keep running. Follow them with `refconv sweep status {study_out}`"
                f", build the report from what has finished with `refconv sweep report {study_out}`, or submit again "
                "once they have ended (finished cells are kept).", None) from None
        return outcome

    def _record(self, study_out: Path, jobs: Mapping[str, str]) -> None:
        path = study_out / LAUNCH_DIR / SUBMISSION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"launcher": self.name, "submitted": time.time(), "host": socket.gethostname(),
                                    "pid": os.getpid(), "command": self.command, "jobs": dict(jobs), "options": self.options.to_dict()},
                                   indent=2))

    def _submit_slurm(self, todo: Sequence[LaunchCell], deps: Mapping[str, Sequence[str]], study_out: Path,
                      log: Callable[[str], None]) -> dict[str, str]:
        """One job array per set of prerequisites, each ``afterok`` the prerequisites' jobs."""
        ex = self.executor(study_out)
        keys = {c.key for c in todo}
        jobs: dict[str, str] = {}
        for wave in _topological(todo, {k: [d for d in v if d in keys] for k, v in deps.items()}):
            groups: dict[tuple[str, ...], list[LaunchCell]] = {}
            for c in wave:
                groups.setdefault(tuple(sorted(jobs[d] for d in deps[c.key] if d in keys)), []).append(c)
            for after, group in groups.items():
                ex.update_parameters(additional_parameters=self.slurm_parameters(study_out.name, after)[
                    "additional_parameters"])
                submitted = ex.submit_array([self.job(c, study_out) for c in group])
                for c, j in zip(group, submitted):
                    jobs[c.key] = str(j.job_id)
                    write_state(state_path(study_out, c.key), job_id=str(j.job_id))
                first = str(submitted[0].job_id).split("_")[0]
                log(f"[launch] submitted {len(group)} cell(s) as job {first}"
                    + (f" (array, at most {self.options.array_parallelism} at a time)" if len(group) > 1 else "")
                    + (f", after job(s) {', '.join(after)}" if after else ""))
        self._record(study_out, jobs)
        return jobs

    def _wait(self, todo: Sequence[LaunchCell], jobs: Mapping[str, str], study_out: Path,
              log: Callable[[str], None]) -> dict[str, str]:
        left = {c.key: c for c in todo}
        out: dict[str, str] = {}
        while left:
            live = squeue(list(jobs.values()))
            for key, c in list(left.items()):
                state = read_state(state_path(study_out, key))
                if cell_done(c.config):
                    out[key] = "done"
                elif jobs[key] not in live and state.get("status") != "requeued":
                    if cell_done(c.config):
                        out[key] = "done"
                    else:
                        reason = state.get("reason") or f"job {jobs[key]} ended without finishing the cell"
                        write_state(state_path(study_out, key), status="failed", reason=reason)
                        out[key] = f"failed: {reason}"
                else:
                    continue
                del left[key]
                log(f"[launch] {key}: {out[key]} ({len(out)}/{len(todo)})")
            if left:
                time.sleep(self.options.poll_s)
        return out

    def _run_local(self, todo: Sequence[LaunchCell], deps: Mapping[str, Sequence[str]], study_out: Path,
                   log: Callable[[str], None]) -> dict[str, str]:
        """submitit's local executor: a cell starts once its prerequisites are done, at most
        ``array_parallelism`` at a time."""
        ex = self.executor(study_out)
        keys = {c.key for c in todo}
        pending = list(todo)
        running: dict[str, Any] = {}
        out: dict[str, str] = {}
        jobs: dict[str, str] = {}
        while pending or running:
            for key, job in list(running.items()):
                if job.done():
                    del running[key]
                    cfg = next(c for c in todo if c.key == key).config
                    if cell_done(cfg):
                        out[key] = "done"
                    else:
                        state = read_state(state_path(study_out, key))
                        reason = state.get("reason") or f"job {job.job_id} ended without finishing the cell"
                        write_state(state_path(study_out, key), status="failed", reason=reason)
                        out[key] = f"failed: {reason}"
                    log(f"[launch] {key}: {out[key]} ({len(out)}/{len(todo)})")
            for c in list(pending):
                wait_for = [d for d in deps[c.key] if d in keys]
                if any(out.get(d, "").startswith("failed") for d in wait_for):
                    reason = f"not run: its prerequisite {', '.join(wait_for)} failed"
                    write_state(state_path(study_out, c.key), status="failed", reason=reason)
                    out[c.key] = f"failed: {reason}"
                    pending.remove(c)
                elif all(out.get(d) == "done" for d in wait_for) and len(running) < self.options.array_parallelism:
                    running[c.key] = ex.submit(self.job(c, study_out))
                    jobs[c.key] = str(running[c.key].job_id)
                    write_state(state_path(study_out, c.key), job_id=jobs[c.key])
                    pending.remove(c)
                    self._record(study_out, jobs)
            if pending or running:
                time.sleep(min(self.options.poll_s, 0.5))
        return out


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if float(gb).is_integer() else f"{int(gb * 1024)}M"


def squeue(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{job id: {"state", "node", "reason"}}`` of the jobs Slurm still knows as queued or running (array
    tasks one by one, ``123_4``)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    base = sorted({j.split("_")[0] for j in job_ids})
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(base), "-o", "%i|%T|%N|%r"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            out[parts[0]] = {"state": parts[1], "node": parts[2], "reason": parts[3]}
    return out


def _refuse_live_submission(study_out: Path) -> None:
    """Two submissions of one study must not both queue its cells: refuse while the last one has live jobs."""
    rec = read_state(study_out / LAUNCH_DIR / SUBMISSION_FILE)
    if not rec:
        return
    if rec.get("launcher") == "slurm":
        live = squeue(list(rec.get("jobs", {}).values()))
        if live:
            ids = sorted({j.split("_")[0] for j in live})
            raise LaunchError(f"{study_out}: another submission of this study still has job(s) {', '.join(ids)} "
                              f"queued or running. Wait for them (refconv sweep status {study_out}), or cancel them "
                              f"(scancel {' '.join(ids)}) and submit again: finished cells are kept.")
    elif rec.get("host") == socket.gethostname() and rec.get("pid") and rec["pid"] != os.getpid() \
            and _alive(int(rec["pid"])):
        raise LaunchError(f"{study_out}: another submission of this study (PID {rec['pid']}) is still running its "
                          "cells. Wait for it, or stop it and submit again: finished cells are kept.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def make_launcher(options: LaunchOptions | None, **kwargs: Any) -> Launcher:
    options = options or LaunchOptions()
    return LocalLauncher(options) if options.launcher == "local" else SubmititLauncher(options, **kwargs)


def run_with_launcher(launcher: Launcher | LaunchOptions | None, cells: Sequence[LaunchCell], study_out: Path,
                      log: Callable[[str], None], *, resubmit: str) -> bool:
    """What a study calls before it runs its cells itself: with a submitit launcher, run them as jobs first (the
    study then reads each finished cell back from its directory). Returns False when the study must stop here:
    submitted without waiting.

    Raises:
        LaunchError: cells failed (each named with its reason; ``resubmit`` is the command that resumes them).
    """
    if launcher is None:
        return True
    if isinstance(launcher, LaunchOptions):
        launcher = make_launcher(launcher)
    if isinstance(launcher, LocalLauncher):
        return True  # the study's own runner is the local launcher
    launcher.command = resubmit  # type: ignore[attr-defined]
    outcome = launcher.launch(cells, study_out, log)
    if any(v == "submitted" for v in outcome.values()):
        log(f"[launch] submitted; follow it with `refconv sweep status {study_out}`, build the report from what has "
            f"finished with `refconv sweep report {study_out}`.")
        return False
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    if failed:
        shown = "; ".join(f"{k} ({v[len('failed: '):]})" for k, v in list(failed.items())[:3])
        raise LaunchError(f"{len(failed)} of {len(cells)} cell(s) failed: {shown}. Fix the cause and resubmit with "
                          f"`{resubmit}` (finished cells are kept, interrupted ones resume).")
    return True


# ------------------------------------------------------------------------------------------------ status
def cell_states(cells: Sequence[LaunchCell], study_out: Path) -> list[dict[str, Any]]:
    """Each cell as ``refconv sweep status`` shows it: done / running (job, node, epoch) / queued / requeued /
    failed (reason, last log line) / interrupted / not submitted."""
    sub = read_state(study_out / LAUNCH_DIR / SUBMISSION_FILE)
    jobs = sub.get("jobs", {})
    live = squeue(list(jobs.values())) if sub.get("launcher") == "slurm" else {}
    rows = []
    for c in cells:
        st = read_state(state_path(study_out, c.key))
        job_id = st.get("job_id") or jobs.get(c.key)
        epochs = _epochs_done(c.run_dir)
        row = {"cell": c.key, "run_dir": str(c.run_dir), "job_id": job_id, "node": st.get("node"),
               "epoch": epochs, "epochs": c.config.epochs, "requeues": st.get("requeues", 0), "reason": None}
        if cell_done(c.config):
            row["status"] = "done"
        elif job_id and job_id in live:
            q = live[job_id]
            row["status"] = "running" if q["state"] in ("RUNNING", "COMPLETING") else "queued"
            row["node"] = q["node"] or row["node"]
            if row["status"] == "queued":
                row["reason"] = q["reason"]
        elif st.get("status") in ("failed", "interrupted"):
            row["status"] = st["status"]
            row["reason"] = st.get("reason")
        elif st.get("status") == "running" and sub.get("launcher") != "slurm":
            row["status"] = "running"
        elif st:
            row["status"] = "failed" if sub.get("launcher") == "slurm" else st.get("status", "unknown")
            row["reason"] = st.get("reason") or "its job ended without finishing the cell"
        else:
            row["status"] = "not submitted"
        if row["status"] in ("failed", "interrupted"):
            row["last_log_line"] = _last_line(st.get("log")) or _last_line(c.run_dir / "log.txt")
        rows.append(row)
    return rows


def _epochs_done(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _last_line(path: Any) -> str | None:
    if not path:
        return None
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1].strip()[:200] if lines else None


def status_text(rows: Sequence[dict[str, Any]], resubmit: str) -> str:
    """The status table as text, with a count per status and how to resubmit failed cells."""
    lines = []
    for r in rows:
        s = r["status"]
        detail = ""
        if s == "running":
            detail = f"job {r['job_id']} on {r['node'] or '?'}, epoch {r['epoch']}/{r['epochs']}"
        elif s == "queued":
            detail = f"job {r['job_id']}" + (f" ({r['reason']})" if r.get("reason") else "")
        elif s in ("failed", "interrupted"):
            detail = f"job {r['job_id']}: {r['reason']}" + (f" | log: {r['last_log_line']}" if r.get("last_log_line")
                                                            else "")
        if r.get("requeues"):
            detail += f" [requeued {r['requeues']}x]"
        lines.append(f"{r['cell']:<40} {s:<13} {detail}".rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts.get("failed") or counts.get("interrupted") or counts.get("not submitted"):
        lines.append(f"resubmit (finished cells are kept, interrupted ones resume): {resubmit}")
    return "\n".join(lines)

