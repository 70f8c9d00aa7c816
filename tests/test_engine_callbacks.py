"""The engine's seams: callbacks (see every step, stop a run that then resumes exactly, scoped installation),
torch globals put back after a run, and the task registry (no engine module imports a task package, no
import cycle among engine modules)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from _datagen import write_fashion_mnist
from safetensors.torch import load_file

from refconv.engine import Callback, RunConfig, RunInterrupted, installed, run
from refconv.engine.callbacks import active
from refconv.engine.checkpoint import load_checkpoint
from refconv.engine.torchstate import capture, run_globals
from refconv.errors import ConfigError

TIMING = {"images_per_s", "epoch_time_s", "eval_images_per_s"}
# last.pt's keys (the run directory's file format; a classification task adds arch, model_kwargs, image_size)
CHECKPOINT_KEYS = {"task", "arch", "model_kwargs", "image_size", "method", "state_dict", "state_dict_format",
                   "conversion", "implicit_refocus", "state_dict_ema", "optimizer", "scheduler", "scaler", "epoch",
                   "step_in_epoch", "global_step", "meter", "meters", "history", "best", "rng", "config",
                   "config_hash", "format", "format_version"}  # the last two: save_checkpoint's
ENGINE = Path(__file__).resolve().parents[1] / "src" / "refconv" / "engine"


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks")
    data_dir = write_fashion_mnist(root / "data", n_train=64, n_test=16)
    return root, dict(model="timm/test_efficientnet", data_dir=str(data_dir), batch_size=16, lr=0.05,
                      warmup_epochs=0.5, progress="none", epochs=2)


def _same_history(a, b):
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in a] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in b]


def _same_weights(a, b):
    wa, wb = load_file(str(a.weights_path)), load_file(str(b.weights_path))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Recorder(Callback):
    def __init__(self, stop_at_step: int | None = None, stop_at_epoch: int | None = None) -> None:
        self.steps: list[tuple[int, int, int]] = []
        self.epochs: list[tuple[int, int, float]] = []
        self.stop_at_step, self.stop_at_epoch = stop_at_step, stop_at_epoch

    def on_step_end(self, event):
        assert isinstance(event.model, torch.nn.Module)
        self.steps.append((event.global_step, event.epoch, event.step_in_epoch))
        return event.global_step == self.stop_at_step

    def on_epoch_end(self, event):
        self.epochs.append((event.epoch, event.global_step, event.row["train_loss"]))
        return event.epoch == self.stop_at_epoch


@pytest.fixture(scope="module")
def reference(common):
    root, cfg = common
    rec = Recorder()
    result = run(RunConfig(out=str(root / "reference"), **cfg), callbacks=[rec])
    return result, rec


def test_a_callback_sees_every_step_and_epoch(reference):
    result, rec = reference
    assert rec.steps == [(g, (g - 1) // 4, (g - 1) % 4 + 1) for g in range(1, 9)]  # 4 steps x 2 epochs
    assert rec.epochs == [(r["epoch"], r["global_step"], r["train_loss"]) for r in result.history]


@pytest.mark.parametrize("where", ["step", "epoch"])
def test_a_callback_stops_the_run_and_resume_is_bit_identical(common, reference, where):
    root, cfg = common
    ref, _ = reference
    out = root / f"stopped-{where}"
    stopper = Recorder(stop_at_step=3) if where == "step" else Recorder(stop_at_epoch=1)
    with pytest.raises(RunInterrupted, match="--resume") as info:
        run(RunConfig(out=str(out), **cfg), callbacks=[stopper])
    ckpt = load_checkpoint(info.value.checkpoint)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == ((0, 3) if where == "step" else (1, 0))
    assert set(ckpt) == CHECKPOINT_KEYS  # TrainState.state_dict() is the format checkpoints always had
    rec = Recorder()
    resumed = run(RunConfig(out=str(out), **cfg), resume=True, callbacks=[rec])
    assert [s[0] for s in rec.steps] == list(range(4 if where == "step" else 5, 9))  # the remaining steps only
    _same_history(ref.history, resumed.history)
    assert resumed.final == ref.final and resumed.best == ref.best
    _same_weights(ref, resumed)


def test_a_raising_callback_aborts_the_run(common):
    root, cfg = common

    def crash(event):
        if event.global_step == 2:
            raise RuntimeError("watchdog")

    with pytest.raises(RuntimeError, match="watchdog"):
        run(RunConfig(out=str(root / "crashed"), **cfg), callbacks=[crash])  # a plain function: on_step_end
    assert not (root / "crashed" / "done.json").exists()


def test_stop_signals_stop_the_run_like_ctrl_c(common):
    """A launcher's preemption warning (here SIGUSR1) in ``stop_signals``: checkpoint at the step, handler put back."""
    root, cfg = common
    before = signal.getsignal(signal.SIGUSR1)

    def preempt(event):
        if event.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(RunInterrupted):
        run(RunConfig(out=str(root / "preempted"), **cfg), callbacks=[preempt],
            stop_signals=(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1))
    ckpt = load_checkpoint(root / "preempted" / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 2)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_installed_callbacks_are_scoped_to_the_block_and_the_thread():
    seen = []

    def a(event):
        seen.append("a")

    def b(event):
        seen.append("b")

    assert active().callbacks == ()
    with installed(a):
        with installed(b):
            assert [cb.fn for cb in active([a]).callbacks] == [a, b, a]  # enclosing, inner, then the run's own
            other: list = []
            t = threading.Thread(target=lambda: other.append(active().callbacks))
            t.start()
            t.join()
            assert other == [()]  # another thread does not see this block's callbacks
        assert [cb.fn for cb in active().callbacks] == [a]
    assert active().callbacks == ()
    with pytest.raises(RuntimeError), installed(a):
        raise RuntimeError
    assert active().callbacks == ()  # left on error too
    with pytest.raises(TypeError, match="callback"):
        active([42])


