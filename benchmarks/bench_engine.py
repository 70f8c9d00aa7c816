"""Training throughput of Refocusing Learning (``refconv``) vs plain training (``continue``), side by side.

Both methods start from the same weights, on the same data, with the same recipe and budget, in one
process, alternating (continue, refconv, continue, refconv...) so machine load drifts hit both alike; the
median of the repeats is reported. Measured by the engine itself (``RunResult.history``): training
images/s (forward + backward + optimizer step, excluding evaluation and checkpointing), evaluation
images/s of the trained model as trained (RefConv layers unfolded, their ``Wt`` cached in eval mode) and
of the deployable weights (folded for ``refconv``; best of 3 passes), and parameter counts. ::

    python benchmarks/bench_engine.py                       # timm/mobilenetv3_small_100, Fashion-MNIST
    python benchmarks/bench_engine.py --model tv/mobilenet_v3_small --image-size 64 --repeats 3
    python benchmarks/bench_engine.py --synthetic           # no dataset installed: tiny IDX files made here

Prints a Markdown table (paste it into docs/engine.md with the command line).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from refconv.data import build_dataset
from refconv.engine import RunConfig, run
from refconv.engine.artifacts import load_model
from refconv.engine.export import save_weights
from refconv.engine.loop import evaluate
from refconv.engine.modeling import create_stock_model


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="timm/mobilenetv3_small_100")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset-train", type=int, default=1024, help="training images per epoch")
    p.add_argument("--subset-test", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="runs per method (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted (allocator, caches)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--synthetic", action="store_true", help="write a small Fashion-MNIST-format dataset and use it")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = args.data_dir
        if args.synthetic:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from _datagen import write_fashion_mnist

            data_dir = str(write_fashion_mnist(tmp_path / "data", n_train=args.subset_train, n_test=args.subset_test))
            args.data = "fashion-mnist"
        _, info = build_dataset(args.data, "test", data_dir=data_dir, image_size=args.image_size, subset=8)
        torch.manual_seed(0)
        stock = create_stock_model(args.model, num_classes=info.num_classes, in_chans=info.in_chans)
        start = save_weights(stock, tmp_path / "start.safetensors", {"model": args.model})
        common = dict(model=args.model, data=args.data, data_dir=data_dir, image_size=args.image_size,
                      batch_size=args.batch_size, subset_train=args.subset_train, subset_test=args.subset_test,
                      epochs=1, warmup_epochs=0, weights=str(start), device=args.device, amp=args.amp,
                      progress="none")
        results: dict[str, list] = {"continue": [], "refconv": []}
        for rep in range(args.warmup + args.repeats):
            for method in ("continue", "refconv"):
                res = run(RunConfig(method=method, out=str(tmp_path / f"{method}-{rep}"), **common))
                deploy = load_model(res.run_dir)  # the deployable weights: folded for refconv
                test_ds, _ = build_dataset(args.data, "test", data_dir=data_dir, image_size=args.image_size,
                                           in_chans=info.in_chans, subset=args.subset_test)
                device = torch.device(res.extra["device"])
                loader = DataLoader(test_ds, batch_size=args.batch_size)
                # best of 3 passes: the deployed models are the same architecture, differences are load noise
                ips = max(evaluate(deploy.model.to(device), loader, device=device)["images_per_s"] for _ in range(3))
                if rep >= args.warmup:
                    results[method].append((res, ips))
        rows = []
        for method, runs in results.items():
            res = runs[0][0]
            rows.append({
                "method": method,
                "train img/s": statistics.median(r.history[-1]["images_per_s"] for r, _ in runs),
                "eval img/s (as trained)": statistics.median(r.history[-1]["eval_images_per_s"] for r, _ in runs),
                "eval img/s (deployed)": statistics.median(e for _, e in runs),
                "trainable params": res.trainable_params,
                "total params": res.total_params,
                "deployed params": res.deploy_params,
            })
    cont, ref = rows
    print(f"\n`{args.model}` on {args.data} ({info.in_chans}x{args.image_size or info.image_size}x"
          f"{args.image_size or info.image_size}), batch {args.batch_size}, {args.subset_train} training images, "
          f"median of {args.repeats}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, device {args.device}, {time.strftime('%Y-%m-%d')}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:,.0f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
                                 for v in r.values()) + " |")
    ratio = ref["train img/s"] / cont["train img/s"]
    print(f"\nrefconv trains at {ratio:.2f}x the speed of continue; deployed refconv evaluates at "
          f"{ref['eval img/s (deployed)'] / cont['eval img/s (deployed)']:.2f}x (same architecture after folding).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
