"""The figures the docs quote from a recorded study are the recorded study's: the paper-regime page's table and the
README's answer are rebuilt here from ``docs/results/paper-regime/results.json`` and must appear verbatim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "paper-regime" / "results.json"


def _num(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _ci(d: dict) -> str:
    return f"{_num(d['mean'])} [{_num(d['ci_low'])}, {_num(d['ci_high'])}]"


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    results = json.loads(RESULTS.read_text())
    (budget,) = results["budgets"]
    return {r["arm"]: r for r in budget["rows"]}


def test_paper_regime_page_table_is_the_recording(rows):
    page = (ROOT / "docs" / "paper-regime.md").read_text()
    table = {m.group(1).replace("*", "").split()[0]: m.group(0) for m in re.finditer(r"^\| ([^|]+) \|.*$", page, re.M)}
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
