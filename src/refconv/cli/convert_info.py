"""``refconv convert-info``: which layers ``--method refconv`` would convert, and what it costs.

Prints, per convolution, its kernel count ``N``, RT's groups ``G`` and the weights RT adds, then the
parameter counts while training (trainable / total) beside the deployed (folded) count, which equals the
stock model's: the training-time cost users ask about, next to the inference cost that does not change.
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
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
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
    from ..engine.modeling import apply_conversion, convert_kwargs, count_params, create_stock_model, groups_spec

    cfg = make_config({"method": "refconv", "map_k": args.map_k, "groups": args.groups,
                       "max_group_size": args.max_group_size, "include": args.include or [],
                       "exclude": args.exclude or [], "init": "zeros"})
    model = create_stock_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    deployed = count_params(model)[1]
    kwargs = convert_kwargs(cfg)
    plans = plan_conversion(model, map_k=cfg.map_k, groups=groups_spec(cfg.groups, cfg.max_group_size),
                            include=cfg.include or None, exclude=cfg.exclude or None)
    apply_conversion(model, kwargs)
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
