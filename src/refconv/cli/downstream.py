"""``refconv detect`` and ``refconv segment``: thin argparse front-ends over :func:`refconv.engine.run`.

A detection / segmentation run is an engine run with ``task="detection"`` / ``"segmentation"``, so the flags
are ``refconv train``'s (those that mean something for the task, with the task's defaults: ``--arch`` names
the torchvision model, ``--onnx`` exports) plus one per task option (:class:`~refconv.downstream.tasks.
DownstreamOptions`: ``--scope``, ``--weights-backbone``, the data splits and synthetic-data settings...), so
the CLI cannot lag behind the config. Examples::

    refconv detect --method baseline --epochs 5 --out runs/det-base                  # synthetic VOC data
    refconv detect --method refconv --weights runs/det-base/checkpoints/last.pt --out runs/det-ref
    refconv segment --arch lraspp_mobilenet_v3_large --data voc --data-dir VOCdevkit/VOC2012 \\
        --weights-backbone IMAGENET1K_V1 --method refconv --out runs/seg-ref
    refconv detect --epochs 0 --weights runs/det-ref/checkpoints/last.pt --out runs/det-fold  # fold + export only
    refconv detect --resume runs/det-ref             # continue an interrupted run with its own config.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from ..errors import ConfigError
from .train import HELP as RUN_HELP
from .train import add_config_flags

__all__ = ["add_detect_parser", "add_segment_parser", "config_from_args", "main_detect", "main_segment", "register"]

HELP: dict[str, str] = {  # where detect / segment differ from refconv train (task options: their fields' help)
    **RUN_HELP,
    "data": "synthetic (Fashion-MNIST scenes, VOC format, generated offline) | synthetic-cityscapes | voc | cityscapes",
    "data_dir": "dataset root (VOC: the VOC20xx directory); for synthetic data: where to write it [cache]",
    "image_size": "network input height (width = height; 2x for Cityscapes) [synthetic canvas / arch default]",
    "weights": "whole-model starting weights: torchvision name (COCO_V1...) or file (a run's checkpoint, .pth, "
               ".safetensors)",
    "epochs": "training epochs (0: evaluate, fold and export the starting weights)",
    "lr": "learning rate",
    "out": "run directory",
    "include": "refconv: convert modules matching this glob instead of the scope's (repeatable)",
}
_FLAGS = {"model": "--arch", "export_onnx": "--onnx"}


def _add_parser(subparsers: argparse._SubParsersAction, task: str, summary: str, what: str) -> argparse.ArgumentParser:
    from ..models.detection import list_archs
    from ..downstream.tasks import CLASSIFICATION_ONLY, DownstreamOptions
    from ..downstream.run import DEFAULTS
    from ..engine.config import RunConfig
    from ..engine.task_registry import task_class

    name = task_class(task).command
    p = subparsers.add_parser(name, help=summary, description=f"{what}, then fold and export. The engine of refconv "
                              "train: AMP, DDP (torchrun), EMA, exact resume, Ctrl-C saves a checkpoint.")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                   help="continue the unfinished run RUN_DIR (or --out) from its checkpoints/last.pt, with its own "
                        "config.yaml (flags may not change it), as refconv train --resume does")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    archs = list_archs(task)
    helps = {**HELP, "model": f"architecture (torchvision, or *_timm: heads on a registry trunk): {', '.join(archs)}"}
    keys = {f.name for f in dataclasses.fields(RunConfig)} - set(CLASSIFICATION_ONLY)
    add_config_flags(p, keys=keys, defaults={**DEFAULTS, "model": archs[0], "out": f"runs/{name}"}, flags=_FLAGS,
                     helps=helps)
    options = {f.name for f in dataclasses.fields(DownstreamOptions)}
    options -= {"aux_weight"} if task == "detection" else set()  # a detector has no auxiliary head
    add_config_flags(p, schema=DownstreamOptions, keys=options, helps=helps)
    p.set_defaults(func=main_detect if task == "detection" else main_segment)
    return p


def add_detect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``detect`` to a ``refconv`` subparsers object; sets ``func=main_detect``."""
    return _add_parser(subparsers, "detection", "train / fold / export an SSD detector with a RefConv backbone",
                       "Object detection (torchvision SSD / SSDlite) with RefConv: baseline, refconv, continue or "
                       "finetune on Pascal VOC or the offline synthetic VOC-format dataset")


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``segment`` to a ``refconv`` subparsers object; sets ``func=main_segment``."""
    return _add_parser(subparsers, "segmentation",
                       "train / fold / export a segmenter (DeepLabV3, LR-ASPP, FCN) with a RefConv backbone",
                       "Semantic segmentation with RefConv on Pascal VOC, Cityscapes or the offline synthetic "
                       "datasets (VOC or Cityscapes format)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add both ``detect`` and ``segment``."""
    add_detect_parser(subparsers)
    add_segment_parser(subparsers)


