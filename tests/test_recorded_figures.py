"""The figures the docs quote from a recorded study are the recorded study's: the paper-regime page's tables and the
README's answer are rebuilt here from ``docs/results/paper-regime[-shufflenet]/results.json`` and must appear
verbatim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "paper-regime" / "results.json"
SHUFFLENET = ROOT / "docs" / "results" / "paper-regime-shufflenet" / "results.json"
PAGE = ROOT / "docs" / "paper-regime.md"


def _num(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _ci(d: dict) -> str:
    return f"{_num(d['mean'])} [{_num(d['ci_low'])}, {_num(d['ci_high'])}]"


def _rows(path: Path) -> dict[str, dict]:
    (budget,) = json.loads(path.read_text())["budgets"]
    return {r["arm"]: r for r in budget["rows"]}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return _rows(RESULTS)


def _page_table(start: str, end: str) -> dict[str, str]:
    """``{arm: its table line}`` of the page's table between the headings ``start`` and ``end``."""
    page = PAGE.read_text()
    section = page[page.index(start):page.index(end)]
    return {m.group(1).replace("*", "").split()[0]: m.group(0) for m in re.finditer(r"^\| ([^|]+) \|.*$", section, re.M)}


def test_paper_regime_page_table_is_the_recording(rows):
    page = PAGE.read_text()
    table = _page_table("## Results", "## Reading")
    for arm, r in rows.items():
        line = table[arm]
        s = r["summary"]
        assert f"{s['mean']:.2f} ± {s['std']:.2f}" in line, arm
        if r["kind"] == "setting":
            assert f"{r['lr_matched_control']}: {_ci(r['vs_lr_matched'])}" in line, arm
            assert _ci(r["vs_best"]) in line, arm
    best = json.loads(RESULTS.read_text())["budgets"][0]["best_control"]
    assert f"best control ({best})" in page


def test_readme_answer_quotes_the_recording(rows):
    readme = (ROOT / "README.md").read_text()
    answer = readme[readme.index("## Does RefConv beat more training?"):readme.index("## Use it on your model")]
    text = " ".join(answer.split())
    for arm in ("authors", "continue", "scratch"):
        s = rows[arm]["summary"]
        assert f"{s['mean']:.2f} ± {s['std']:.2f} %" in text, arm
    a = rows["authors"]
    assert f"(Δ {_num(a['vs_lr_matched']['mean'])}, 95 % CI [{_num(a['vs_lr_matched']['ci_low'])}, " \
           f"{_num(a['vs_lr_matched']['ci_high'])}])" in text
    assert f"(Δ {_ci(a['vs_best'])})" in text
    assert f"({rows['isotropic']['summary']['mean']:.2f} %)" in text
    assert f"by {_ci(rows['authors-ft-rate']['vs_lr_matched'])}" in text


def test_the_second_familys_table_is_its_recording():
    rows = _rows(SHUFFLENET)
    table = _page_table("## The second family", "**The MobileNetV3 result replicates")
    assert set(table) >= set(rows)
    for arm, r in rows.items():
        s = r["summary"]
        assert f"{s['mean']:.2f} ± {s['std']:.2f}" in table[arm], arm
        if r["kind"] == "setting":
            for control in ("continue", "scratch", "finetune"):
                assert _ci(r["vs"][control]) in table[arm], (arm, control)
    readme = " ".join((ROOT / "README.md").read_text().split())
    for arm in ("authors", "continue", "scratch"):
        s = rows[arm]["summary"]
        assert f"{s['mean']:.2f} ± {s['std']:.2f} %" in readme, arm
    assert f"(Δ {_ci(rows['authors']['vs']['continue'])})" in readme
