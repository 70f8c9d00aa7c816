"""Cells as jobs (:mod:`refconv.protocol.launch`) without a Slurm: the job parameters a YAML gives, bad input, and
a tiny sweep through submitit's local executor: the same results as the in-process runner cell for cell, a second
submission that skips everything, a preempted cell that requeues and resumes exactly, one requeued too often that
is marked failed and resumes when resubmitted. The real Slurm is tests/test_launch_slurm.py (``make test-slurm``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from _datagen import write_fashion_mnist
from _launch_hooks import SignalAtStep
from refconv.engine import make_config
from refconv.errors import ConfigError
from refconv.protocol import launch
from refconv.protocol.launch import (LaunchCell, LaunchError, LaunchOptions, SubmititLauncher, infer_dependencies,
                                     launch_options, submitit_launcher)
from refconv.protocol.sweep import parse_sweep, run_sweep
from refconv.protocol.sweep_status import sweep_report, sweep_status

submitit = pytest.importorskip("submitit")

TIMING = ("images_per_s", "epoch_time_s", "eval_images_per_s", "eval_time_s", "wall_time_s")


def launch_sweep(**changes) -> dict:
    """1 setting + 1 control, one seed, a 2-epoch budget (6 steps) from a 1-epoch baseline: 3 runs of seconds."""
    d = {
        "name": "launch",
        "base": {"model": "timm/mobilenetv3_small_050", "batch_size": 32, "lr": 0.05, "warmup_epochs": 0,
                 "progress": "none", "image_size": 32},
        "baseline": {"epochs": 1},
        "seeds": [0],
        "budgets": [2],
        "settings": [{"name": "authors"}],
        "controls": ["continue"],
    }
    d.update(changes)
    return d


def comparable(cell: dict) -> dict:
    """What must be equal between two executions of a cell: its metrics, curve and sizes, not its timings."""
    return {"final": cell["final"], "best": cell["best"], "folded_top1": cell["folded_top1"],
            "fold_max_abs_err": cell["fold_max_abs_err"], "trainable_params": cell["trainable_params"],
            "history": [{k: v for k, v in row.items() if k not in TIMING} for row in cell["history"]]}


def local_options(**kw) -> LaunchOptions:
    return LaunchOptions(launcher="submitit-local", poll_s=0.3, array_parallelism=2, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process sweep (today's runner) and the data it used."""
    root = tmp_path_factory.mktemp("launch")
    data = write_fashion_mnist(root / "data", n_train=96, n_test=32)
    res = run_sweep(parse_sweep(launch_sweep()), root / "inproc", data_dir=str(data), log=lambda s: None)
    return {"root": root, "data": str(data), "results": res.results}


@pytest.fixture
def job_pythonpath(monkeypatch):
    """Jobs are new processes: they import refconv and the tests' hooks from the submitting environment."""
    here = Path(__file__).parent
    paths = [str(here.parent / "src"), str(here), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ---------------------------------------------------------------------------------------------- parameters
def test_job_parameters_from_the_yaml_and_the_flags(tmp_path):
    spec = parse_sweep(launch_sweep(launcher={"partition": "gpu", "account": "proj", "time": 240, "gpus_per_node": 4,
                                              "cpus_per_task": 10, "mem_gb": 64, "array_parallelism": 8,
                                              "slurm_extra": {"constraint": "a100"}}))
    opts = launch_options("slurm", spec.launcher, time_min=300, qos="high", extra=["exclude=node7"])
    assert (opts.partition, opts.account, opts.qos, opts.time_min, opts.gpus_per_node) == ("gpu", "proj", "high", 300, 4)
    assert opts.tasks_per_node == 4  # one process per GPU: the engine's DDP path
    params = SubmititLauncher(opts).slurm_parameters("study", after=["12", "13"])
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="python -m submitit.core._submit x", folder=tmp_path, map_count=5, **params)
    for line in ["--partition=gpu", "--account=proj", "--qos=high", "--time=300", "--gpus-per-node=4",
                 "--ntasks-per-node=4", "--cpus-per-task=10", "--mem=64G", "--array=0-4%5", "--signal=USR2@90",
                 "--requeue", "--constraint=a100", "--exclude=node7", "--dependency=afterok:12:13",
                 "--kill-on-invalid-dep=yes", "--job-name=refconv-study"]:
        assert f"#SBATCH {line}" in text, line
    assert " ".join(SubmititLauncher(opts).sbatch_flags()).startswith("--time=300 --nodes=1 --ntasks-per-node=4")
    # defaults: one GPU per cell, one process, a day
    d = launch_options("slurm")
    assert (d.gpus_per_node, d.tasks_per_node, d.nodes, d.time_min, d.launcher) == (1, 1, 1, 1440, "slurm")
    assert launch_options(None).launcher == "local"


