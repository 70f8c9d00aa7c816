"""``refconv downstream-study CONFIG``: detection / segmentation transfer from a pretrained backbone, RefConv vs
equal-budget controls over seeds, with a report (see :mod:`refconv.downstream.study`)."""

from __future__ import annotations

import argparse
import sys

HELP = "detection / segmentation from a pretrained backbone: refconv vs continue / finetune over seeds, with a report"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "downstream-study", help=HELP,
        description=(
            "Read a downstream study YAML (a path, or a packaged one: transfer, transfer-tiny), train each task's "
            "baseline from the registry backbone, then refconv, continue and finetune from its checkpoint with the "
            "same budget for every seed; fold and check every RefConv run; write results.json, report.md and "
            "curves.png into --out. Finished runs in --work-dir are reused and interrupted ones resumed (a run "
            "directory holding another config is refused: --overwrite). See "
            "docs/downstream.md."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="study YAML file or packaged study name")
    p.add_argument("--out", default=None, help="where results.json / report.md go [the config's out]")
    p.add_argument("--work-dir", default=None, help="where the run directories go [the config's work_dir]")
    p.add_argument("--backbone", default=None, help="registry name or classifier file [the config's backbone]")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute every run, also those --work-dir holds with another config")
    from .launch_options import add_launcher_options

    add_launcher_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..downstream.study import load_study_config, run_study
    from .launch_options import options_from_args

    cfg = load_study_config(args.config, out=args.out, work_dir=args.work_dir, backbone=args.backbone)
    argv = sys.argv[sys.argv.index("downstream-study") + 1:] if "downstream-study" in sys.argv else [args.config]
    run_study(cfg, log=lambda s: print(s, flush=True), command=" ".join(["refconv", "downstream-study", *argv]),
              overwrite=args.overwrite, launcher=options_from_args(args))
    return 0