def test_installed_reaches_a_run_started_indirectly(common):
    from refconv.protocol.cells import run_cell

    root, cfg = common
    rec = Recorder(stop_at_step=2)
    with installed(rec), pytest.raises(RunInterrupted):
        run_cell(RunConfig(out=str(root / "indirect"), **cfg))
    assert [s[0] for s in rec.steps] == [1, 2]


# ---------------------------------------------------------------------------------------------- torch globals
def _odd_globals() -> None:
    """Settings a caller may hold that differ from what a deterministic run sets."""
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.backends.cudnn.benchmark = True


@pytest.mark.parametrize("ending", ["normal", "error", "interrupted"])
def test_a_run_puts_every_torch_global_back(common, ending, monkeypatch):
    root, cfg = common
    before_all = capture()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        _odd_globals()
        before = capture()
        seen = {}

        def probe(event):
            seen.update(capture())
            if ending == "error":
                raise RuntimeError("boom")
            return ending == "interrupted"

        out = str(root / f"globals-{ending}")
        if ending == "normal":
            run(RunConfig(out=out, **cfg), callbacks=[probe])
        else:
            with pytest.raises(RuntimeError if ending == "error" else RunInterrupted):
                run(RunConfig(out=out, **cfg), callbacks=[probe])
        assert seen["deterministic_algorithms"] and not seen["cudnn_benchmark"]  # the run did set them
        assert seen["env_CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert capture() == before
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    finally:
        from refconv.engine.torchstate import restore

        restore(before_all)


def test_run_globals_restores_what_code_inside_changed():
    before = capture()
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt), run_globals():
        torch.set_num_threads(threads + 1)
        torch.set_default_dtype(torch.float64)
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.deterministic = not torch.backends.cudnn.deterministic
        raise KeyboardInterrupt
    assert capture() == before


# ---------------------------------------------------------------------------------------------- task registry
def test_the_engine_imports_no_task_package():
    engine_modules = sorted(p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__")
    code = ("import sys, importlib\n"
            f"for m in {engine_modules!r}: importlib.import_module('refconv.engine.' + m)\n"
            "from refconv.engine import RunConfig, make_config\n"
            "make_config({}).validate()\n"
            "assert 'refconv.downstream' not in sys.modules, sorted(m for m in sys.modules if 'downstream' in m)\n"
            "from refconv.engine.task_registry import task_class\n"
            "assert task_class('detection').__module__ == 'refconv.downstream.tasks'\n")
    env = {**os.environ, "PYTHONPATH": str(ENGINE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for path in ENGINE.glob("*.py"):
        assert "downstream" not in "".join(_imported_names(path)), path


def test_registry_names_tasks_and_refuses_clashes():
    from refconv.engine.task_registry import register_task, task_class, task_names
    from refconv.engine.task import ClassificationTask

    assert task_names()[:3] == ("classification", "detection", "segmentation")
    assert task_class("classification") is ClassificationTask
    with pytest.raises(ConfigError, match="task must be one of classification, detection, segmentation.*'detection'"):
        task_class("detect")
    with pytest.raises(ValueError, match="already registered"):

        @register_task("classification")
        class Other(ClassificationTask):
            pass


def _imported_names(path: Path) -> list[str]:
    """The modules ``path`` imports at run time (imports under ``if TYPE_CHECKING:`` left out), as written."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base] if node.module else [base + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_no_import_cycle_among_engine_modules():
    modules = {p.stem for p in ENGINE.glob("*.py")} - {"__init__"}
    graph = {}
    for m in modules:
        deps = set()
        for name in _imported_names(ENGINE / f"{m}.py"):
            for prefix in (".", "refconv.engine."):
                if name.startswith(prefix) and not name.startswith(".."):
                    deps.add(name[len(prefix):].split(".")[0])
        graph[m] = deps & modules - {m}

    def reach(start, node, seen):
        for n in graph[node]:
            if n == start:
                return [node, n]
            if n not in seen:
                seen.add(n)
                path = reach(start, n, seen)
                if path:
                    return [node, *path]
        return None

    cycles = [reach(m, m, set()) for m in sorted(modules)]
    assert not any(cycles), [c for c in cycles if c]
