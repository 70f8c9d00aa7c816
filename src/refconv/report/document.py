"""A tiny document model (sections of text, tables, images, code) with Markdown and HTML renderers."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

__all__ = ["Text", "Table", "Image", "Code", "Section", "Document"]


@dataclass
class Text:
    """A paragraph. ``**bold**`` and ``code`` spans are rendered in both formats."""

    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[object]]
    caption: str = ""


@dataclass
class Image:
    """A PNG written by the run; Markdown links it (relative path), HTML embeds it (base64)."""

    path: str
    caption: str = ""


@dataclass
class Code:
    text: str


Block = Union[Text, Table, Image, Code]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    # ------------------------------------------------------------------ markdown
    def to_markdown(self, base_dir: str | os.PathLike | None = None) -> str:
        out = [f"# {self.title}", ""]
        for s in self.sections:
            out += [f"## {s.title}", ""]
            for b in s.blocks:
                out += _md_block(b, base_dir) + [""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html
    def to_html(self, base_dir: str | os.PathLike | None = None) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(self.sections))
        body.append(f"<nav><ol>{toc}</ol></nav>")
        for i, s in enumerate(self.sections):
            body.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
            for b in s.blocks:
                body.append(_html_block(b, base_dir))
        return _HTML_TEMPLATE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, out_dir: str | os.PathLike, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and a self-contained ``<stem>.html`` into ``out_dir``."""
        out_dir = Path(out_dir)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md.write_text(self.to_markdown(out_dir), encoding="utf-8")
        page.write_text(self.to_html(out_dir), encoding="utf-8")
        return md, page


def _cell(v: object) -> str:
    return "" if v is None else str(v)


def _rel(path: str, base_dir) -> str:
    if base_dir is None or not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path, base_dir)
    except ValueError:
        return path


def _md_block(b: Block, base_dir) -> list[str]:
    if isinstance(b, Text):
        return [b.text]
    if isinstance(b, Code):
        return ["```", b.text.rstrip("\n"), "```"]
    if isinstance(b, Image):
        return [f"![{b.caption}]({_rel(b.path, base_dir)})"] + ([f"*{b.caption}*"] if b.caption else [])
    if isinstance(b, Table):
        lines = ["| " + " | ".join(b.headers) + " |", "|" + "|".join("---" for _ in b.headers) + "|"]
        lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in b.rows]
        return lines + ([f"*{b.caption}*"] if b.caption else [])
    raise TypeError(f"unknown block {type(b).__name__}")


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


def _html_block(b: Block, base_dir) -> str:
    if isinstance(b, Text):
        return f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Code):
        return f"<pre><code>{html.escape(b.text)}</code></pre>"
    if isinstance(b, Image):
        path = Path(b.path) if base_dir is None or os.path.isabs(b.path) else Path(base_dir) / b.path
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            img = f'<img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
        else:
            img = f"<p><em>missing image {html.escape(str(b.path))}</em></p>"
        cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
        return f"<figure>{img}{cap}</figure>"
    if isinstance(b, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
        rows = "".join("<tr>" + "".join(f"<td>{_inline(_cell(c))}</td>" for c in row) + "</tr>" for row in b.rows)
        cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    raise TypeError(f"unknown block {type(b).__name__}")


_HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
caption {{ caption-side: bottom; font-size: 0.9em; color: #555; padding-top: 4px; }}
pre {{ background: #f5f5f5; padding: 0.8em; overflow-x: auto; }}
figure img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9em; color: #555; }}
nav ol {{ columns: 2; }}
</style></head>
<body>
{body}
</body></html>
"""
