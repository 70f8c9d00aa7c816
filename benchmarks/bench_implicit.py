"""Implicit vs explicit RefConv vs plain training: step and engine throughput, peak memory (CPU).

Issue 19's figures: implicit RefConv / plain in the engine >= 0.97 at 32 and 64 px (MobileNetV3-Small, batch 128,
CPU, paired in one run), peak memory within 5 % of plain. Three measurements, all from the shipped
``fmnist/mobilenetv3_small_100`` (1 channel, 10 classes):

1. **The step** (resident batch, the engine's optimizer from ``build_optimizer`` and the engine's refocusing from
   ``setup_refocusing``): ``plain (control)``, ``plain``, ``implicit`` (``--refocus-impl implicit``: stock model,
   ``g @ M`` before every step), ``explicit`` (RT layers), each with the engine's defaults (channels_last, fused
   SGD, deterministic algorithms). Interleaved rounds; every ratio is the median of per-round ratios (paired).
   ``plain (control) / plain`` is the noise check: it should read 1.00.
2. **The engine** (``refconv.engine.run``: data, step, evaluation): one short epoch per method (``continue`` twice,
   the second a control, ``refconv`` implicit, ``refconv`` explicit) interleaved over repeats; images/s of the
   training epoch from the run's own history.
3. **Peak memory**: peak RSS (``VmHWM``) of a fresh subprocess per variant that builds the model and runs a
   few engine steps; the baseline RSS of the process before the model exists is reported beside it.

::

    python benchmarks/bench_implicit.py --data-dir /usr/share/datasets/fashion-mnist \
        --json benchmarks/results-implicit.json

Prints Markdown for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.utils.deterministic
from torch import nn

import refconv
from refconv.engine import RunConfig, run
from refconv.engine.export import save_weights
from refconv.engine.optim import build_optimizer
from refconv.engine.refocusing import setup_refocusing

from _common import interleaved_rounds, markdown_table  # benchmarks/ (the script's directory)

_table = functools.partial(markdown_table, big=100, digits=3)

START = "fmnist/mobilenetv3_small_100"
VARIANTS = ("plain", "implicit", "explicit")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    p.add_argument("--repeats", type=int, default=5, help="rounds of the step benchmark")
    p.add_argument("--engine-repeats", type=int, default=3)
    p.add_argument("--engine-steps", type=int, default=16, help="steps of each engine run (one epoch)")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--transform-only", action="store_true",
                   help="time only implicit refocusing's gradient transform per step, beside a plain step")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--data-dir")
    p.add_argument("--json", type=Path)
    # internal: one memory probe
    p.add_argument("--_probe", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _config(variant: str, **kw: Any) -> RunConfig:
    if variant == "plain":
        return RunConfig(method="continue", weights="x", lr=0.01, **kw)
    return RunConfig(method="refconv", weights="x", lr=0.01, refocus_impl=variant, **kw)


def _model(variant: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The engine's model and optimizer for one variant (channels_last, fused SGD: the engine's defaults)."""
    from refconv.models.pretrained import load

    model = load(START).train()
    cfg = _config(variant)
    if variant != "plain":
        refconv.convert(model)  # authors' defaults: default init, authors' groups
    refocusing = setup_refocusing(model, cfg, None)  # implicit: folds back to the stock model
    model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, refocusing)
    if refocusing is not None:
        refocusing.attach(optimizer)
    return model, optimizer


class _Step:
    def __init__(self, name: str, variant: str, size: int, batch: int) -> None:
        self.name = name
        self.model, self.optimizer = _model(variant)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,), generator=g)
        self.batch = batch
        self.times: list[float] = []
        self._timed(1)

    def _timed(self, steps: int) -> float:
        torch.use_deterministic_algorithms(True, warn_only=True)  # the engine's default
        torch.utils.deterministic.fill_uninitialized_memory = False
        t = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - t

    def round(self, steps: int) -> None:
        self._timed(1)  # the other variants evicted this one's caches
        self.times.append(self.batch * steps / self._timed(steps))


def bench_step(args: argparse.Namespace, size: int) -> list[dict[str, Any]]:
    variants = [_Step("plain (control)", "plain", size, args.batch_size)]
    variants += [_Step(v, v, size, args.batch_size) for v in VARIANTS]
    interleaved_rounds(variants, repeats=args.repeats, steps=args.steps)
    plain = next(v for v in variants if v.name == "plain")
    rows = []
    for v in variants:
        ratios = [a / b for a, b in zip(v.times, plain.times)]
        rows.append({"size": size, "variant": v.name, "img/s": statistics.median(v.times),
                     "/ plain": statistics.median(ratios), "range": (min(ratios), max(ratios)), "raw": v.times})
    return rows


