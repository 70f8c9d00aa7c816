"""Who owns a run directory, and what in it counts as the run.

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
from pathlib import Path
from types import TracebackType

from ..errors import CheckpointError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunDirBusyError", "RunDirLock", "run_entries", "is_empty", "clear",
           "remove_orphan_temps", "check_out_path"]

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
