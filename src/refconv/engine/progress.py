"""What a run shows: tqdm bars on a terminal, plain timestamped lines otherwise, a rich summary at the end.

Only rank 0 reports. Every line also goes to ``run_dir/log.txt`` so a run started under ``nohup`` or a
scheduler leaves a readable record. Output goes to stderr: stdout stays free for machine-readable output
(``refconv eval --json``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Reporter", "NullBar"]


class NullBar:
    """A progress bar that shows nothing (plain-log mode, other ranks)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Reporter:
    """Rank-aware console + file logger.

    Args:
        enabled: False on ranks other than 0 (nothing is printed or written).
        mode: ``auto`` (bars on a TTY, lines otherwise), ``bar``, ``plain`` or ``none`` (file only).
        stream: where console output goes (stderr).
    """

    def __init__(self, *, enabled: bool = True, mode: str = "auto", stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        isatty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = ("bar" if isatty else "plain") if mode == "auto" else mode
        self.isatty = isatty
        self._file: IO[str] | None = None
        self._pending: list[str] = []  # lines logged before the log file exists
        self._bar: tqdm | None = None

    @property
    def bars(self) -> bool:
        return self.enabled and self.mode == "bar"

    @property
    def lines(self) -> bool:
        """Whether per-interval step lines are wanted (no bar to show progress)."""
        return self.enabled and self.mode == "plain"

    def attach_file(self, path: str | Path) -> None:
        """Start copying lines to ``path`` (lines logged earlier are written first)."""
        if self.enabled:
            self._file = open(path, "a", buffering=1, encoding="utf-8")
            self._file.writelines(line + "\n" for line in self._pending)
        self._pending.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        if self.mode != "none":
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
        else:
            self._pending.append(line)

    def bar(self, total: int, desc: str, *, initial: int = 0, unit: str = "img") -> tqdm | NullBar:
        if not self.bars:
            return NullBar()
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, leave=False,
                         file=self.stream, dynamic_ncols=True)
        outer = self

        class _Bar:
            def update(self, n: int = 1) -> None:
                outer._bar.update(n)

            def set_postfix_str(self, s: str) -> None:
                outer._bar.set_postfix_str(s, refresh=False)

            def close(self) -> None:
                if outer._bar is not None:
                    outer._bar.close()
                    outer._bar = None

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.close()

        return _Bar()

    def summary(self, title: str, rows: list[tuple[str, str]]) -> None:
        """A one-screen key/value summary: a rich table on a terminal, aligned text otherwise."""
        if not self.enabled:
            return
        if self._file is not None:
            self._file.write(f"{title}\n" + "".join(f"  {k:<24} {v}\n" for k, v in rows))
        if self.mode == "none":
            return
        if self.isatty:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for k, v in rows:
                table.add_row(k, v)
            Console(file=self.stream).print(table)
        else:
            width = max((len(k) for k, _ in rows), default=0)
            print(title, file=self.stream)
            for k, v in rows:
                print(f"  {k:<{width}}  {v}", file=self.stream)
            self.stream.flush()
