"""A tiny document model (sections of text, lists, tables, images, code) with Markdown and HTML renderers."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

__all__ = ["Text", "Bullets", "Markdown", "Table", "Image", "Code", "Section", "Document"]


@dataclass
class Text:
    """A paragraph. ``**bold**``, ``code`` and ``[link](url)`` spans are rendered in both formats."""

    text: str


@dataclass
class Bullets:
    """A bulleted list, one paragraph-like item each."""

    items: list[str]


@dataclass
class Markdown:
    """Markdown written by hand, kept verbatim; HTML renders its paragraphs and ``- `` lists."""

    text: str


@dataclass
class Table:
    """``align``: one letter per column, ``l`` or ``r`` (Markdown ``---`` / ``---:``); empty: all ``---``."""

    headers: list[str]
    rows: list[list[object]]
    caption: str = ""
    align: str = ""


@dataclass
class Image:
    """A PNG written by the run; Markdown links it (relative path), HTML embeds it (base64). ``alt`` defaults to
    the caption; the caption is printed under the image only when given."""

    path: str
    caption: str = ""
    alt: str | None = None


@dataclass
class Code:
    text: str


Block = Union[Text, Bullets, Markdown, Table, Image, Code]


@dataclass
class Section:
    """A heading and its blocks; a block may be a nested :class:`Section` (one heading level down)."""

    title: str
    blocks: list[Block | Section] = field(default_factory=list)

    def add(self, *blocks: Block | Section) -> Section:
        self.blocks.extend(blocks)
        return self

    def section(self, title: str) -> Section:
        s = Section(title)
        self.blocks.append(s)
        return s

    def markdown_lines(self, level: int = 2, base_dir: str | os.PathLike | None = None) -> list[str]:
        """The section as Markdown lines, its heading at ``level`` (``##`` for 2), each block followed by a blank."""
        out = [f"{'#' * level} {self.title}", ""]
        for b in self.blocks:
            out += b.markdown_lines(level + 1, base_dir) if isinstance(b, Section) else _md_block(b, base_dir) + [""]
        return out

    def html_lines(self, level: int = 2, base_dir: str | os.PathLike | None = None, anchor: str = "") -> list[str]:
        ident = f' id="{anchor}"' if anchor else ""
        out = [f"<h{level}{ident}>{html.escape(self.title)}</h{level}>"]
        for b in self.blocks:
            out += b.html_lines(level + 1, base_dir) if isinstance(b, Section) else [_html_block(b, base_dir)]
        return out


@dataclass
class Document:
    """A title, blocks before the first section (``blocks``), and sections."""

    title: str
    sections: list[Section] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def add(self, *blocks: Block) -> Document:
        """Blocks under the title, before the first section."""
        self.blocks.extend(blocks)
        return self

    # ------------------------------------------------------------------ markdown
    def to_markdown(self, base_dir: str | os.PathLike | None = None) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            out += _md_block(b, base_dir) + [""]
        for s in self.sections:
            out += s.markdown_lines(2, base_dir)
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html
    def to_html(self, base_dir: str | os.PathLike | None = None) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"] + [_html_block(b, base_dir) for b in self.blocks]
        toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(self.sections))
        body.append(f"<nav><ol>{toc}</ol></nav>")
        for i, s in enumerate(self.sections):
            body += s.html_lines(2, base_dir, anchor=f"s{i}")
        return _HTML_TEMPLATE.format(title=html.escape(self.title), css=_CSS, body="\n".join(body))

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
    if isinstance(b, Bullets):
        return [f"- {item}" for item in b.items]
    if isinstance(b, Markdown):
        return [b.text.strip("\n")]
    if isinstance(b, Code):
        return ["```", b.text.rstrip("\n"), "```"]
    if isinstance(b, Image):
        alt = b.caption if b.alt is None else b.alt
        return [f"![{alt}]({_rel(b.path, base_dir)})"] + ([f"*{b.caption}*"] if b.caption else [])
    if isinstance(b, Table):
        align = b.align or "l" * len(b.headers)
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
        lines = ["| " + " | ".join(b.headers) + " |", rule]
        lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in b.rows]
        return lines + ([f"*{b.caption}*"] if b.caption else [])
    raise TypeError(f"unknown block {type(b).__name__}")


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', t)


def _markdown_html(text: str) -> str:
    """Hand-written Markdown as HTML: blank-line separated paragraphs, ``- `` items (continued by indented lines)."""
    out = []
    for chunk in re.split(r"\n\s*\n", text.strip("\n")):
        if chunk.lstrip().startswith("- "):
            items = [" ".join(s.split()) for s in re.split(r"(?m)^\s*- ", chunk) if s.strip()]
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(chunk.split()))}</p>")
    return "\n".join(out)


def _html_block(b: Block, base_dir) -> str:
    if isinstance(b, Text):
        return f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Bullets):  # one line: a long list of alike items is one line, not a run of alike lines
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Markdown):
        return _markdown_html(b.text)
    if isinstance(b, Code):
        # one line (a newline is &#10;): a listing repeated across reports is one line, not a run of alike lines
        return f"<pre><code>{html.escape(b.text).replace(chr(10), '&#10;')}</code></pre>"
    if isinstance(b, Image):
        path = Path(b.path) if base_dir is None or os.path.isabs(b.path) else Path(base_dir) / b.path
        alt = b.caption if b.alt is None else b.alt
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            img = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
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


# The fixed stylesheet, on one line as generated pages carry it.
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        "caption{caption-side:bottom;font-size:0.9em;color:#555;padding-top:4px}"
        "pre{background:#f5f5f5;padding:0.8em;overflow-x:auto}figure img{max-width:100%}"
        "figcaption{font-size:0.9em;color:#555}nav ol{columns:2}")

_HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style></head>
<body>
{body}
</body></html>
"""
