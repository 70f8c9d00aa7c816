"""``refconv detect`` and ``refconv segment``: thin argparse front-ends over :func:`run_downstream`.

Every :class:`~refconv.downstream.train.DownstreamConfig` field is a flag (``batch_size`` -> ``--batch-size``),
so the CLI cannot lag behind the Python API. Examples::

    refconv detect --method baseline --epochs 5 --out runs/det-base                  # synthetic VOC data
    refconv detect --method refconv --weights runs/det-base/checkpoints/last.pt --out runs/det-ref
    refconv segment --arch lraspp_mobilenet_v3_large --data voc --data-dir VOCdevkit/VOC2012 \\
        --weights-backbone IMAGENET1K_V1 --method refconv --out runs/seg-ref
    refconv segment --data cityscapes --data-dir /data/cityscapes --arch deeplabv3_resnet50 ...
    refconv detect --epochs 0 --weights runs/det-ref/checkpoints/last.pt --out runs/det-fold  # fold + export only

Hook into the ``refconv`` console script with :func:`register` (adds both), or :func:`add_detect_parser` /
:func:`add_segment_parser` separately; each sets ``func`` to :func:`main_detect` / :func:`main_segment`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from .backbones import describe as describe_backbone
from .models import SCOPES, list_archs
from .train import DATASETS, METHODS, DownstreamConfig

__all__ = ["add_detect_parser", "add_segment_parser", "config_from_args", "main_detect", "main_segment", "register"]

HELP: dict[str, str] = {
    "arch": "torchvision architecture",
    "data": "synthetic (Fashion-MNIST scenes, VOC format, generated offline) | synthetic-cityscapes | voc | cityscapes",
    "data_dir": "dataset root (VOC: the VOC20xx directory); for synthetic data: where to write it [cache]",
    "fashion_mnist_dir": "where Fashion-MNIST's IDX files are, for synthetic data [the usual places]",
    "train_split": "training split (VOC ImageSets file name / Cityscapes split)",
    "val_split": "validation split",
    "classes": "VOC object class names, comma-separated [classes.txt in the root, else VOC's 20]",
    "clip_boxes": "clip out-of-image VOC boxes instead of refusing the dataset",
    "synthetic_train": "synthetic data: training images",
    "synthetic_val": "synthetic data: validation images",
    "synthetic_size": "synthetic data: canvas height in px (Cityscapes format: width = 2x)",
    "synthetic_seed": "synthetic data: generator seed",
    "image_size": "network input height (width = height; 2x for Cityscapes) [synthetic canvas / arch default]",
    "method": "baseline | refconv | continue | finetune",
    "scope": "refconv: convert the pretrained backbone or all eligible convs",
    "map_k": "refconv: RT's kernel size (odd)",
    "groups": "refconv: RT's groups G for every layer [authors' Cin*Cout/g^2]",
    "max_group_size": "refconv: cap kernels per RT group (bounds the quadratic cost of wide depthwise layers)",
    "init": "refconv: RT init, default (authors) or zeros (starts exactly at the given weights)",
    "include": "refconv: convert modules matching this glob instead of the scope's (repeatable)",
    "exclude": "refconv: leave modules matching this glob plain (repeatable)",
    "weights": "whole-model starting weights: torchvision name (COCO_V1...) or file (a run's checkpoint, .pth, "
               ".safetensors)",
    "weights_backbone": "backbone weights: torchvision name (IMAGENET1K_V1) or a classifier file / run dir; the *_timm "
                        "archs take a pretrained registry name (fmnist/mobilenetv3_small_100) or file "
                        "(alias --backbone-weights)",
    "epochs": "training epochs (0: evaluate, fold and export the starting weights)",
    "batch_size": "batch size",
    "lr": "learning rate (SGD)",
    "finetune_lr_mult": "finetune: lr multiplier",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (not on biases / norm parameters)",
    "warmup_epochs": "linear warm-up epochs, then cosine to 0",
    "aux_weight": "weight of the auxiliary head's loss (DeepLabV3 / FCN with --weights having one)",
    "max_steps": "stop every epoch after this many steps (smoke tests)",
    "eval_images": "evaluate on the first N validation images only",
    "workers": "data loader worker processes",
    "seed": "seed of everything",
    "device": "cpu | cuda | auto",
    "onnx": "export model.onnx with an onnxruntime parity check",
    "out": "run directory",
}
_CHOICES: dict[str, tuple[str, ...]] = {"data": DATASETS, "method": METHODS, "scope": SCOPES,
                                        "init": ("default", "zeros"), "device": ("cpu", "cuda", "auto")}
_OPTIONAL_INT = {"groups", "max_group_size", "image_size", "max_steps", "eval_images"}
_OPTIONAL_STR = {"data_dir", "fashion_mnist_dir", "weights", "weights_backbone"}


def _add_flags(p: argparse.ArgumentParser, task: str) -> None:
    defaults = DownstreamConfig()
    for f in dataclasses.fields(DownstreamConfig):
        name = f.name
        if name == "task" or (name == "aux_weight" and task == "detection"):
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        help_ = HELP.get(name, "")
        if name == "arch":
            archs = list_archs(task)
            default = archs[0]
            p.add_argument(flag, default=default, help=f"{help_}: {', '.join(archs)} [{default}]")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"{help_} [{default}]")
        elif name in ("include", "exclude"):
            p.add_argument(flag, action="append", default=[], metavar="GLOB", help=help_)
        elif name == "classes":
            p.add_argument(flag, default=None, metavar="A,B,...", help=help_)
        elif name in _OPTIONAL_INT:
            p.add_argument(flag, type=int, default=None, help=help_)
        elif name == "weights_backbone":
            p.add_argument(flag, "--backbone-weights", dest=name, default=None, help=help_)
        elif name in _OPTIONAL_STR:
            p.add_argument(flag, default=None, help=help_)
        else:
            kind = type(default)
            p.add_argument(flag, type=kind, default=default, choices=_CHOICES.get(name),
                           help=f"{help_} [{default}]")
    if task == "detection":
        p.set_defaults(data="synthetic")
    p.set_defaults(out=f"runs/{'detect' if task == 'detection' else 'segment'}")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_detect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``detect`` to a ``refconv`` subparsers object; sets ``func=main_detect``."""
    p = subparsers.add_parser(
        "detect", help="train / fold / export an SSD detector with a RefConv backbone",
        description="Object detection (torchvision SSD / SSDlite) with RefConv: baseline, refconv, continue or "
                    "finetune on Pascal VOC or the offline synthetic VOC-format dataset, then fold and export.",
    )
    _add_flags(p, "detection")
    p.set_defaults(func=main_detect)
    return p


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``segment`` to a ``refconv`` subparsers object; sets ``func=main_segment``."""
    p = subparsers.add_parser(
        "segment", help="train / fold / export a segmenter (DeepLabV3, LR-ASPP, FCN) with a RefConv backbone",
        description="Semantic segmentation with RefConv on Pascal VOC, Cityscapes or the offline synthetic "
                    "datasets (VOC or Cityscapes format), then fold and export.",
    )
    _add_flags(p, "segmentation")
    p.set_defaults(func=main_segment)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add both ``detect`` and ``segment``."""
    add_detect_parser(subparsers)
    add_segment_parser(subparsers)


