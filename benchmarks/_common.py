"""What the benchmark scripts share: interleaved timing rounds and the Markdown result tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class _Timed(Protocol):
    def round(self, steps: int) -> None: ...


def interleaved_rounds(variants: Sequence[_Timed], *, repeats: int, steps: int) -> None:
    """``repeats`` rounds of ``steps`` steps of every variant, one variant after the other within a round, so
    drift (clock, thermal, other load) hits all variants alike and per-round ratios can be paired."""
    for _ in range(repeats):
        for v in variants:
            v.round(steps)


def cell(v: Any, *, big: float, digits: int) -> str:
    """One table cell: ``None`` as ``-``, a ``(low, high)`` range, a float with thousands separators and no
    decimals from ``big`` up (in magnitude) and ``digits`` decimals below."""
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.2f}-{v[1]:.2f}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= big else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], *, big: float, digits: int) -> str:
    """The rows (dicts with the same keys, ``"raw"`` left out) as a Markdown table, cells as :func:`cell`."""
    cols = [c for c in rows[0] if c != "raw"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r[c], big=big, digits=digits) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
