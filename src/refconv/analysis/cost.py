"""Cost side by side: parameters, FLOPs, peak memory and latency of baseline, training-time RefConv and folded.

Users of re-parameterised blocks keep reporting "doubled FLOPs" or inflated parameter counts: those are the
training-time numbers. This module measures every model the same way so the folded model can be shown to cost
what the baseline costs, and the training-time overhead is shown where it is paid. What is measured
(``docs/analysis.md`` repeats it):

- Parameters: unique parameters (``model.parameters()``), total and trainable (``requires_grad``; a RefConv
  layer's frozen basis is a parameter that does not train). Buffer elements are reported separately.
- Two regimes, each measured for every model:

  - ``"inference"``: one forward in eval mode under ``torch.no_grad()``. A training-time RefConv layer caches
    ``Wt`` in this regime (it is recomputed only when a weight changes), so after the warm-up call its
    inference cost is essentially the folded model's.
  - ``"train_step"``: forward and backward of ``output.float().sum()`` in train mode, on a deep copy (so the
    caller's BatchNorm statistics and gradients are untouched); the gradients are set back to ``None`` at
    the end of each call. Here a RefConv layer recomputes ``Wt = Wb + RT(Wb)`` and its gradient every
    step: this is where RefConv's extra cost is paid.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one call (after one warm-up call). Torch counts
  2 FLOPs per multiply-accumulate for matmul and convolution and ignores element-wise ops (BN, ReLU, adds),
  so ``macs = flops // 2``.
- Peak memory of one call, excluding what was live before it (parameters, the input): on CUDA
  ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the call (everything the
  caching allocator hands out, cuDNN workspaces included); on CPU the allocation and free events of
  ``torch.profiler`` (``profile_memory=True``) replayed to find the most bytes allocated and not yet freed.
  The CPU figure covers PyTorch's CPU allocator (activations, weight transforms, gradients, temporaries) and
  misses memory that third-party libraries allocate on their own (some oneDNN scratch space); frees of blocks
  allocated before the call are invisible to the profiler (it warns about them) and not subtracted.
- Latency: median and quartiles of the wall-clock time of one call, after warm-up. Models are measured
  interleaved (round-robin, rotating the order every round) so a slowdown of a shared machine hits them all
  alike; CUDA is synchronised around each call. Thread count and device are whatever the caller set.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from refconv.analysis._common import check_int, device_of, fold_for_analysis, has_refconv_layers, takes_options_of
from refconv.errors import ConfigError

__all__ = [
    "REGIMES",
    "count_parameters",
    "count_flops",
    "peak_memory",
    "measure_latency",
    "cost_report",
    "compare_cost",
]

#: Measurement regimes: eval-mode no-grad forward, and train-mode forward + backward.
REGIMES: tuple[str, ...] = ("inference", "train_step")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameter elements (total and trainable) and buffer elements.

    Returns:
        ``{"total": int, "trainable": int, "buffer_elements": int}``.
    """
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "buffer_elements": sum(b.numel() for b in model.buffers()),
    }


def _first_tensor(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    raise ConfigError(f"cannot take a loss of a model output of type {type(out).__name__}")


def _check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise ConfigError(f"regime={regime!r} is invalid: expected one of {list(REGIMES)}")


@contextmanager
def _step(model: nn.Module, example_input: Tensor, regime: str) -> Iterator[Callable[[], None]]:
    """Yield a zero-argument callable running one call of ``regime``; restores the model afterwards."""
    _check_regime(regime)
    x = example_input.to(device_of(model))
    if regime == "inference":
        was_training = model.training
        model.eval()

        def run() -> None:
            with torch.no_grad():
                model(x)

        try:
            yield run
        finally:
            model.train(was_training)
        return
    work = copy.deepcopy(model).train()

    def run_train() -> None:
        with torch.enable_grad():
            _first_tensor(work(x)).float().sum().backward()
        # Freed inside the call, so each call starts from the same state and its peak includes the gradients.
        work.zero_grad(set_to_none=True)

    try:
        yield run_train
    finally:
        work = None  # release the copy  # noqa: F841


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: nn.Module, example_input: Tensor, *, regime: str = "inference") -> int:
    """FLOPs of one call in ``regime`` as counted by ``FlopCounterMode`` (after one warm-up call).

    Args:
        model: The model.
        example_input: Input batch; the count scales with its batch size.
        regime: ``"inference"`` or ``"train_step"`` (see the module docstring).

    Returns:
        Total FLOPs (2 per multiply-accumulate).
    """
    with _step(model, example_input, regime) as run:
        run()
        with FlopCounterMode(display=False) as counter:
            run()
    return int(counter.get_total_flops())


