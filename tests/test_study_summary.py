"""The pretrained-study summary page reads two recorded sweeps and prints their numbers as they are."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from refconv import cli
from refconv.protocol.study import READING_END, READING_START, load_study, write_study_summary

RECORDED = Path(__file__).resolve().parents[1] / "docs" / "results" / "fashion-mnist-small"


def test_summary_prints_every_row_and_the_verdict(tmp_path):
    res = json.loads((RECORDED / "results.json").read_text())
    better = copy.deepcopy(res)
    row = next(r for b in better["budgets"] for r in b["rows"] if r["kind"] == "setting")
    row["vs_best"] = {**row["vs_best"], "mean": 0.8, "ci_low": 0.3, "ci_high": 1.3}  # a made-up win
    for name, data in (("a", res), ("b", better)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    page = write_study_summary(load_study({"converged": tmp_path / "a", "undertrained": tmp_path / "b"}),
                               tmp_path / "study.md")
    md = page.read_text()
    orig = next(r for b in res["budgets"] for r in b["rows"] if r["kind"] == "setting")
    assert f"{orig['vs_best']['mean']:+.2f} [{orig['vs_best']['ci_low']:+.2f}, {orig['vs_best']['ci_high']:+.2f}]" in md
    assert "beats the best control from the undertrained start at 3 epoch(s): Δ +0.80 [+0.30, +1.30]" in md
    assert "No RefConv setting beats" not in md
    assert (tmp_path / "study-delta.png").is_file()
    assert cli.main(["study-summary", "converged=" + str(tmp_path / "a"), "--out", str(tmp_path / "one.md")]) == 0
    assert "No RefConv setting beats the best equal-budget control" in (tmp_path / "one.md").read_text()


def test_regenerating_the_page_keeps_its_hand_written_reading(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text((RECORDED / "results.json").read_text())
    page = tmp_path / "study.md"
    write_study_summary(load_study({"converged": tmp_path / "a"}), page, plot=False)
    assert READING_START not in page.read_text()  # nothing written by hand yet: no reading section
    reading = "- **By hand.** A [link](method.md), `code` and\n  a continued line."
    page.write_text(page.read_text() + f"\n## What it means\n\n{READING_START}\n{reading}\n{READING_END}\n")
    for _ in range(2):
        assert cli.main(["study-summary", f"converged={tmp_path / 'a'}", "--out", str(page)]) == 0
        text = page.read_text()
        assert text.count(reading) == 1 and text.endswith(f"{READING_START}\n{reading}\n{READING_END}\n")
    assert cli.main(["study-summary", "converged", "--out", str(page)]) == 1
    assert "give LABEL=DIR" in capsys.readouterr().err
