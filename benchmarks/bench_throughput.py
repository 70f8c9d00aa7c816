"""Training throughput on CPU/GPU: the step's images/s and the engine's, plain vs RefConv, for each speed option.

Two measurements, each paired and interleaved in one process so that machine load hits every variant alike:

1. **The step**: forward + backward + optimizer step on a resident batch (the engine's optimizer, built by
   ``refconv.engine.optim.build_optimizer``): the ceiling the engine can reach. Variants: ``plain`` / ``refconv``
   (``refconv.convert``, authors' defaults) x options: ``nchw`` (today's eager default before this benchmark),
   ``nhwc`` (channels_last), ``nhwc+fused`` (and the fused optimizer: the engine's new defaults), ``+nondet``
   (``torch.use_deterministic_algorithms`` off), ``+compile`` (``torch.compile``; with ``--compile``, its
   compile time reported). A second copy of ``plain nchw`` runs as a control: its ratio to the first shows the
   noise floor (it should read 1.00 +- 0.02).
2. **The engine**: ``refconv.engine.run`` for one short and one longer run per method, with the old defaults
   (``--no-channels-last --input-pipeline loader --no-fused-optimizer``) and the new ones; images/s of each
   epoch from the run's own history, so the first epoch (start-up cost) and the steady state show apart.

Every ratio is the median over repeats of a per-repeat ratio (paired), with its min-max. ::

    taskset -c 0,1 python benchmarks/bench_throughput.py                    # Fashion-MNIST at 32 px, batch 128
    python benchmarks/bench_throughput.py --synthetic --repeats 3           # no dataset installed
    python benchmarks/bench_throughput.py --device cuda --amp bf16 --full-epoch   # GPU: a 60,000-image epoch

Prints Markdown (for benchmarks/RESULTS.md) and, with ``--json``, writes every raw timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
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
from refconv.engine.modeling import create_stock_model
from refconv.engine.optim import build_optimizer

from _common import interleaved_rounds, markdown_table  # benchmarks/ (the script's directory)

_table = functools.partial(markdown_table, big=10, digits=2)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="timm/mobilenetv3_small_100")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    p.add_argument("--repeats", type=int, default=7, help="rounds of the step benchmark / engine repeats")
    p.add_argument("--engine-repeats", type=int, default=3)
    p.add_argument("--short-steps", type=int, default=24, help="steps of the short engine run (one epoch)")
    p.add_argument("--long-epochs", type=int, default=2, help="epochs of the long engine run (of --long-steps)")
    p.add_argument("--long-steps", type=int, default=60)
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--full-epoch", action="store_true", help="engine: one full 60,000-image epoch per method")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir")
    p.add_argument("--synthetic", action="store_true", help="engine: write a Fashion-MNIST-format dataset here")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the step
class _StepVariant:
    """One model + optimizer + resident batch, timed ``steps`` at a time."""

    def __init__(self, name: str, method: str, opts: set[str], args: argparse.Namespace, device: torch.device,
                 start: dict[str, torch.Tensor]) -> None:
        self.name, self.opts = name, opts
        model = create_stock_model(args.model, num_classes=10, in_chans=args.in_chans)
        model.load_state_dict(start)
        if method == "refconv":
            refconv.convert(model)
        cl = "nhwc" in opts
        model.to(device)
        if cl:
            model.to(memory_format=torch.channels_last)
        cfg = RunConfig(method="continue" if method == "plain" else "refconv", weights="x", lr=0.01,
                        fused_optimizer="fused" in opts)
        self.optimizer = build_optimizer(model, cfg)
        self.model = model
        self.fn: nn.Module = torch.compile(model, dynamic=False) if "compile" in opts else model
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch_size, args.in_chans, args.image_size, args.image_size, generator=g)
        self.x = x.to(device).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        self.y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
        self.device = device
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
        self.batch = args.batch_size
        self.first_s = self._timed(1)  # compile, allocator, oneDNN primitive caches
        self.times: list[float] = []

    def _timed(self, steps: int) -> float:
        deterministic = "nondet" not in self.opts
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # what the engine does
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = nn.functional.cross_entropy(self.fn(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def round(self, steps: int) -> None:
        # One untimed step first: the other variants' steps evicted this model's oneDNN primitives and caches.
        self._timed(1)
        self.times.append(self.batch * steps / self._timed(steps))


def bench_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    start = create_stock_model(args.model, num_classes=10, in_chans=args.in_chans).state_dict()
    options = ["nchw", "nhwc", "nhwc+fused", "nhwc+fused+nondet"] + (["nchw+compile", "nhwc+fused+compile"]
                                                                     if args.compile else [])
    variants = [_StepVariant("plain nchw (control)", "plain", {"nchw"}, args, device, start)]
    for method in ("plain", "refconv"):
        for opt in options:
            variants.append(_StepVariant(f"{method} {opt}", method, set(opt.split("+")), args, device, start))
    interleaved_rounds(variants, repeats=args.repeats, steps=args.steps)
    base = next(v for v in variants if v.name == "plain nchw")
    rows = []
    for v in variants:
        ratios = [a / b for a, b in zip(v.times, base.times)]
        plain_twin = next(w for w in variants if w.name == v.name.replace("refconv", "plain"))
        rc = [a / b for a, b in zip(v.times, plain_twin.times)]
        rows.append({"variant": v.name, "img/s": statistics.median(v.times), "x plain nchw": statistics.median(ratios),
                     "range": (min(ratios), max(ratios)), "refconv/plain": statistics.median(rc) if "refconv" in v.name
                     else None, "first step s": v.first_s, "raw": v.times})
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------- the engine
OLD = dict(channels_last=False, input_pipeline="loader", fused_optimizer=False)
NEW: dict[str, Any] = {}


def bench_engine(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    data_dir = args.data_dir
    n_long = args.long_steps * args.batch_size
    if args.synthetic:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _datagen import write_fashion_mnist

        data_dir = str(write_fashion_mnist(tmp / "data", n_train=max(n_long, 60000 if args.full_epoch else 0),
                                           n_test=512))
    torch.manual_seed(0)
    stock = create_stock_model(args.model, num_classes=10, in_chans=args.in_chans)
    start = save_weights(stock, tmp / "start.safetensors", {"model": args.model})
    common = dict(model=args.model, data="fashion-mnist", data_dir=data_dir, image_size=args.image_size,
                  in_chans=args.in_chans, batch_size=args.batch_size, subset_test=512, warmup_epochs=0,
                  weights=str(start), device=args.device, amp=args.amp, progress="none", log_every_steps=0)
    runs = {"short": dict(epochs=1, subset_train=args.short_steps * args.batch_size),
            "long": dict(epochs=args.long_epochs, subset_train=n_long)}
    if args.full_epoch:
        runs = {"full": dict(epochs=1, subset_train=None)}
    results: dict[str, list[list[float]]] = {}
    k = 0
    for _ in range(args.engine_repeats):
        for length, spec in runs.items():
            for defaults_name, defaults in (("old", OLD), ("new", NEW)):
                for method in ("continue", "refconv"):
                    k += 1
                    res = run(RunConfig(method=method, out=str(tmp / f"run{k}"), **common, **spec, **defaults))
                    ips = [h["images_per_s"] for h in res.history]
                    results.setdefault(f"{length} {defaults_name} {method}", []).append(ips)
    rows = []
    for key, reps in results.items():
        length, defaults_name, method = key.split()
        epochs = len(reps[0])
        for e in range(epochs):
            ips = [r[e] for r in reps]
            old = [r[e] for r in results[f"{length} old {method}"]]
            cont = [r[e] for r in results[f"{length} {defaults_name} continue"]]
            rows.append({"run": length, "defaults": defaults_name, "method": method, "epoch": e + 1,
                         "img/s": statistics.median(ips),
                         "x old defaults": statistics.median(a / b for a, b in zip(ips, old)),
                         "refconv/continue": statistics.median(a / b for a, b in zip(ips, cont))
                         if method == "refconv" else None, "raw": ips})
    return {"rows": rows, "runs": runs}


# ---------------------------------------------------------------------------------------------- output
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: dict[str, Any] = {"args": vars(args) | {"json": str(args.json) if args.json else None},
                           "machine": {"processor": platform.processor() or platform.machine(),
                                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                                       "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None,
                                       "date": time.strftime("%Y-%m-%d %H:%M")}}
    print(f"`{args.model}`, {args.in_chans}x{args.image_size}x{args.image_size}, batch {args.batch_size}, device "
          f"{out['machine']['cuda'] or 'cpu'}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{out['machine']['date']}\n")
    if not args.skip_step:
        out["step"] = bench_step(args, device)
        print(f"**The step** (resident batch; median of {args.repeats} interleaved rounds of {args.steps} steps; ratios "
              "paired per round):\n")
        print(_table(out["step"]["rows"]) + "\n", flush=True)
    if not args.skip_engine:
        with tempfile.TemporaryDirectory() as tmp:
            out["engine"] = bench_engine(args, Path(tmp))
        print(f"**The engine** (`refconv.engine.run`, images/s per epoch from the run's history, median of "
              f"{args.engine_repeats}; old defaults = `{OLD}`):\n")
        print(_table(out["engine"]["rows"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
