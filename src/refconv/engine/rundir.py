"""Who owns a run directory, what state it is in, and what a run does with it.

The layout itself (file names, what a finished run is, which weights a run means) is
:mod:`refconv.runlayout`, below every room. This module adds what only the engine decides:

- :func:`inspect`: a directory's :class:`RunState` against the config meant for it (``new``, ``done``,
  ``partial``, ``mismatch``, ``foreign``), the one classification ``run()``, the protocol's cells and the
  sweep's planner all use;
- :func:`prepare`: what ``run()`` does with it: return a finished identical run (cached), refuse a different
  or unfinished one (naming ``--resume`` / ``--overwrite``), clear it for ``--overwrite`` (never a directory
  that does not look like a run), check a resume;
- :class:`RunDirLock`: one writer at a time.

A run directory is written by exactly one process at a time. Two ``refconv train --out SAME`` started a
second apart used to both succeed, each overwriting the other's ``config.yaml``, weights and ``done.json``,
and interleaving ``log.txt``: one result silently lost. :class:`RunDirLock` prevents that with an advisory
``fcntl.flock`` on ``RUN_DIR/.lock``, held from the moment the directory is examined until the run has
written its last file (folding and export included).

Why ``flock`` on an open file rather than "a lock file exists": the kernel drops the lock when the owning
process dies, however it dies (SIGKILL, OOM killer, power loss of a container), so a stale lock from a
killed run never blocks the next one. The PID written into the file is only for the message that names
the owner; it is never trusted to decide ownership.

The lock file is bookkeeping, not content: :func:`run_entries` ignores it, so a directory holding only a
stale ``.lock`` is still "empty" for the refuse-to-overwrite checks, and :func:`clear` (``--overwrite``)
keeps it so the owner keeps its lock. :func:`remove_orphan_temps` deletes the ``.NAME.*.tmp`` files the
atomic writer leaves behind when a process is killed mid-write; it is only safe while holding the lock.

On platforms without ``fcntl`` (Windows) the lock is a no-op: runs work, two writers are not detected.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import runlayout
from ..errors import CheckpointError, ConfigError
from .config import RunConfig, config_diff, config_hash, make_config

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunDirBusyError", "RunDirLock", "RunState", "inspect", "prepare", "load_run_config",
           "run_entries", "is_empty", "clear", "remove_orphan_temps", "check_out_path"]

LOCK_FILE = ".lock"

# What checkpoint.atomic_write names its temporary files: ".<target name>.<random>.tmp".
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


# Lock descriptors this process holds. A forked child (a DataLoader worker) would share the open file and so
# keep the flock alive after this process releases it or dies: children close them at once.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunDirBusyError(CheckpointError):
    """Another live process owns the run directory."""


def check_out_path(run_dir: Path) -> None:
    """Refuse an output path that names an existing file (a run directory must be a directory).

    Raises:
        CheckpointError: naming the file and the fix.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            f"--out {run_dir} is an existing file, not a directory: a run writes a directory of files there. "
            "Choose a directory path for --out (e.g. runs/my-run)."
        )
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise CheckpointError(
                f"--out {run_dir} is not writable: {parent} is an existing file, so no directory can be created "
                "under it. Choose another --out."
            )


def run_entries(run_dir: Path) -> list[Path]:
    """The entries of ``run_dir`` that belong to a run (the lock file does not)."""
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if p.name != LOCK_FILE]


def is_empty(run_dir: Path) -> bool:
    """True when ``run_dir`` is missing or holds nothing but the lock file."""
    return not run_entries(run_dir)


