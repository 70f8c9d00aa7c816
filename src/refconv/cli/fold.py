"""``refconv fold``: turn a RefConv training checkpoint into deployable weights of the stock model.

Writes ``folded.safetensors`` (+ ``folded.json`` naming model, classes and channels) that load with
``strict=True`` into the stock timm / torchvision model, checks the folded model's outputs against the
RefConv model's and prints the max abs error; ``--onnx`` also exports and checks an ONNX file; ``--hub-dir DIR``
also writes the folded model as a folder stock timm loads (``config.json``, ``model.safetensors``, ``README.md``:
``timm.create_model("local-dir:DIR", pretrained=True)``, or ``hf-hub:`` once uploaded).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "main"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fold", help="fold a RefConv run or checkpoint into plain deployable weights",
                       description=__doc__)
    p.add_argument("source", metavar="RUN_DIR|CKPT", help="a refconv run directory or its checkpoints/*.pt")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which checkpoint of a run directory [last]")
    p.add_argument("--out", metavar="PATH", help="output .safetensors [RUN_DIR/folded.safetensors]")
    p.add_argument("--onnx", action="store_true", help="also export <out>.onnx and check it with onnxruntime")
    p.add_argument("--hub-dir", metavar="DIR",
                   help="also write a folder stock timm loads: timm.create_model('local-dir:DIR', pretrained=True)")
    p.add_argument("--verify-batch", type=int, default=8, help="images in the output-equality check [8]")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..engine.artifacts import fold_checkpoint

    res = fold_checkpoint(args.source, which=args.checkpoint, out=args.out, onnx=args.onnx, batch=args.verify_batch,
                          hub_dir=args.hub_dir)
    if args.json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        return 0
    print(f"folded {res.layers} RefConv layers of {res.source}\n"
          f"  -> {res.weights_path} (loads strict=True into the stock model)\n"
          f"  params: {res.train_params:,} while training -> {res.deploy_params:,} deployed\n"
          f"  max |folded - refconv| on {args.verify_batch} inputs: {res.max_abs_err:.3g}")
    if res.onnx:
        print(f"  ONNX -> {res.onnx['path']} (onnxruntime max abs err {res.onnx['max_abs_err']:.3g})")
    if res.hub_dir:
        print(f"  hub folder -> {res.hub_dir} (timm.create_model('local-dir:{res.hub_dir}', pretrained=True))")
    return 0
