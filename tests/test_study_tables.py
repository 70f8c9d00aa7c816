"""What the demo and the sweep share: the statistics table (``protocol.tables``), the progress lines
(``protocol.progress``) and the environment record (``refconv.environment``), against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from refconv.engine import RunResult
from refconv.environment import environment
from refconv.protocol.cells import Arm
from refconv.protocol.progress import StudyProgress
from refconv.protocol.tables import arm_table, compare_arms, mean_epoch_time

T_975_DF2 = 4.302652730  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def result(top1: float, *, wall: float = 10.0, cached: bool = False) -> RunResult:
    return RunResult(run_dir=Path("r"), method="refconv", model="m", data="d", config={}, config_hash="h",
                     final={"top1": top1, "top5": top1 + 5}, best={}, history=[], wall_time_s=wall, cached=cached)


def test_arm_table_hand_computed_against_controls_and_a_reference():
    arms = [Arm("refconv", "refconv", 2), Arm("continue", "continue", 2), Arm("finetune", "finetune", 2)]
    values = {"refconv": [80.0, 82.0, 84.0], "continue": [79.0, 80.0, 81.0], "finetune": [81.0, 81.0, 81.0]}
    results = {(a, s): result(v) for a, vs in values.items() for s, v in enumerate(vs)}
    rows = {r["arm"]: r for r in arm_table(arms, [0, 1, 2], results, reference={"baseline": [78.0] * 3})}
    ref = rows["refconv"]
    assert ref["values"] == values["refconv"] and ref["epochs"] == 2 and ref["method"] == "refconv"
    assert ref["summary"]["mean"] == pytest.approx(82.0) and ref["summary"]["std"] == pytest.approx(2.0)
    # refconv - continue per seed: 1, 2, 3 -> mean 2, sample std 1, 95 % t interval 2 -+ 4.3027 / sqrt(3)
    d = ref["vs"]["continue"]
    assert d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert d["ci_low"] == pytest.approx(2.0 - T_975_DF2 / math.sqrt(3))
    assert d["ci_high"] == pytest.approx(2.0 + T_975_DF2 / math.sqrt(3))
    assert ref["vs"]["finetune"]["mean"] == pytest.approx(1.0)  # -1, 1, 3
    assert ref["vs"]["baseline"]["mean"] == pytest.approx(4.0) and ref["vs"]["baseline"]["std"] == pytest.approx(2.0)
    assert list(ref["vs"]) == ["continue", "finetune", "baseline"]
    assert rows["continue"]["vs"] == {} and rows["finetune"]["vs"] == {}  # controls are not compared
    top5 = {r["arm"]: r for r in arm_table(arms, [0, 1, 2], results, metric="top5")}
    assert top5["refconv"]["summary"]["mean"] == pytest.approx(87.0) and "baseline" not in top5["refconv"]["vs"]


def test_best_control_is_the_stronger_one_first_on_a_tie():
    assert compare_arms({"a": [1.0], "c": [2.0], "f": [3.0]}, ["c", "f"])["best_control"] == "f"
    assert compare_arms({"a": [1.0], "c": [2.0], "f": [2.0]}, ["c", "f"])["best_control"] == "c"
    with pytest.raises(ValueError, match="no values"):
        compare_arms({"a": [1.0]}, ["c"])


def test_mean_epoch_time_reads_the_history():
    assert mean_epoch_time({"history": [{"epoch_time_s": 2.0}, {"epoch_time_s": 4.0}, {}]}) == pytest.approx(3.0)
    assert mean_epoch_time({"history": []}) is None


def test_progress_lines_mark_cached_cells_and_estimate_from_trained_ones():
    lines: list[str] = []
    prog = StudyProgress("sweep", 4, lines.append, parallel=2)
    prog.cell("e1/authors seed 0", result(80.0, cached=True))
    prog.cell("e1/authors seed 1", result(81.5, wall=30.0))
    prog.stage(2, 5, "analyses")
    prog.cell("e1/continue seed 0", result(79.0, wall=90.0), cached=False)
    prog.cell("e1/continue seed 1", result(78.0, wall=1.0, cached=True), cached=False)
    assert lines[0] == "[sweep]   1/4 e1/authors seed 0: top-1 80.00 (cached)"
    # one trained cell of 30 s, two cells left, two processes: 30 s
    assert lines[1] == "[sweep]   2/4 e1/authors seed 1: top-1 81.50 (30s), ~30 s left"
    assert lines[2] == "[sweep] stage 2/5: analyses"
    # (30 + 90) / 2 = 60 s per cell, one left, two processes: 30 s
    assert lines[3] == "[sweep]   3/4 e1/continue seed 0: top-1 79.00 (90s), ~30 s left"
    assert lines[4] == "[sweep]   4/4 e1/continue seed 1: top-1 78.00 (1s)"  # the caller's word wins; no ETA at the end


def test_environment_names_the_software_and_the_machine():
    env = environment(device="cpu")
    assert {"python", "torch", "torchvision", "timm", "refconv", "platform", "cpu_threads", "cpu_cores",
            "cuda"} <= set(env)
    assert env["device"] == "cpu" and env["cpu_threads"] >= 1
