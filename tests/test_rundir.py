"""A run directory is owned by one process; what a killed or refused run leaves behind (issue 13)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from _datagen import write_fashion_mnist

from refconv.engine import RunConfig, run
from refconv.engine.checkpoint import atomic_write_bytes
from refconv.engine.rundir import LOCK_FILE, RunDirBusyError, RunDirLock, RunState, inspect, remove_orphan_temps
from refconv.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    data_dir = write_fashion_mnist(tmp_path_factory.mktemp("rundir") / "data", n_train=32, n_test=16)
    return dict(model="timm/test_resnet", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0,
                epochs=1, progress="none")


def test_second_writer_is_refused_naming_the_owner(common, tmp_path):
    out = tmp_path / "race"
    with RunDirLock(out):  # another run owns the directory (flock is per open file: also within one process)
        with pytest.raises(RunDirBusyError, match=rf"in use by another refconv process \(PID {os.getpid()}\).*--out"):
            run(RunConfig(out=str(out), **common))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the owner's directory was not touched
    res = run(RunConfig(out=str(out), **common))  # lock released: the run goes ahead
    assert (res.run_dir / "done.json").is_file()


def test_lock_of_a_killed_process_is_stale(common, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('ready', flush=True); "
            "time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirBusyError, match=rf"PID {owner.pid}"):
            run(RunConfig(out=str(out), **common))
    finally:
        owner.kill()
        owner.wait()
    # the kernel dropped the dead process's lock; its PID is still in the file, and does not matter
    assert str(owner.pid) in (out / LOCK_FILE).read_text()
    assert (run(RunConfig(out=str(out), **common)).run_dir / "done.json").is_file()


def test_orphan_temp_files_are_removed_at_start_and_resume(common, tmp_path, faults):
    out = tmp_path / "orphans"
    faults.interrupt_after(1)
    from refconv.engine import RunInterrupted

    with pytest.raises(RunInterrupted):
        run(RunConfig(out=str(out), **{**common, "epochs": 2}))
    faults.clear()
    orphan = out / "checkpoints" / ".last.pt.k7x_2ab.tmp"  # what a kill during torch.save leaves
    orphan.write_bytes(b"half a checkpoint")
    top = out / ".config.yaml.abc123.tmp"
    top.write_bytes(b"x")
    keep = out / "notes.tmp"  # not the atomic writer's pattern: not ours to delete
    keep.write_bytes(b"x")
    run(RunConfig(out=str(out), **{**common, "epochs": 2}), resume=True)
    assert not orphan.exists() and not top.exists() and keep.exists()
    assert remove_orphan_temps(out) == []


def test_failed_validation_leaves_no_directory(common, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match="batch_size=512"):
        run(RunConfig(out=str(out), **{**common, "batch_size": 512}))
    assert not out.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(ConfigError):
        run(RunConfig(out=str(existing), **{**common, "batch_size": 512}))
    assert existing.is_dir()  # the user's own (empty) directory stays


def test_out_naming_a_file_is_a_one_line_error(common, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=r"existing file, not a directory.*--out"):
        run(RunConfig(out=str(blocker), **common))
    assert blocker.read_text() == "x"


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "config.yaml", b"a: 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = atomic_write_bytes(tmp_path / "done.json", b"{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_run_outputs_are_readable_by_others(common, tmp_path):
    old = os.umask(0o022)
    try:
        res = run(RunConfig(out=str(tmp_path / "modes"), **common))
    finally:
        os.umask(old)
    for name in ("config.yaml", "done.json", "model.safetensors", "metrics.jsonl", "checkpoints/last.pt"):
        assert stat.S_IMODE((res.run_dir / name).stat().st_mode) == 0o644, name


def test_sweep_and_demo_directories_have_one_owner(tmp_path):
    from refconv.protocol.demo import profile, run_demo
    from refconv.protocol.sweep import parse_sweep, run_sweep

    spec = parse_sweep({"name": "s", "base": {"model": "timm/test_resnet", "warmup_epochs": 0}, "baseline": {"epochs": 1},
                        "seeds": 1, "budgets": [1], "settings": [{"name": "a"}], "controls": ["continue"]})
    out = tmp_path / "study"
    with RunDirLock(out):
        with pytest.raises(RunDirBusyError, match=rf"PID {os.getpid()}"):
            run_sweep(spec, out, log=lambda s: None)
        with pytest.raises(RunDirBusyError, match=rf"PID {os.getpid()}"):
            run_demo(profile("tiny"), out, log=lambda s: None)
    with pytest.raises(CheckpointError, match="existing file, not a directory"):
        run_demo(profile("tiny"), tmp_path / "study" / LOCK_FILE, log=lambda s: None)


def test_detect_and_segment_runs_have_one_owner(tmp_path):
    from refconv.downstream import downstream_config, run_downstream

    out = tmp_path / "det"
    with RunDirLock(out):
        for task in ("detection", "segmentation"):
            with pytest.raises(RunDirBusyError, match=rf"PID {os.getpid()}"):
                run_downstream(downstream_config(task=task, out=str(out)))


def test_two_trains_into_one_out_then_kill_and_resume(common, tmp_path, capsys):
    """The reported race: a second `refconv train --out SAME` while the first runs is refused naming the first's PID;
    after the first is SIGKILLed its lock is stale and `--resume` finishes the run."""
    import signal
    import time

    from refconv.cli import main

    out = tmp_path / "race"
    args = ["train", "--model", common["model"], "--data-dir", common["data_dir"], "--batch-size", "16",
            "--warmup-epochs", "0", "--epochs", "20", "--log-every-steps", "1", "--checkpoint-every-steps", "1",
            "--progress", "plain", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "refconv.cli", *args], stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120  # running, with a first checkpoint written (a mid-epoch one, every step)
        while time.time() < deadline and not (out / "checkpoints" / "last.pt").is_file() and first.poll() is None:
            time.sleep(0.05)
        assert main([*args[:-2], "--lr", "0.3", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"refconv train: error: run directory {out} is in use by another refconv process (PID "
                       f"{first.pid}); two runs must not write one directory. Wait for it to finish (or stop it), or "
                       "choose another --out.")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert (out / "checkpoints" / "last.pt").is_file()
    assert main(["train", "--resume", str(out), "--epochs", "20", "--progress", "none"]) == 0
    assert (out / "done.json").is_file()


def test_inspect_classifies_a_directory_against_its_config(common, tmp_path):
    """The one classification run(), the cells and the sweep planner decide from."""
    cfg = RunConfig(out=str(tmp_path / "r"), **common)
    assert inspect(cfg.run_dir(), cfg).kind == "new"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LOCK_FILE).write_text("123\n")  # a lock alone is not content
    assert inspect(cfg.run_dir(), cfg).kind == "new"
    (tmp_path / "r" / "notes.txt").write_text("mine")
    assert inspect(cfg.run_dir(), cfg) == RunState("foreign", "not a run directory")
    (tmp_path / "r" / "notes.txt").unlink()
    res = run(cfg)
    state = inspect(cfg.run_dir(), cfg)
    assert state.kind == "done" and state.done["config_hash"] == res.config_hash
    other = cfg.replace(lr=0.1)
    state = inspect(other.run_dir(), other)
    assert state.kind == "mismatch" and state.detail == "lr: 0.05 -> 0.1"
    (tmp_path / "r" / "done.json").unlink()
    assert inspect(cfg.run_dir(), cfg) == RunState("partial", resumable=True)
