"""``refconv.report.Document``: one model, two renderings with the same content."""

from __future__ import annotations

from refconv.report import Bullets, Code, Document, Image, Markdown, Section, Table, Text


def _doc() -> Document:
    doc = Document("Title").add(Text("Under the **title**."))
    s = doc.section("First")
    s.add(Table(["name", "value"], [["a|b", 1.5], ["c", None]], caption="cap", align="lr"), Bullets(["one", "`two`"]))
    s.section("Nested").add(Code("x = 1\ny = 2\n"), Image("missing.png", alt="alt text"))
    doc.sections.append(Section("Hand-written").add(Markdown("A [link](method.md).\n\n- item\n  continued\n- two\n")))
    return doc


def test_markdown_rendering():
    assert _doc().to_markdown() == (
        "# Title\n\nUnder the **title**.\n\n## First\n\n| name | value |\n|---|---:|\n| a\\|b | 1.5 |\n| c |  |\n"
        "*cap*\n\n- one\n- `two`\n\n### Nested\n\n```\nx = 1\ny = 2\n```\n\n![alt text](missing.png)\n\n"
        "## Hand-written\n\nA [link](method.md).\n\n- item\n  continued\n- two\n")


def test_html_rendering_is_compact_and_carries_the_same_content():
    page = _doc().to_html()
    assert "<p>Under the <strong>title</strong>.</p>" in page
    assert '<nav><ol><li><a href="#s0">First</a></li><li><a href="#s1">Hand-written</a></li></ol></nav>' in page
    assert "<ul><li>one</li><li><code>two</code></li></ul>" in page
    assert "<h3>Nested</h3>" in page and "<pre><code>x = 1&#10;y = 2&#10;</code></pre>" in page
    assert '<p>A <a href="method.md">link</a>.</p>\n<ul><li>item continued</li><li>two</li></ul>' in page
    assert "<td>a|b</td><td>1.5</td>" in page and "<caption>cap</caption>" in page
    head = page.split("<body>")[0]
    assert head.count("\n") == 2 and "<style>body{" in head  # the stylesheet on one line
