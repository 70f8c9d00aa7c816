"""Explicit vs implicit RefConv: the same accuracy over seeds (issue 19), and how far their weights drift apart.

For every seed, one engine run per implementation from the shipped ``fmnist/mobilenetv3_small_100`` with the
same config (authors' default init, so both start at the same random ``Wt0``; RT's lr at ``--refocus-lr-mult``
of the recipe's, the setting that keeps a trained model; BN recalibrated before evaluation). Reports each run's
test top-1, the paired difference implicit - explicit with its 95 % t interval, and the global relative
difference of the final weights (explicit folded vs implicit). In exact arithmetic the two runs are the same
training; in fp32 they differ by rounding, which a chaotic run (default init, large steps) amplifies. ::

    python benchmarks/bench_implicit_seeds.py --data-dir /usr/share/datasets/fashion-mnist \
        --json benchmarks/results-implicit-seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from refconv.engine import RunConfig, run
from refconv.stats import paired_difference


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--subset-train", type=int, default=2048)
    p.add_argument("--subset-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--refocus-lr-mult", type=float, default=0.01)
    p.add_argument("--init", default="default", choices=("default", "zeros"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def _global_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    den = sum(float(a[k].double().square().sum()) for k in keys)
    return (num / den) ** 0.5


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    common = dict(model="timm/mobilenetv3_small_100", data="fashion-mnist", data_dir=args.data_dir, image_size=64,
                  in_chans=1, method="refconv", weights="fmnist/mobilenetv3_small_100", init=args.init,
                  batch_size=args.batch_size, subset_train=args.subset_train, subset_test=args.subset_test,
                  epochs=args.epochs, warmup_epochs=0, lr=args.lr, refocus_lr_mult=args.refocus_lr_mult,
                  bn_recalibrate_batches=4, progress="none", log_every_steps=0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            res = {impl: run(RunConfig(out=f"{tmp}/{impl}-{seed}", seed=seed, refocus_impl=impl, **common))
                   for impl in ("explicit", "implicit")}
            weights = {impl: load_file(str(r.weights_path)) for impl, r in res.items()}
            rows.append({"seed": seed, "explicit_top1": res["explicit"].final["top1"],
                         "implicit_top1": res["implicit"].final["top1"],
                         "weights_rel_diff": _global_rel(weights["explicit"], weights["implicit"])})
    diff = paired_difference([r["implicit_top1"] for r in rows], [r["explicit_top1"] for r in rows])
    out = {"command": " ".join(sys.argv), "config": {k: v for k, v in common.items() if k != "data_dir"},
           "rows": rows, "implicit_minus_explicit_top1": diff.to_dict(), "wall_s": time.perf_counter() - t0,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"\n`fmnist/mobilenetv3_small_100` at 64 px, {args.subset_train} training images x {args.epochs} epoch(s), "
          f"{args.subset_test} test images, lr {args.lr}, RT lr x{args.refocus_lr_mult}, init {args.init}, "
          f"{out['threads']} threads, {out['wall_s']:.0f} s\n")
    print("| seed | explicit top-1 % | implicit top-1 % | weights rel. diff |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['explicit_top1']:.2f} | {r['implicit_top1']:.2f} | {r['weights_rel_diff']:.2g} |")
    ci = "" if diff.ci_low is None else f", 95 % CI [{diff.ci_low:+.2f}, {diff.ci_high:+.2f}]"
    print(f"\nimplicit - explicit top-1: {diff.mean:+.3f} pt over {diff.n} seeds{ci}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
