"""``refconv train``: one run (baseline / refconv / continue / finetune) from flags and YAML recipes.

Every :class:`~refconv.engine.RunConfig` key is a flag (``batch_size`` -> ``--batch-size``; booleans also have
``--no-...``), so the CLI can never lag behind the config. Precedence: defaults < ``--config`` files (in
order) < flags. ``--resume RUN_DIR`` reloads the run's own ``config.yaml``; flags given with it must not
change the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from ..engine.config import RunConfig, make_config
from ..errors import ConfigError

__all__ = ["register", "add_config_flags", "config_from_args", "HELP", "NOT_FLAGS"]

# Config keys that are no flag: the command sets them (``refconv detect`` is task detection, its options are flags
# of their own).
NOT_FLAGS = ("task", "task_options")

HELP: dict[str, str] = {
    "model": "architecture: timm/<name> or tv/<name> (e.g. timm/mobilenetv3_small_100, tv/resnet18); required "
             "unless a --config recipe sets it",
    "num_classes": "classifier width (default: the dataset's)",
    "in_chans": "input channels, 1 or 3 (default: the dataset's; grayscale is replicated for RGB models)",
    "pretrained": "start from the hub's pretrained weights (needs network)",
    "weights": "starting weights: .safetensors, .pth, timm/torchvision checkpoint, a finished run directory, or a "
    "pretrained model (fmnist/mobilenetv3_small_100; `refconv pretrained` lists them)",
    "data": "fashion-mnist | cifar10 | cifar100 | imagefolder | imagenet",
    "data_dir": "where the data is (default: $REFCONV_DATA_DIR and the usual places)",
    "image_size": "input size (default: native 28/32; 224 for image folders)",
    "augment": "training augmentation (random crop + flip; RandomResizedCrop for image folders)",
    "download": "download the dataset with torchvision if it is found nowhere",
    "subset_train": "train on a class-stratified subset of this many images",
    "subset_test": "evaluate on a class-stratified subset of this many images",
    "data_seed": "seed of the --subset-train/--subset-test choice (kept fixed across training seeds)",
    "workers": "data loader worker processes",
    "method": "baseline | refconv | continue | finetune",
    "map_k": "refconv: RT's kernel size (odd)",
    "groups": "refconv: RT's groups G for every layer (default: the authors' Cin*Cout/g^2)",
    "max_group_size": "refconv: cap kernels per RT group (bounds the quadratic cost on wide depthwise layers)",
    "init": "refconv: RT init, default (authors) or zeros (starts exactly at the pretrained model)",
    "include": "refconv: convert only modules matching this glob (repeatable)",
    "exclude": "refconv: leave modules matching this glob plain (repeatable)",
    "layers": "which eligible convs to convert: all | depthwise | dense | no-stem (refconv only)",
    "basis": "pretrained | random: re-initialise the converted kernels first (the prior ablation; refconv only)",
    "epochs": "training epochs (the budget)",
    "batch_size": "global batch size (split over torchrun processes)",
    "lr": "learning rate (default: base_lr * batch_size / lr_base_size)",
    "base_lr": "lr per lr_base_size images (authors: 0.1 per 512)",
    "lr_base_size": "batch size base_lr refers to",
    "finetune_lr_mult": "finetune: lr multiplier on the recipe lr",
    "refocus_lr_mult": "refconv: lr multiplier of the refocus_weight (RT) group",
    "refocus_weight_decay": "refconv: weight decay of RT (default: --weight-decay)",
    "refocus_impl": "refconv: explicit (train RT, fold at the end) | implicit (train the stock kernels with the "
                    "equivalent preconditioned update: plain speed, nothing to fold; SGD family only)",
    "refocus_precond": "refconv: exact | normalized | geometry | isotropic (the last two with --refocus-impl "
                       "implicit); see docs/method.md",
    "bn_recalibrate_batches": "recompute BatchNorm statistics on N training batches before every evaluation",
    "opt": "timm optimizer: momentum (SGD, authors), sgd (Nesterov), adamw, ...",
    "momentum": "optimizer momentum",
    "weight_decay": "weight decay",
    "filter_bias_and_bn": "no weight decay on biases and norm parameters",
    "sched": "timm scheduler: cosine, step, multistep, poly, tanh",
    "warmup_epochs": "linear warm-up epochs (fractional allowed)",
    "warmup_lr": "lr at the start of warm-up",
    "min_lr": "lr at the end of the schedule",
    "label_smoothing": "label smoothing of the training loss",
    "grad_clip": "clip the gradient norm to this value",
    "ema": "keep an EMA of the weights (timm ModelEmaV3); evaluated and deployed",
    "ema_decay": "EMA decay",
    "device": "auto | cpu | cuda",
    "amp": "mixed precision on CUDA: none | bf16 | fp16",
    "fused_optimizer": "fused optimizer kernels (SGD, Adam, AdamW): same update, faster",
    "channels_last": "NHWC memory format (faster on CPU and tensor cores; --no-channels-last for NCHW)",
    "compile": "torch.compile the model once per run (worth its compile time on long runs)",
    "input_pipeline": "auto (tensor datasets resident, batches augmented at once) | resident | loader (per item)",
    "sync_bn": "SyncBatchNorm under torchrun (CUDA)",
    "seed": "seed of init, data order and augmentation",
    "deterministic": "deterministic algorithms (CPU runs repeat bit for bit)",
    "out": "run directory (default: runs/<data>-<model>-<method>-s<seed>)",
    "overwrite": "replace an existing run directory",
    "eval_every_epochs": "evaluate the test split every N epochs (always after the last; short study cells)",
    "snapshot_epochs": "also keep checkpoints/epoch-<N>.pt after epoch N (repeatable; an under-trained start)",
    "checkpoint_every_steps": "also save checkpoints/last.pt every N steps (mid-epoch resume)",
    "log_every_steps": "log a line / refresh the bar every N steps",
    "progress": "auto (bars on a terminal) | bar | plain | none",
    "export_onnx": "also export the deployable model to ONNX, checked with onnxruntime",
    "onnx_opset": "ONNX opset (default: the exporter's)",
}


def _metavar(hint: Any) -> str:
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint)
    if typing.get_origin(base) is list:
        return "A,B,..."
    return {int: "N", float: "X", str: "STR"}.get(base, "VALUE")


def add_config_flags(parser: argparse.ArgumentParser, *, schema: type = RunConfig, keys: Collection[str] | None = None,
                     defaults: Mapping[str, Any] | None = None, flags: Mapping[str, str] | None = None,
                     helps: Mapping[str, str] | None = None) -> None:
    """One flag per :class:`RunConfig` key, defaulting to "not given" so only explicit flags override.

    Args:
        schema: the config dataclass (a task's options: ``refconv.downstream.tasks.DownstreamOptions``).
        keys: only these keys (``refconv detect`` / ``segment`` take the keys that mean something for them).
        defaults: defaults to show in the help where they are not RunConfig's.
        flags: flag names for keys (``{"model": "--arch"}``).
        helps: help texts (default: :data:`HELP`).
    """
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name in NOT_FLAGS or (keys is not None and f.name not in keys):
            continue
        flag = (flags or {}).get(f.name) or "--" + f.name.replace("_", "-")
        names = (flag, *f.metadata.get("aliases", ()))  # a field may carry other spellings of its flag
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = (defaults or {}).get(f.name, default)
        shown = "" if f.name == "model" and not defaults else f" [{default}]"  # refconv train: no default model
        help_text = (helps or HELP).get(f.name) or f.metadata.get("help", f.name)
        help_text += shown
        if hint is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(hint) is list:
            metavar = "N" if typing.get_args(hint)[0] is int else "GLOB"
            parser.add_argument(*names, dest=f.name, action="append", metavar=metavar, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(*names, dest=f.name, metavar=_metavar(hint), default=argparse.SUPPRESS, help=help_text)


def config_from_args(args: argparse.Namespace, *, base: Any = None) -> RunConfig:
    """Merge ``base`` (YAML path / dict / None), ``--config`` files and the given flags into a config."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return make_config(base, *(getattr(args, "config", None) or []), overrides, source="command line")


EXAMPLE = "refconv train --config fashion-mnist --model timm/mobilenetv3_small_100 --out runs/fm-baseline"


def _require_model(args: argparse.Namespace) -> None:
    """Refuse to pick an architecture for the user.

    ``RunConfig``'s default model (kept for Python callers) is one the FAQ says stays at chance on short runs:
    a bare ``refconv train`` silently training it would be the worst first experience. The model must come
    from ``--model`` or a ``--config`` recipe.
    """
    from ..engine.config import load_yaml

    if getattr(args, "model", None):
        return
    if any("model" in load_yaml(c) for c in (getattr(args, "config", None) or [])):
        return
    raise ConfigError(f"no model given: pass --model NAME (timm/<name> or tv/<name>) or a --config recipe that sets "
                      f"one. Example: {EXAMPLE}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one run: baseline, refconv, continue or finetune",
        description="Train one run. Every config key is a flag (booleans also take --no-...). Precedence: defaults "
        "< --config files (in order) < flags. --resume RUN_DIR reloads the run's own config.yaml; flags given with "
        "it must not change the recipe.",
        epilog="Multi-GPU / multi-node: torchrun --nnodes N --nproc-per-node G ... -m refconv.cli train ... "
        "(see docs/engine.md).",
    )
    p.add_argument("--config", action="append", metavar="YAML",
                   help="recipe file or packaged recipe name (fashion-mnist, authors-imagenet); repeatable")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints/last.pt")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_flags(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.resume:
        from ..engine.rundir import load_run_config

        if getattr(args, "out", None) and args.out != args.resume:
            raise ConfigError(f"--resume {args.resume} and --out {args.out} name different runs: give only --resume.")
        base = load_run_config(args.resume).replace(out=args.resume)
        cfg = config_from_args(args, base=base)
    else:
        _require_model(args)
        cfg = config_from_args(args)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from ..engine.runner import run  # torch: only once the arguments are known to be good

    run(cfg, resume=bool(args.resume))
    return 0