def peak_memory(model: nn.Module, example_input: Tensor, *, regime: str = "inference") -> dict:
    """Peak bytes allocated during one call in ``regime`` beyond what was live before it.

    Args:
        model: The model (on CPU or CUDA).
        example_input: Input batch.
        regime: ``"inference"`` or ``"train_step"``.

    Returns:
        ``{"bytes": int | None, "method": str}``; ``method`` says what the number covers.
    """
    device = device_of(model)
    with _step(model, example_input, regime) as run:
        run()
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
            run()
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) - start
            return {"bytes": int(peak), "method": "cuda: max_memory_allocated minus memory_allocated before the call"}
        if device.type != "cpu":
            return {"bytes": None, "method": f"not measured on device type {device.type!r}"}
        return {
            "bytes": _cpu_peak_bytes(run),
            "method": "cpu: torch.profiler allocation events (PyTorch CPU allocator only)",
        }


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send the process's C-level stderr to /dev/null for the block.

    The profiler's native library (kineto) logs ``USDT ... profiler_start`` and, on a machine without a GPU,
    ``ERROR ... gpuGetDeviceCount failed with code 35`` straight to file descriptor 2, whatever Python's
    ``sys.stderr`` is and whatever ``KINETO_LOG_LEVEL`` says: noise in the user's terminal about nothing
    they asked for. Python-level errors still propagate as exceptions.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415 - only needed here

    # The chrome trace is the public view of the allocator events (one "[memory]" event per alloc or free).
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        with _native_stderr_silenced():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                run()
            prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    mem = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    mem.sort(key=lambda e: (e.get("ts", 0), e.get("args", {}).get("Ev Idx", 0)))
    live = peak = 0
    for e in mem:
        live += int(e["args"].get("Bytes", 0))
        peak = max(peak, live)
    return peak


def measure_latency(
    models: Mapping[str, nn.Module],
    example_input: Tensor,
    *,
    regime: str = "inference",
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, dict]:
    """Interleaved latency of one call in ``regime`` for several models on the same input.

    Args:
        models: Name -> model; each runs on its own device.
        example_input: Input batch (moved to each model's device once, before timing).
        regime: ``"inference"`` or ``"train_step"``.
        warmup: Untimed rounds first, in ``[0, 1000]``.
        repeats: Timed rounds, in ``[1, 100000]``.

    Returns:
        Name -> ``{"median_ms", "p25_ms", "p75_ms", "repeats"}``.
    """
    _check_regime(regime)
    check_int("warmup", warmup, 0, 1000)
    check_int("repeats", repeats, 1, 100_000)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    steps = {}
    devices = {n: device_of(models[n]) for n in names}
    contexts = [_step(models[n], example_input, regime) for n in names]
    try:
        for n, ctx in zip(names, contexts):
            steps[n] = ctx.__enter__()
        for r in range(warmup + repeats):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                _sync(devices[n])
                t0 = time.perf_counter()
                steps[n]()
                _sync(devices[n])
                if r >= warmup:
                    times[n].append((time.perf_counter() - t0) * 1e3)
    finally:
        for n, ctx in zip(names, contexts):
            if n in steps:
                ctx.__exit__(None, None, None)
    out = {}
    for n, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
        out[n] = {"median_ms": statistics.median(ts), "p25_ms": q[0], "p75_ms": q[2], "repeats": len(ts)}
    return out


def cost_report(
    models: Mapping[str, nn.Module],
    example_input: Tensor,
    *,
    regimes: Sequence[str] = REGIMES,
    latency: bool = True,
    memory: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> dict:
    """Parameters, and per regime FLOPs, peak memory and latency of several models, measured identically.

    Args:
        models: Name -> model.
        example_input: Input batch used for every model.
        regimes: Any of :data:`REGIMES`.
        latency: Measure latency (interleaved, see :func:`measure_latency`).
        memory: Measure peak memory (see :func:`peak_memory`).
        warmup: Latency warm-up rounds.
        repeats: Latency timed rounds.

    Returns:
        ``{"models": {name: {"params": {...}, "device": str, <regime>: {"flops", "macs", "peak_memory",
        "latency"}}}, "input_shape": [...], "regimes": [...]}``.
    """
    if not regimes:
        raise ConfigError(f"regimes is empty: expected a non-empty subset of {list(REGIMES)}")
    for r in regimes:
        _check_regime(r)
    out: dict = {"models": {}, "input_shape": list(example_input.shape), "regimes": list(regimes)}
    for name, m in models.items():
        entry: dict = {"params": count_parameters(m), "device": str(device_of(m))}
        for regime in regimes:
            flops = count_flops(m, example_input, regime=regime)
            entry[regime] = {
                "flops": flops,
                "macs": flops // 2,
                "peak_memory": peak_memory(m, example_input, regime=regime) if memory else None,
                "latency": None,
            }
        out["models"][name] = entry
    if latency:
        for regime in regimes:
            lat = measure_latency(models, example_input, regime=regime, warmup=warmup, repeats=repeats)
            for name, value in lat.items():
                out["models"][name][regime]["latency"] = value
    return out


@takes_options_of(cost_report)
def compare_cost(baseline: nn.Module, refconv_model: nn.Module, example_input: Tensor, **options: object) -> dict:
    """Cost of the baseline, the training-time RefConv model and its folded form, side by side.

    If ``refconv_model`` is already folded there is no training-time entry, and ``"training_time_model"``
    says so. A baseline holding RefConv layers is folded first. The options are those of :func:`cost_report`.

    Returns:
        :func:`cost_report` output with models ``"baseline"``, ``"refconv_train"`` (when available) and
        ``"refconv_folded"``, plus ``"folded_equals_baseline"``: whether parameter counts and the FLOPs of
        every regime match.
    """
    models: dict[str, nn.Module] = {"baseline": fold_for_analysis(baseline)[0]}
    if has_refconv_layers(refconv_model):
        models["refconv_train"] = refconv_model
    models["refconv_folded"] = fold_for_analysis(refconv_model)[0]
    report = cost_report(models, example_input, **options)
    b, f = report["models"]["baseline"], report["models"]["refconv_folded"]
    report["folded_equals_baseline"] = b["params"]["total"] == f["params"]["total"] and all(
        b[r]["flops"] == f[r]["flops"] for r in options["regimes"]  # type: ignore[attr-defined]
    )
    report["training_time_model"] = "refconv_train" in models
    return report
