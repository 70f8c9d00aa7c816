"""A tiny sweep through a real Slurm (``make test-slurm``: tools/slurm-local.sh starts slurmctld + slurmd on this
machine): submitted with ``--launcher slurm`` as jobs (the baseline, then an array of the arms ``afterok`` it),
one cell preempted by Slurm's own warning signal (``scancel --signal=USR2``) mid-epoch, requeued by submitit,
resumed from its checkpoint; the report equals the in-process run's, cell for cell."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from _launch_hooks import SlowSteps
from refconv.protocol import launch
from refconv.protocol.launch import LaunchOptions, SubmititLauncher
from refconv.protocol.sweep import parse_sweep, run_sweep
from refconv.protocol.sweep_status import sweep_report, sweep_status
from test_launch import comparable, job_pythonpath, launch_sweep, reference  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slurm


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in proc.stdout.splitlines())


def _wait(pred, timeout: float, what: str, every: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sweep_on_slurm_with_a_requeue_equals_the_local_run(reference, job_pythonpath, tmp_path):  # noqa: F811
    if not _slurm_up():
        pytest.skip("no Slurm answering here: start one with tools/slurm-local.sh start (make test-slurm does)")
    out = reference["root"] / "slurm"
    opts = LaunchOptions(launcher="slurm", gpus_per_node=0, cpus_per_task=1, mem_gb=1, time_min=30,
                         array_parallelism=2, wait=False, poll_s=1)
    # Steps slowed to ~0.4 s so the test can signal the continue arm while it trains (the numbers are unchanged).
    launcher = SubmititLauncher(opts, hooks=[SlowSteps(0.4)])
    res = run_sweep(parse_sweep(launch_sweep()), out, data_dir=reference["data"], launcher=launcher,
                    log=lambda s: print(s, flush=True))
    assert res.results is None  # submitted, not waited for
    jobs = json.loads((out / "launch" / "submission.json").read_text())["jobs"]
    assert set(jobs) == {"baseline", "e2/authors/seed0", "e2/continue/seed0"}
    key = "e2/continue/seed0"
    run_dir = out / "runs" / "e2" / "continue" / "seed0"

    def training() -> bool:  # its job runs and has finished at least one step of the second epoch... or the first
        st = launch.read_state(launch.state_path(out, key))
        return st.get("status") == "running" and (run_dir / "checkpoints" / "last.pt").is_file()

    _wait(training, 300, f"{key} to train")
    job = launch.read_state(launch.state_path(out, key))["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    def finished() -> bool:
        rows, _ = sweep_status(out)
        assert not [r for r in rows if r["status"] in ("failed", "interrupted")], rows
        return all(r["status"] == "done" for r in rows)

    _wait(finished, 600, "every cell to finish", every=1)
    state = launch.read_state(launch.state_path(out, key))
    assert state["requeues"] == 1, state
    report = sweep_report(out, log=lambda s: None)
    ref = reference["results"]
    for k in ref["cells"]:
        assert comparable(report["cells"][k]) == comparable(ref["cells"][k]), k
    assert comparable(report["baseline"]) == comparable(ref["baseline"])
    assert [r["values"] for b in report["budgets"] for r in b["rows"]] == \
        [r["values"] for b in ref["budgets"] for r in b["rows"]]
    # a second submission finds every cell finished and submits nothing
    log: list[str] = []
    run_sweep(parse_sweep(launch_sweep()), out, data_dir=reference["data"],
              launcher=SubmititLauncher(LaunchOptions(launcher="slurm", gpus_per_node=0, cpus_per_task=1, mem_gb=1)),
              log=log.append)
    assert any("nothing to submit" in line for line in log)