def clear(run_dir: Path) -> None:
    """Delete everything in ``run_dir`` except the lock file (``--overwrite``), keeping the owner's lock."""
    for entry in run_entries(run_dir):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_orphan_temps(run_dir: Path, *, subdirs: tuple[str, ...] = ("checkpoints",)) -> list[Path]:
    """Delete temporary files a killed atomic write left in ``run_dir`` (and ``subdirs``); return them.

    Only call this while holding the :class:`RunDirLock`: a live writer's temp file looks the same.
    """
    removed = []
    for directory in (run_dir, *(run_dir / s for s in subdirs)):
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if _TEMP_RE.match(entry.name) and entry.is_file():
                try:
                    entry.unlink()
                    removed.append(entry)
                except OSError:
                    pass
    return removed


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory was started with (what ``--resume`` reloads)."""
    path = Path(run_dir) / runlayout.CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a refconv run directory (no {runlayout.CONFIG_FILE}).")
    return make_config(path)


@dataclass(frozen=True)
class RunState:
    """What a run directory holds, measured against the config meant for it.

    ``kind``: ``new`` (missing or empty), ``foreign`` (files no run wrote), ``mismatch`` (a run of another
    config: ``detail`` lists the differing keys), ``done`` (this config's finished run: ``done`` is its
    record), ``partial`` (this config's unfinished run; ``resumable`` when it has a ``last.pt``).
    """

    kind: str
    detail: str = ""
    done: dict[str, Any] | None = None
    resumable: bool = False


def _diff_text(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])


def inspect(run_dir: Path, cfg: RunConfig) -> RunState:
    """Classify ``run_dir`` for ``cfg`` (reads only; safe without the lock)."""
    if is_empty(run_dir):  # a lock file alone (a run killed before writing anything) is not content
        return RunState("new")
    if not runlayout.looks_like_run(run_dir):
        return RunState("foreign", "not a run directory")
    config_path = run_dir / runlayout.CONFIG_FILE
    if not config_path.is_file():
        return RunState("partial")  # killed before its config was written: nothing to resume
    try:
        diff = config_diff(make_config(config_path), cfg)
    except ConfigError as exc:
        return RunState("mismatch", f"unreadable {runlayout.CONFIG_FILE} ({exc})")
    if diff:
        return RunState("mismatch", _diff_text(diff))
    record = runlayout.done_record(run_dir)
    if record is not None and record.get("config_hash") == config_hash(cfg):
        return RunState("done", done=record)
    return RunState("partial", resumable=runlayout.checkpoint_path(run_dir).is_file())


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"output directory {run_dir} is not writable ({exc.strerror or exc}). Choose another --out, or fix "
            "the directory's permissions."
        ) from None


def prepare(cfg: RunConfig, run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Decide what ``run()`` does with ``run_dir``: returns a cached done-record, or None (train).

    Call it holding the :class:`RunDirLock` (it deletes orphaned temporary files and, with ``overwrite``,
    the previous run).

    Raises:
        CheckpointError: a directory that must not be touched (another config, an unfinished run without
            ``--resume``/``--overwrite``, files that are not a run's), or a resume that cannot work.
    """
    state = inspect(run_dir, cfg)
    remove_orphan_temps(run_dir)  # half-written files of a killed process (we hold the lock)
    if resume:
        if not (run_dir / runlayout.CONFIG_FILE).is_file():
            raise CheckpointError(f"cannot resume {run_dir}: it is not a run directory (no {runlayout.CONFIG_FILE}). "
                                  "Start a new run with --out instead.")
        if state.kind == "mismatch":
            raise CheckpointError(
                f"cannot resume {run_dir}: the config differs from the run's ({state.detail}). Resume with the "
                "run's own settings (drop those flags), or start a new run with a different --out (or --overwrite)."
            )
        if state.kind == "done":
            return state.done
        if not state.resumable:
            raise CheckpointError(f"cannot resume {run_dir}: no last.pt was written yet. Start over with --overwrite.")
        return None
    if state.kind == "done" and not cfg.overwrite:
        return state.done
    if state.kind != "new":
        if not cfg.overwrite:
            if state.kind == "mismatch" and runlayout.is_finished(run_dir):
                raise CheckpointError(
                    f"run directory {run_dir} holds a finished run with a different config ({state.detail}). Choose "
                    "another --out, or pass --overwrite to replace it."
                )
            hint = f"Resume it with --resume {run_dir}, or p" if runlayout.checkpoint_path(run_dir).is_file() else "P"
            raise CheckpointError(f"run directory {run_dir} already exists and is not empty. {hint}ass --overwrite to "
                                  "start over, or choose another --out.")
        if state.kind == "foreign":
            raise CheckpointError(
                f"{run_dir} is not empty and does not look like a refconv run directory: refusing to delete it even "
                "with --overwrite. Choose another --out."
            )
        clear(run_dir)  # keeps .lock: this process still owns the directory
    _check_writable(run_dir)
    return None


class RunDirLock:
    """An exclusive advisory lock on ``run_dir`` (``RUN_DIR/.lock``), for the lifetime of one run.

    ``acquire`` creates the directory when needed; ``release(remove_if_empty=True)`` removes it again when
    this lock created it and nothing else was written (a run that failed validation leaves no trace).

    Raises (``acquire``):
        RunDirBusyError: another live process holds the lock (the message names its PID).
        CheckpointError: the directory cannot be created or the lock file cannot be written.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        check_out_path(self.run_dir)
        existed = self.run_dir.is_dir()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the run directory {self.run_dir} ({exc.strerror or exc}). Choose a writable --out, "
                "or fix the permissions of its parent directory."
            ) from None
        self._created_dir = not existed
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # a previous owner removed its empty directory just now: recreate it
                self.run_dir.mkdir(parents=True, exist_ok=True)
                continue
            except OSError as exc:
                self._remove_dir_if_created()
                raise CheckpointError(
                    f"output directory {self.run_dir} is not writable ({exc.strerror or exc}). Choose another --out, "
                    "or fix the directory's permissions."
                ) from None
            if fcntl is None:  # pragma: no cover - Windows: no advisory locks
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_pid(fd)
                os.close(fd)  # the directory is the owner's: leave it exactly as it is
                who = f"PID {owner}" if owner else "another process"
                raise RunDirBusyError(
                    f"run directory {self.run_dir} is in use by another refconv process ({who}); two runs must not "
                    "write one directory. Wait for it to finish (or stop it), or choose another --out."
                ) from None
            # The previous owner may have removed the lock file between our open and our flock: then we hold
            # a lock on a deleted file. Retry on the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self, *, remove_if_empty: bool = False) -> None:
        """Drop the lock; with ``remove_if_empty``, delete the directory if this lock created it and it holds
        nothing else."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_FDS.discard(fd)
        if remove_if_empty and self._created_dir and is_empty(self.run_dir):
            self._remove_dir_if_created()  # unlink while still locked: a waiter retries on the new file
        os.close(fd)

    def _remove_dir_if_created(self) -> None:
        if not self._created_dir:
            return
        try:
            self.path.unlink(missing_ok=True)
            self.run_dir.rmdir()
        except OSError:
            pass

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(remove_if_empty=exc_type is not None)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