def bench_engine(args: argparse.Namespace, size: int, tmp: Path, start: Path) -> list[dict[str, Any]]:
    common = dict(model="timm/mobilenetv3_small_100", data="fashion-mnist", data_dir=args.data_dir, image_size=size,
                  in_chans=1, batch_size=args.batch_size, subset_train=args.engine_steps * args.batch_size,
                  subset_test=512, epochs=1, warmup_epochs=0, weights=str(start), progress="none",
                  log_every_steps=0, lr=0.01)
    results: dict[str, list[float]] = {v: [] for v in ("plain (control)", *VARIANTS)}
    k = 0
    for _ in range(args.engine_repeats):
        for v in results:
            k += 1
            extra = {"method": "continue"} if v.startswith("plain") else {"method": "refconv", "refocus_impl": v}
            res = run(RunConfig(out=str(tmp / f"run{size}-{k}"), **common, **extra))
            results[v].append(res.history[-1]["images_per_s"])
    rows = []
    for v, ips in results.items():
        ratios = [a / b for a, b in zip(ips, results["plain"])]
        rows.append({"size": size, "method": v, "img/s": statistics.median(ips), "/ plain": statistics.median(ratios),
                     "range": (min(ratios), max(ratios)), "raw": ips})
    return rows


def _vm(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of this process in MiB. Not ``getrusage``: its ``ru_maxrss`` carries the
    parent's peak into a forked child, so every probe would read the benchmark process's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(variant: str, size: int, steps: int, batch: int) -> dict[str, float]:
    """One fresh process: peak RSS before the model exists, and after ``steps`` steps of ``variant``."""
    before = _vm("VmHWM")
    step = _Step(variant, variant, size, batch)
    step._timed(steps)
    return {"before_mib": before, "peak_mib": _vm("VmHWM")}


def bench_memory(args: argparse.Namespace, size: int) -> list[dict[str, Any]]:
    rows, peaks = [], {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--_probe", v, str(size), "--memory-steps", str(args.memory_steps),
               "--batch-size", str(args.batch_size)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        peaks[v] = json.loads(out)
    for v, m in peaks.items():
        rows.append({"size": size, "variant": v, "peak RSS MiB": m["peak_mib"], "/ plain": m["peak_mib"] /
                     peaks["plain"]["peak_mib"], "above start MiB": m["peak_mib"] - m["before_mib"]})
    return rows


def bench_transform(args: argparse.Namespace, size: int, rounds: int = 5, calls: int = 50) -> dict[str, Any]:
    """What implicit refocusing adds to a step, timed alone (no other variant competes for the caches): one call
    of ``transform_grads_`` (every refocused layer's ``g @ M + wd * (Wt - Wb)``), beside one plain step."""
    from refconv.models.pretrained import load

    plain = _Step("plain", "plain", size, args.batch_size)
    model = load(START).train()
    refconv.convert(model)
    imp = setup_refocusing(model, _config("implicit"), None)
    model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    nn.functional.cross_entropy(model(x), torch.zeros(args.batch_size, dtype=torch.long)).backward()
    imp.transform_grads_()
    ms, step_ms = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            imp.transform_grads_()
        ms.append((time.perf_counter() - t) / calls * 1e3)
        step_ms.append(plain._timed(1) * 1e3)
    t_ms, s_ms = statistics.median(ms), statistics.median(step_ms)
    return {"size": size, "transform ms": t_ms, "plain step ms": s_ms, "share of a plain step": t_ms / s_ms,
            "layers with M stored": sum(layer.precond.matrices is not None for layer in imp.layers),
            "layers factored (g P^T) P": sum(layer.precond.matrices is None for layer in imp.layers)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        print(json.dumps(probe(args._probe[0], int(args._probe[1]), args.memory_steps, args.batch_size)))
        return 0
    if args.transform_only:
        rows = [bench_transform(args, size) for size in args.sizes]
        print(f"\nimplicit refocusing's gradient transform alone, {START}, batch {args.batch_size}, CPU, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")
        print(_table(rows))
        if args.json:
            args.json.write_text(json.dumps({"command": " ".join(sys.argv), "transform": rows}, indent=2) + "\n")
        return 0
    out: dict[str, Any] = {"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "machine": platform.machine(),
                           "date": time.strftime("%Y-%m-%d %H:%M"), "step": [], "engine": [], "memory": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        from refconv.models.pretrained import load

        start = save_weights(load(START), Path(tmp) / "start.safetensors", {"model": "timm/mobilenetv3_small_100"})
        for size in args.sizes:
            if not args.skip_step:
                out["step"] += bench_step(args, size)
            if not args.skip_engine:
                out["engine"] += bench_engine(args, size, Path(tmp), start)
            if not args.skip_memory:
                out["memory"] += bench_memory(args, size)
    out["wall_s"] = time.perf_counter() - t0
    print(f"\n`{START}` (timm/mobilenetv3_small_100, 1 channel), batch {args.batch_size}, CPU, "
          f"{out['threads']} threads, torch {out['torch']}, {out['date']}, {out['wall_s']:.0f} s\n")
    if out["step"]:
        print(f"**The step** (median of {args.repeats} interleaved rounds of {args.steps} steps; ratios paired per "
              "round):\n")
        print(_table(out["step"]))
    if out["engine"]:
        print(f"\n**The engine** (one epoch of {args.engine_steps} steps + evaluation per run, median of "
              f"{args.engine_repeats} interleaved repeats; images/s of the training epoch):\n")
        print(_table(out["engine"]))
    if out["memory"]:
        print(f"\n**Peak memory** (peak RSS, VmHWM, of a fresh process: build + {args.memory_steps} steps):\n")
        print(_table(out["memory"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
