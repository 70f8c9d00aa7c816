"""``refconv eval``: test-set loss, top-1 and top-5 of a run, a checkpoint, a weights file or a pretrained model.

The model is rebuilt from what the artefact records (run config, checkpoint, or the ``.json`` beside a
``.safetensors``); data settings default to the run's. Foreign weights need ``--model``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import add_model_data_options

__all__ = ["register", "main"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run directory, checkpoint or weights file", description=__doc__)
    p.add_argument("--weights", required=True, metavar="PATH",
                   help="run directory, checkpoints/*.pt, folded.safetensors / model.safetensors, a foreign file, or "
                   "a pretrained model (fmnist/mobilenetv3_small_100; `refconv pretrained` lists them)")
    p.add_argument("--checkpoint", choices=("last", "best"), default=None,
                   help="for a run directory: evaluate this training checkpoint instead of the deployable weights")
    add_model_data_options(p, model_help="architecture (needed for weights that do not record it)",
                           data_help="dataset (default: the run's, else fashion-mnist)")
    p.add_argument("--subset-test", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-ema", action="store_true", help="evaluate a checkpoint's raw weights, not its EMA")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..engine.artifacts import load_model
    from ..engine.loop import evaluate
    from ..models import pretrained
    from ..protocol.evaldata import artefact_test_loader

    if pretrained.is_pretrained_name(args.weights):  # a registry name: what is asked for must fit its card
        pretrained.check_compatible(args.weights, model=args.model, data=args.data, image_size=args.image_size,
                                    in_chans=args.in_chans, num_classes=args.num_classes, native_defaults=False)
    loaded = load_model(args.weights, which=args.checkpoint, model_name=args.model, num_classes=args.num_classes,
                        in_chans=args.in_chans, use_ema=not args.no_ema)
    loader = artefact_test_loader(loaded, data=args.data, data_dir=args.data_dir, image_size=args.image_size,
                                  subset=args.subset_test, batch_size=args.batch_size, workers=args.workers)
    info = loader.info
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = loaded.model.to(device)
    metrics = evaluate(model, loader, device=device)
    record = {"weights": str(loaded.source), "model": loaded.arch, "format": loaded.format, "data": info.name,
              **{k: metrics[k] for k in ("loss", "top1", "top5", "correct1", "images", "images_per_s")}}
    if args.json:
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        print(f"{loaded.source} ({loaded.arch}, {loaded.format}) on {info.name} test ({metrics['images']} images): "
              f"loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
              f"({metrics['images_per_s']:.0f} img/s)")
    return 0