@pytest.mark.parametrize("block, match", [
    ({"partion": "gpu"}, r"unknown key\(s\) partion; allowed: partition"),
    ({"time": 0}, r"time \(minutes\) must be an integer >= 1"),
    ({"gpus_per_node": -1}, r"gpus_per_node must be an integer >= 0"),
    ({"mem_gb": "lots"}, r"mem_gb must be a number > 0"),
    ({"partition": "a b"}, r"partition must be one word"),
    ({"slurm_extra": {"array": "0-3"}}, r"--array is set by the launcher itself"),
    ({"slurm_extra": {"bad key!": 1}}, r"is not an sbatch option name"),
    ("gpu", r"a mapping of resources"),
])
def test_a_launcher_block_slurm_would_refuse_is_refused_before_submission(block, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep(launch_sweep(launcher=block))


def test_bad_flags():
    with pytest.raises(ConfigError, match="give KEY=VALUE"):
        launch_options("slurm", extra=["constraint"])
    with pytest.raises(ConfigError, match="unknown launcher 'pbs'"):
        launch_options("pbs")
    with pytest.raises(ConfigError, match="nodes must be an integer >= 1"):
        launch_options("slurm", nodes=0)


def test_dependencies_are_inferred_from_the_starting_weights(tmp_path):
    """Per-seed baselines plug in unchanged: an arm waits for the run whose directory holds its weights."""
    base = make_config({"model": "timm/mobilenetv3_small_050", "data": "fashion-mnist"})
    b0 = LaunchCell("baseline/seed0", base.replace(method="baseline", out=str(tmp_path / "b0")))
    b1 = LaunchCell("baseline/seed1", base.replace(method="baseline", out=str(tmp_path / "b1")))
    a0 = LaunchCell("e1/continue/seed0", base.replace(method="continue", weights=str(tmp_path / "b0"),
                                                      out=str(tmp_path / "a0")))
    a1 = LaunchCell("e1/continue/seed1", base.replace(method="continue", out=str(tmp_path / "a1"),
                                                      weights=str(tmp_path / "b1" / "checkpoints" / "last.pt")))
    given = LaunchCell("e1/refconv/seed0", base.replace(method="refconv", weights=str(tmp_path / "given.safetensors"),
                                                        out=str(tmp_path / "g")), after=("baseline/seed0",))
    deps = infer_dependencies([b0, b1, a0, a1, given])
    assert deps == {"baseline/seed0": (), "baseline/seed1": (), "e1/continue/seed0": ("baseline/seed0",),
                    "e1/continue/seed1": ("baseline/seed1",), "e1/refconv/seed0": ("baseline/seed0",)}
    loop = LaunchCell("x", base.replace(method="continue", weights=str(tmp_path / "y"), out=str(tmp_path / "x")))
    back = LaunchCell("y", base.replace(method="continue", weights=str(tmp_path / "x"), out=str(tmp_path / "y")))
    with pytest.raises(ConfigError, match="wait for each other"):
        infer_dependencies([loop, back])


# ---------------------------------------------------------------------------------------------- bad input
def test_slurm_without_submitit_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(LaunchError, match=r"needs submitit: pip install 'refconv\[cluster\]'"):
        SubmititLauncher(launch_options("slurm")).check(tmp_path, print)


def test_slurm_without_sbatch_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="no sbatch on PATH"):
        SubmititLauncher(launch_options("slurm")).check(tmp_path, print)


