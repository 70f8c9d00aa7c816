"""``refconv convert-info``: which layers ``--method refconv`` would convert, and what it costs.

Prints, per convolution, its kernel count ``N``, RT's groups ``G`` and the weights RT adds, then the
parameter counts while training (trainable / total) beside the deployed (folded) count, which equals the
stock model's: the training-time cost users ask about, next to the inference cost that does not change.

With ``--weights W --spectrum`` it prints instead, per converted layer, the spectrum of the refocusing
preconditioner ``M = P.T @ P`` of RT's groups (``docs/method.md``, "The preconditioned form"): the largest and
smallest eigenvalue (``lambda_max``: how many plain steps RT's longest step is) and the trace, over the layer's
groups (max / min / mean when it has several). The same in Python: ``refconv.analysis.refocus_spectrum``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "main"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-info", help="show what refconv.convert would do to a model",
                       description=__doc__)
    p.add_argument("--model", required=True, help="timm/<name> or tv/<name>")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier width (default: the registry card's for a registry --weights, else 1000)")
    p.add_argument("--in-chans", type=int, default=None,
                   help="input channels (default: the registry card's for a registry --weights, else 3)")
    p.add_argument("--weights", metavar="W",
                   help="pretrained weights (registry name, run directory or file): the bases --spectrum reads")
    p.add_argument("--spectrum", action="store_true",
                   help="print lambda_max, lambda_min and trace of each layer's refocusing preconditioner M "
                        "(needs --weights: M is a function of the pretrained kernels)")
    p.add_argument("--map-k", type=int, default=3)
    p.add_argument("--groups", type=int, help="RT groups for every layer (default: authors' rule)")
    p.add_argument("--max-group-size", type=int, help="cap kernels per RT group")
    p.add_argument("--include", action="append", metavar="GLOB")
    p.add_argument("--exclude", action="append", metavar="GLOB")
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..convert import plan_conversion
    from ..engine.config import make_config
    from ..engine.modeling import (
        apply_conversion,
        convert_kwargs,
        count_params,
        create_stock_model,
        groups_spec,
        load_start_weights,
    )

    from ..errors import ConfigError
    from ..models.pretrained import entry, is_pretrained_name

    cfg = make_config({"method": "refconv", "map_k": args.map_k, "groups": args.groups,
                       "max_group_size": args.max_group_size, "include": args.include or [],
                       "exclude": args.exclude or [], "init": "zeros"})
    if args.spectrum and not args.weights:
        raise ConfigError("--spectrum reads the pretrained kernels: add --weights W (a registry name such as "
                          "fmnist/mobilenetv3_small_100, a run directory or a weights file).")
    card = entry(args.weights) if args.weights and is_pretrained_name(args.weights) else None
    num_classes = args.num_classes or (card.num_classes if card else 1000)
    in_chans = args.in_chans or (card.in_chans if card else 3)
    model = create_stock_model(args.model, num_classes=num_classes, in_chans=in_chans)
    deployed = count_params(model)[1]
    if args.weights:
        load_start_weights(model, args.weights)
    kwargs = convert_kwargs(cfg)
    plans = plan_conversion(model, map_k=cfg.map_k, groups=groups_spec(cfg.groups, cfg.max_group_size),
                            include=cfg.include or None, exclude=cfg.exclude or None)
    apply_conversion(model, kwargs)
    if args.spectrum:
        return _spectrum(model, args)
    trainable, total = count_params(model)
    rows = [{"layer": p.name, "class": p.module_class, "shape": list(p.weight_shape), "conv_groups": p.conv_groups,
             "kernels": p.kernels, "refocus_groups": p.refocus_groups, "refocus_params": p.refocus_params}
            for p in plans]
    summary = {"model": args.model, "layers": len(plans), "refocus_params": sum(r["refocus_params"] for r in rows),
               "trainable_params": trainable, "total_params": total, "deployed_params": deployed}
    if args.json:
        sys.stdout.write(json.dumps({"summary": summary, "layers": rows}) + "\n")
        return 0
    _print_table(rows, summary)
    return 0


def _print_table(rows: list[dict], summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"refconv.convert({summary['model']})", title_justify="left")
    for col in ("layer", "class", "weight shape", "g", "N", "G", "RT params"):
        table.add_column(col, justify="left" if col in ("layer", "class", "weight shape") else "right")
    for r in rows:
        table.add_row(r["layer"], r["class"], "x".join(map(str, r["shape"])), str(r["conv_groups"]), str(r["kernels"]),
                      str(r["refocus_groups"]), f"{r['refocus_params']:,}")
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(
        f"{summary['layers']} layers converted, RT adds {summary['refocus_params']:,} weights. Params while training: "
        f"trainable {summary['trainable_params']:,} / total {summary['total_params']:,}; deployed after folding: "
        f"{summary['deployed_params']:,} (the stock model's).",
        soft_wrap=True,
    )


def _spectrum(model, args: argparse.Namespace) -> int:
    from ..analysis.spectrum import refocus_spectrum

    layers = refocus_spectrum(model)
    if args.json:
        sys.stdout.write(json.dumps({"model": args.model, "weights": args.weights, "layers": layers}) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    def stat(s: dict, groups: int) -> str:
        if groups == 1:
            return f"{s['max']:.4g}"
        return f"{s['max']:.4g} / {s['min']:.4g} / {s['mean']:.4g}"

    table = Table(title=f"refocusing preconditioner M = P.T P of {args.model} ({args.weights})", title_justify="left")
    for col in ("layer", "weight shape", "G", "K", "lambda_max", "lambda_min", "trace"):
        table.add_column(col, justify="left" if col in ("layer", "weight shape") else "right")
    for r in layers:
        g = r["refocus_groups"]
        table.add_row(r["layer"], "x".join(map(str, r["shape"])), str(g), str(r["positions"]),
                      stat(r["lambda_max"], g), stat(r["lambda_min"], g), stat(r["trace"], g))
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    tops = [r["lambda_max"]["max"] for r in layers]
    console.print(
        f"{len(layers)} layers. A layer with G > 1 groups shows max / min / mean over its groups. lambda_max is "
        f"how many times a plain step RT's longest step is (here {min(tops):.3g} to {max(tops):.3g}); "
        "trace / K is its average. See docs/method.md, 'The preconditioned form'.",
        soft_wrap=True,
    )
    return 0