def config_from_args(args: argparse.Namespace, task: str) -> Any:
    """The :class:`~refconv.engine.RunConfig` the parsed flags describe; with ``--resume``, the run's own
    ``config.yaml`` with the given flags on top (the engine refuses flags that change the recipe)."""
    from ..downstream.tasks import DownstreamOptions
    from ..downstream.run import downstream_config
    from ..engine.config import RunConfig, make_config

    names = {f.name for f in dataclasses.fields(RunConfig)} | {f.name for f in dataclasses.fields(DownstreamOptions)}
    given = {k: v for k, v in vars(args).items() if k in names}
    resume = getattr(args, "resume", None)
    if resume is None:
        return downstream_config(task, **given)
    from ..engine.rundir import load_run_config

    if resume and given.get("out", resume) != resume:
        raise ConfigError(f"--resume {resume} and --out {given['out']} name different runs: give only --resume.")
    out = resume or given.get("out") or f"runs/{'detect' if task == 'detection' else 'segment'}"
    base = load_run_config(out)
    if base.task != task:
        raise ConfigError(f"{out} holds a {base.task} run: resume it with `refconv "
                          f"{'detect' if base.task == 'detection' else 'segment'} --resume --out {out}`.")
    options = {f.name for f in dataclasses.fields(DownstreamOptions)}
    task_options = {**base.task_options, **{k: given.pop(k) for k in list(given) if k in options}}
    return make_config(base, given, {"out": out, "task_options": task_options}, source="command line")


def _main(args: argparse.Namespace, task: str) -> int:
    from ..downstream.run import run_downstream
    from ..engine.task import task_class

    cfg = config_from_args(args, task)
    quiet = getattr(args, "json", False)
    if quiet:
        cfg = cfg.replace(progress="none")
    res = run_downstream(cfg, resume=args.resume is not None)
    if quiet:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        return 0
    key = "map_50" if task == "detection" else "miou"
    extra = " (mAP@[.5:.95] {:.4f})".format(res.final["map"]) if task == "detection" else ""
    print(f"{res.method} {res.model}: {key} {res.final[key]:.4f}{extra} -> {res.run_dir}")
    print(f"  deployable weights: {res.weights_path} (stock keys, load strict=True)")
    if res.fold:
        print(f"  fold check: raw outputs max abs err {res.fold['max_abs_err']:.3g}; folded {key} "
              f"{res.folded_metrics[key]:.4f}")
    if res.onnx:
        print(f"  ONNX: {res.onnx['path']} (onnxruntime max abs err {res.onnx['max_abs_err']:.3g})")
    print(f"  params: {res.trainable_params:,} trainable while training -> {res.deploy_params:,} deployed")
    for _, fact in task_class(task).fact_rows(res.extra):  # e.g. the registry backbone and its accuracy
        print(f"  {fact}")
    return 0


def main_detect(args: argparse.Namespace) -> int:
    """Run ``refconv detect`` with parsed ``args``; returns the exit code."""
    return _main(args, "detection")


def main_segment(args: argparse.Namespace) -> int:
    """Run ``refconv segment`` with parsed ``args``; returns the exit code."""
    return _main(args, "segmentation")