def test_resources_slurm_refuses_are_one_line(monkeypatch, tmp_path):
    """sbatch --test-only's refusal becomes one line naming the flags (a fake sbatch stands in for Slurm)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LaunchError, match=r"Slurm refuses these resources \(invalid partition specified: nope\); "
                                          r"--time=1440 .*--partition=nope") as exc:
        SubmititLauncher(launch_options("slurm", partition="nope")).check(tmp_path / "out", print)
    assert "\n" not in str(exc.value)


def test_node_local_output_is_warned_about():
    assert "usually local to each node" in submitit_launcher._shared_storage_warning(Path("/tmp/sweeps/x"))
    assert submitit_launcher._shared_storage_warning(Path("/home/me/sweeps/x")) is None


def test_a_second_live_submission_is_refused(tmp_path):
    rec = tmp_path / launch.LAUNCH_DIR / launch.SUBMISSION_FILE
    rec.parent.mkdir(parents=True)
    import socket

    rec.write_text(json.dumps({"launcher": "submitit-local", "host": socket.gethostname(), "pid": os.getppid(),
                               "jobs": {}}))
    with pytest.raises(LaunchError, match=rf"another submission of this study \(PID {os.getppid()}\) is still running"):
        submitit_launcher._refuse_live_submission(tmp_path)
    rec.write_text(json.dumps({"launcher": "submitit-local", "host": socket.gethostname(), "pid": 2**22 + 7,
                               "jobs": {}}))
    submitit_launcher._refuse_live_submission(tmp_path)  # its process is gone: a new submission may go ahead


def test_cli_errors_are_one_line(tmp_path, capsys):
    from refconv.cli import main

    cfg = tmp_path / "s.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(launch_sweep(launcher={"gpus": 1})))
    assert main(["sweep", str(cfg), "--launcher", "slurm"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("refconv sweep: error: launcher: unknown key(s) gpus") and "\n" not in err
    assert main(["sweep", "status", str(tmp_path / "nothing")]) == 1
    assert "is not a sweep directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- submitit-local
def test_submitit_local_equals_in_process_and_a_second_submission_skips(reference, job_pythonpath):
    out = reference["root"] / "local-jobs"
    log: list[str] = []
    res = run_sweep(parse_sweep(launch_sweep()), out, data_dir=reference["data"], launcher=local_options(),
                    log=log.append).results
    ref = reference["results"]
    assert set(res["cells"]) == set(ref["cells"])
    for key in ref["cells"]:
        assert comparable(res["cells"][key]) == comparable(ref["cells"][key]), key
    assert comparable(res["baseline"]) == comparable(ref["baseline"])
    assert [r["values"] for b in res["budgets"] for r in b["rows"]] == \
        [r["values"] for b in ref["budgets"] for r in b["rows"]]
    assert any("3 cell(s) to run through submitit-local" in line for line in log)
    states = {p.stem: json.loads(p.read_text()) for p in (out / "launch" / "cells").glob("*.json")}
    assert {s["status"] for s in states.values()} == {"done"} and len(states) == 3
    rows, text = sweep_status(out)
    assert [r["status"] for r in rows] == ["done"] * 3 and "3 done" in text

    again: list[str] = []
    run_sweep(parse_sweep(launch_sweep()), out, data_dir=reference["data"], launcher=local_options(), log=again.append)
    assert any("all 3 cell(s) finished already: nothing to submit" in line for line in again)
    report = sweep_report(out, log=lambda s: None)
    assert comparable(report["cells"]["e2/continue/seed0"]) == comparable(ref["cells"]["e2/continue/seed0"])


def test_preempted_too_often_fails_then_resubmitted_resumes_exactly(reference, job_pythonpath):
    """SIGUSR2 (Slurm's warning signal) mid-epoch: with max_requeues=0 the cell is failed with the reason, its
    checkpoint kept; resubmitted, it resumes, is preempted again, requeues itself, and ends equal to the cell that
    was never interrupted."""
    out = reference["root"] / "preempt"
    spec = parse_sweep(launch_sweep())
    first = SubmititLauncher(local_options(max_requeues=0), hooks=[SignalAtStep(4, only="e2/continue")])
    with pytest.raises(LaunchError, match=r"1 of 3 cell\(s\) failed: e2/continue/seed0 \(preempted or timed out 1 "
                                          r"times, more than max_requeues=0.*Raise --time or --max-requeues"):
        run_sweep(spec, out, data_dir=reference["data"], launcher=first, log=lambda s: None)
    run_dir = out / "runs" / "e2" / "continue" / "seed0"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "done.json").exists()
    rows, text = sweep_status(out)
    failed = next(r for r in rows if r["cell"] == "e2/continue/seed0")
    assert failed["status"] == "failed" and "max_requeues=0" in failed["reason"]
    assert "resubmit" in text
    partial = sweep_report(out, log=lambda s: None)
    assert partial["missing"] == ["e2/continue/seed0"] and partial["budgets"] == []
    assert "e2/continue/seed0" in (out / "report.md").read_text()

    again = SubmititLauncher(local_options(max_requeues=1), hooks=[SignalAtStep(5, only="e2/continue")])
    res = run_sweep(spec, out, data_dir=reference["data"], launcher=again, log=lambda s: None).results
    ref = reference["results"]["cells"]["e2/continue/seed0"]
    assert comparable(res["cells"]["e2/continue/seed0"]) == comparable(ref)
    state = json.loads(launch.state_path(out, "e2/continue/seed0").read_text())
    assert state["status"] == "done" and state["requeues"] == 1


def test_the_demo_and_the_downstream_study_give_their_runs_to_the_launcher(tmp_path):
    """One launcher serves every study: the demo's and the downstream study's runs, each arm after the baseline
    its weights come from, configured exactly as their stages run them."""
    from refconv.downstream.study import plan_cells as downstream_cells
    from refconv.downstream.study import load_study_config
    from refconv.protocol.demo import _base_config, plan_cells, profile

    p = profile("tiny")
    cells = plan_cells(p, tmp_path, {m: _base_config(p, m, None, 0, "none") for m in p.models})
    deps = infer_dependencies(cells)
    assert len(cells) == 7 and cells[0].key == "timm-mobilenetv3_small_050/baseline"
    assert all(deps[c.key] == ("timm-mobilenetv3_small_050/baseline",) for c in cells[1:])

    cfg = load_study_config("transfer-tiny", work_dir=str(tmp_path / "work"), out=str(tmp_path / "out"))
    cells = downstream_cells(cfg)
    deps = infer_dependencies(cells)
    baselines = [c.key for c in cells if c.key.endswith("/baseline")]
    assert baselines == [f"{t.task}/baseline" for t in cfg.tasks]
    for c in cells:
        if c.key not in baselines:
            assert deps[c.key] == (c.key.split("/")[0] + "/baseline",)


def test_status_rows_name_the_job_the_reason_and_the_last_log_line(tmp_path):
    base = make_config({"model": "timm/mobilenetv3_small_050", "data": "fashion-mnist", "epochs": 2})
    cells = [LaunchCell(k, base.replace(method="baseline", out=str(tmp_path / "runs" / k.replace("/", "-"))))
             for k in ("e2/continue/seed0", "e2/continue/seed1", "e2/continue/seed2", "e2/continue/seed3")]
    logf = tmp_path / "job.err"
    logf.write_text("loading\nRuntimeError: CUDA out of memory\n\n")
    launch.write_state(launch.state_path(tmp_path, cells[0].key), status="failed", job_id="7_0", node="n1",
                       reason="RuntimeError: CUDA out of memory", log=str(logf))
    launch.write_state(launch.state_path(tmp_path, cells[1].key), status="running", job_id="8", node="n2")
    (cells[1].run_dir).mkdir(parents=True)
    (cells[1].run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    launch.write_state(launch.state_path(tmp_path, cells[2].key), status="interrupted", job_id="9", requeues=2,
                       reason="stopped by SIGTERM/SIGINT")
    (tmp_path / "launch" / "submission.json").write_text(json.dumps({"launcher": "submitit-local", "jobs": {}}))
    rows = launch.cell_states(cells, tmp_path)
    assert [r["status"] for r in rows] == ["failed", "running", "interrupted", "not submitted"]
    assert rows[0]["last_log_line"] == "RuntimeError: CUDA out of memory"
    text = launch.status_text(rows, "refconv sweep s.yaml --launcher slurm")
    assert "job 7_0: RuntimeError: CUDA out of memory | log: RuntimeError: CUDA out of memory" in text
    assert "job 8 on n2, epoch 1/2" in text and "[requeued 2x]" in text
    assert text.splitlines()[-2] == "1 failed, 1 running, 1 interrupted, 1 not submitted"
    assert text.splitlines()[-1].endswith("refconv sweep s.yaml --launcher slurm")



def test_any_cell_with_a_key_and_a_config_will_do(tmp_path):
    """A study may hand the launcher its own cell objects: only ``key`` and ``config`` are read (the run directory
    is ``config.run_dir()``)."""

    class Bare:
        __slots__ = ("key", "config")

        def __init__(self, key, config):
            self.key, self.config = key, config

    base = make_config({"model": "timm/mobilenetv3_small_050", "data": "fashion-mnist", "epochs": 2})
    b = Bare("baseline", base.replace(method="baseline", out=str(tmp_path / "b")))
    a = Bare("e2/continue", base.replace(method="continue", weights=str(tmp_path / "b"), out=str(tmp_path / "a")))
    assert infer_dependencies([b, a]) == {"baseline": (), "e2/continue": ("baseline",)}
    rows = launch.cell_states([b, a], tmp_path)
    assert [(r["cell"], r["status"], r["run_dir"]) for r in rows] == [
        ("baseline", "not submitted", str(b.config.run_dir())), ("e2/continue", "not submitted", str(a.config.run_dir()))]
    assert launch.status_text(rows, "again").splitlines()[-2] == "2 not submitted"


@pytest.mark.slow  # ~2 min on 2 cores: three 2-process gloo runs
def test_a_cell_with_several_processes_runs_under_ddp(reference, job_pythonpath):
    """A cell given two processes (one per GPU on a cluster; gloo on CPU here) runs the engine's DDP path with the
    torchrun environment submitit exports: one run directory, written by rank 0, world size 2."""
    out = reference["root"] / "ddp"
    spec = parse_sweep(launch_sweep(budgets=[1]))
    opts = local_options(gpus_per_node=0, processes_per_node=2)
    run_sweep(spec, out, data_dir=reference["data"], launcher=SubmititLauncher(opts), log=lambda s: None)
    done = json.loads((out / "runs" / "e1" / "continue" / "seed0" / "done.json").read_text())
    assert done["extra"]["world_size"] == 2
    assert json.loads((out / "runs" / "baseline" / "done.json").read_text())["extra"]["world_size"] == 2


def test_a_cell_killed_mid_run_resumes_exactly_when_resubmitted(reference, job_pythonpath):
    """SIGKILL after step 4 (no save: a node lost): the cell is reported failed, its epoch-1 checkpoint kept; the
    resubmission skips the finished cells and resumes that one to the uninterrupted result."""
    import signal

    out = reference["root"] / "killed"
    spec = parse_sweep(launch_sweep())
    kill = SubmititLauncher(local_options(), hooks=[SignalAtStep(4, sig=signal.SIGKILL, only="e2/continue")])
    with pytest.raises(LaunchError, match=r"1 of 3 cell\(s\) failed: e2/continue/seed0 \(job \d+ ended without "
                                          r"finishing the cell\)"):
        run_sweep(spec, out, data_dir=reference["data"], launcher=kill, log=lambda s: None)
    rows, _ = sweep_status(out)
    assert {r["cell"]: r["status"] for r in rows} == {"baseline": "done", "e2/authors/seed0": "done",
                                                      "e2/continue/seed0": "failed"}
    log: list[str] = []
    res = run_sweep(spec, out, data_dir=reference["data"], launcher=local_options(), log=log.append).results
    assert any("1 cell(s) to run through submitit-local (2 finished already)" in line for line in log)
    ref = reference["results"]["cells"]["e2/continue/seed0"]
    assert comparable(res["cells"]["e2/continue/seed0"]) == comparable(ref)


def test_the_local_launcher_runs_prerequisites_first(reference):
    from refconv.protocol.launch import LocalLauncher
    from refconv.protocol.sweep import sweep_runs
    from refconv.protocol.sweep_plan import plan_sweep

    spec = parse_sweep(launch_sweep())
    out = reference["root"] / "local-launcher"
    base = spec.base_config(data_dir=reference["data"], progress="none")
    cells = sweep_runs(spec, plan_sweep(spec, out, base, overwrite=False))
    assert [c.key for c in cells] == ["baseline", "e2/authors/seed0", "e2/continue/seed0"]
    assert LocalLauncher().launch(cells, out, print) == {k: "done" for k in ("baseline", "e2/authors/seed0",
                                                                            "e2/continue/seed0")}
    done = json.loads((out / "runs" / "e2" / "continue" / "seed0" / "done.json").read_text())
    assert done["final"] == reference["results"]["cells"]["e2/continue/seed0"]["final"]
