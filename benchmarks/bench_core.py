"""Cost of RefConv layers: training step, eval forward, FLOPs and peak memory, as ratios to the plain model.

Variants, all from the same stock model:
  plain      the stock torchvision model
  refconv    refconv.convert(model) (our layer: eval caches Wt)
  authors    the authors' formulation (module swap, basis buffer, convmap recomputed every forward)
  folded     refconv.reparameterize(refconv model)

Timings are paired: each repeat runs every variant once, in rotating order, so drift on a noisy machine
hits all variants alike; we report medians and the median of per-repeat ratios to ``plain``.
Peak memory is the peak RSS of a fresh subprocess that builds the variant and runs the same steps.

Run:  python benchmarks/bench_core.py [--models mobilenet_v3_small resnet18] [--batch 32] [--size 224]
                                      [--repeats 7] [--threads 2] [--out benchmarks/RESULTS-core.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import refconv
from refconv._reference import authors_convert

VARIANTS = ("plain", "refconv", "authors", "folded")


def build(name: str, variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=1000)
    if variant == "refconv":
        refconv.convert(model)
    elif variant == "authors":
        authors_convert(model)
    elif variant == "folded":
        refconv.reparameterize(refconv.convert(model))
    return model


def train_step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def make_opt(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)


def flops(model, x) -> int:
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops()


def peak_rss_mb(name: str, variant: str, batch: int, size: int, mode: str, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process doing 2 steps of ``mode`` on ``variant``."""
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks');"
        "from bench_core import build, make_opt, train_step;"
        f"torch.set_num_threads({threads}); m = build('{name}', '{variant}');"
        f"x = torch.randn({batch}, 3, {size}, {size}); y = torch.randint(0, 1000, ({batch},));"
        + (
            "m.train(); o = make_opt(m);\nfor _ in range(2): train_step(m, o, x, y)\n"
            if mode == "train"
            else "m.eval();\nwith torch.no_grad():\n    for _ in range(2): m(x)\n"
        )
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across execve.
        + "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_model(name: str, batch: int, size: int, repeats: int, threads: int, memory: bool,
                args_eval_inner: int = 5) -> dict:
    torch.set_num_threads(threads)
    models = {v: build(name, v) for v in VARIANTS}
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    opts = {v: make_opt(m) for v, m in models.items()}
    res: dict = {"model": name, "params": {}, "trainable": {}, "flops": {}, "train_s": {}, "eval_s": {}}
    for v, m in models.items():
        res["params"][v] = sum(p.numel() for p in m.parameters())
        res["trainable"][v] = sum(p.numel() for p in m.parameters() if p.requires_grad)
        res["flops"][v] = flops(m, x[:1])
    train = {v: [] for v in VARIANTS}
    evalt = {v: [] for v in VARIANTS}
    for m in models.values():  # warm-up
        m.train()
        train_step(m, opts[[k for k, mm in models.items() if mm is m][0]], x, y)
    for r in range(repeats):
        order = VARIANTS[r % 4 :] + VARIANTS[: r % 4]
        for v in order:
            m = models[v]
            m.train()
            t = time.perf_counter()
            train_step(m, opts[v], x, y)
            train[v].append(time.perf_counter() - t)
        for v in order:
            m = models[v]
            m.eval()
            with torch.no_grad():
                m(x)  # first eval forward after training refreshes RefConv's cache: not timed
                ts = []
                for _ in range(args_eval_inner):
                    t = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - t)
                evalt[v].append(statistics.median(ts))
    for v in VARIANTS:
        res["train_s"][v] = statistics.median(train[v])
        res["eval_s"][v] = statistics.median(evalt[v])
    res["train_ratio"] = {v: statistics.median(a / b for a, b in zip(train[v], train["plain"])) for v in VARIANTS}
    res["eval_ratio"] = {v: statistics.median(a / b for a, b in zip(evalt[v], evalt["plain"])) for v in VARIANTS}
    if memory:
        res["peak_rss_train_mb"] = {v: peak_rss_mb(name, v, batch, size, "train", threads) for v in VARIANTS}
        res["peak_rss_eval_mb"] = {v: peak_rss_mb(name, v, batch, size, "eval", threads) for v in VARIANTS}
    return res


def to_markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"### Core benchmark: batch {args.batch}, {args.size}x{args.size}, CPU, {args.threads} threads, "
        f"{args.repeats} paired repeats",
        "",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}",
        "",
        "| model | variant | params | trainable | GFLOPs | train step s | train / plain | eval s | eval / plain |"
        + (" peak RSS train MiB | peak RSS eval MiB |" if args.memory else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.memory else ""),
    ]
    for r in results:
        for v in VARIANTS:
            row = (
                f"| {r['model']} | {v} | {r['params'][v] / 1e6:.2f}M | {r['trainable'][v] / 1e6:.2f}M | "
                f"{r['flops'][v] / 1e9:.3f} | {r['train_s'][v]:.3f} | {r['train_ratio'][v]:.3f} | "
                f"{r['eval_s'][v]:.4f} | {r['eval_ratio'][v]:.3f} |"
            )
            if args.memory:
                row += f" {r['peak_rss_train_mb'][v]:.0f} | {r['peak_rss_eval_mb'][v]:.0f} |"
            lines.append(row)
    lines.append("")
    lines.append("GFLOPs: forward of one image by torch.utils.flop_counter (the RefConv kernel transform included).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "resnet18"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--json", default=None, help="also write raw results here")
    p.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = p.parse_args(argv)
    results = [bench_model(m, args.batch, args.size, args.repeats, args.threads, args.memory) for m in args.models]
    md = to_markdown(results, args)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
