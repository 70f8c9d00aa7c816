"""Cells as submitit jobs (:class:`SubmititLauncher`): Slurm job arrays with ``afterok`` dependencies, or the
same job objects as local processes; the resources checked with ``sbatch --test-only`` before anything is
written, and one live submission per study at a time."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...engine import RunInterrupted
from ...errors import ConfigError, short_reason
from .job import CellJob
from .options import LaunchOptions
from .state import (LAUNCH_DIR, SUBMISSION_FILE, CellLike, LaunchError, cell_done, in_waves, infer_dependencies,
                    read_state, state_path, write_state)
from .status import squeue

__all__ = ["SubmititLauncher"]

_NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/scratch/local", "/local", "/run")


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

    def job(self, cell: CellLike, study_out: Path) -> CellJob:
        return CellJob(cell.key, cell.config.to_dict(), str(state_path(study_out, cell.key)),
                       self.options.max_requeues, self.hooks)

    # ---- submission
    def launch(self, cells: Sequence[CellLike], study_out: Path,
               log: Callable[[str], None]) -> dict[str, str]:
        """Submit every unfinished cell, then (``wait``) wait for all of them; returns each cell's outcome.

        Raises:
            LaunchError: another submission of this study still has jobs queued or running, or the checks fail.
        """
        self.check(study_out, log)
        deps = infer_dependencies(cells)
        _refuse_live_submission(study_out)
        todo = [c for c in cells if not cell_done(c.config)]
        left = {c.key for c in todo}
        outcome = {c.key: "done" for c in cells if c.key not in left}
        if not todo:
            log(f"[launch] all {len(cells)} cell(s) finished already: nothing to submit.")
            return outcome
        log(f"[launch] {len(todo)} cell(s) to run through {self.name} ({len(cells) - len(todo)} finished already).")
        for c in todo:
            write_state(state_path(study_out, c.key), status="queued", job_id=None, node=None, reason=None,
                        requeues=0, run_dir=str(c.config.run_dir()))
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

    def _submit_slurm(self, todo: Sequence[CellLike], deps: Mapping[str, Sequence[str]], study_out: Path,
                      log: Callable[[str], None]) -> dict[str, str]:
        """One job array per set of prerequisites, each ``afterok`` the prerequisites' jobs."""
        ex = self.executor(study_out)
        keys = {c.key for c in todo}
        jobs: dict[str, str] = {}
        for wave in in_waves(todo, {k: [d for d in v if d in keys] for k, v in deps.items()}):
            groups: dict[tuple[str, ...], list[CellLike]] = {}
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

    def _wait(self, todo: Sequence[CellLike], jobs: Mapping[str, str], study_out: Path,
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

    def _run_local(self, todo: Sequence[CellLike], deps: Mapping[str, Sequence[str]], study_out: Path,
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
