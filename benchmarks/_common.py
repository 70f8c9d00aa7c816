"""What the benchmark scripts share: their Markdown result tables."""

from __future__ import annotations

from typing import Any


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