def config_from_args(args: argparse.Namespace, task: str) -> DownstreamConfig:
    """The :class:`DownstreamConfig` the parsed flags describe."""
    values: dict[str, Any] = {"task": task}
    for f in dataclasses.fields(DownstreamConfig):
        if f.name != "task" and hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    if isinstance(values.get("classes"), str):
        values["classes"] = [c.strip() for c in values["classes"].split(",") if c.strip()]
    return DownstreamConfig(**values)


def _main(args: argparse.Namespace, task: str) -> int:
    from .train import run_downstream

    cfg = config_from_args(args, task)
    quiet = getattr(args, "json", False)
    res = run_downstream(cfg, resume=args.resume, overwrite=args.overwrite,
                         log=(lambda s: None) if quiet else (lambda s: print(s, flush=True)))
    if quiet:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        return 0
    key = "map_50" if task == "detection" else "miou"
    extra = " (mAP@[.5:.95] {:.4f})".format(res.final["map"]) if task == "detection" else ""
    print(f"{res.method} {res.arch}: {key} {res.final[key]:.4f}{extra} -> {res.run_dir}")
    print(f"  deployable weights: {res.weights_path} (stock keys, load strict=True)")
    if res.fold:
        print(f"  fold check: raw outputs max abs err {res.fold['max_abs_err']:.3g}; folded {key} "
              f"{res.folded_metrics[key]:.4f}")
    if res.onnx:
        print(f"  ONNX: {res.onnx['path']} (onnxruntime max abs err {res.onnx['max_abs_err']:.3g})")
    print(f"  params: {res.trainable_params:,} trainable while training -> {res.deploy_params:,} deployed")
    if res.backbone:
        print(f"  {describe_backbone(res.backbone)}")
    return 0


def main_detect(args: argparse.Namespace) -> int:
    """Run ``refconv detect`` with parsed ``args``; returns the exit code."""
    return _main(args, "detection")


def main_segment(args: argparse.Namespace) -> int:
    """Run ``refconv segment`` with parsed ``args``; returns the exit code."""
    return _main(args, "segmentation")
