"""``refconv study-summary`` and ``refconv study-analyses``: the pretrained-model study's page from its recorded
sweeps, and the paper's analyses over a finished sweep's seeds (see :mod:`refconv.protocol.study`)."""

from __future__ import annotations

import argparse

DESCRIPTIONS = {
    "study-summary": (
        "Read one recorded sweep per start (its results.json, and its analyses/ when recorded) and write the study's "
        "summary page and <page>-delta.png beside it: per setting and budget, RefConv minus the best equal-budget "
        "control from each start. The page's hand-written reading, between its reading markers, is kept. See "
        "docs/sweep.md."),
    "study-analyses": (
        "Analyse a finished sweep's cells at one budget, for every seed: channel redundancy, kernel skeleton, loss "
        "landscape, attacks and cost of each chosen RefConv setting against the same seed's control. Reads the cells' "
        "run directories (run it before deleting the sweep's runs/); writes analyses/analyses.json, analyses.md and "
        "seed 0's plots into the sweep's directory, which `refconv study-summary` adds to the page. See "
        "docs/sweep.md."),
}


def register(sub: argparse._SubParsersAction) -> None:
    from . import COMMANDS

    parsers = {name: sub.add_parser(name, help=COMMANDS[name][1], description=text)
               for name, text in DESCRIPTIONS.items()}
    p = parsers["study-summary"]
    p.add_argument("sweeps", nargs="+", metavar="LABEL=DIR", help="a recorded sweep per start, e.g. converged=DIR")
    p.add_argument("--out", required=True, help="the Markdown page to write")
    p.set_defaults(func=_summary)
    p = parsers["study-analyses"]
    p.add_argument("sweep_dir", metavar="SWEEP_DIR",
                   help="a finished sweep's --out directory (its runs/ still present)")
    p.add_argument("--budget", type=int, default=None, help="budget to analyse (default: the largest)")
    p.add_argument("--settings", default=None,
                   help="comma-separated RefConv settings (default: authors and the one closest to the best control)")
    p.add_argument("--control", default="continue", help="the control each seed is paired with [continue]")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: the usual places)")
    p.set_defaults(func=_analyses)


def _summary(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..protocol.study import load_study, write_study_summary

    dirs = {}
    for item in args.sweeps:
        if "=" not in item:
            raise ConfigError(f"{item!r}: give LABEL=DIR, e.g. converged=docs/results/pretrained-study/converged-fair")
        label, d = item.split("=", 1)
        dirs[label] = d
    print(write_study_summary(load_study(dirs), args.out))
    return 0


def _analyses(args: argparse.Namespace) -> int:
    from ..protocol.study_analyses import analyses_markdown, analyze_sweep

    data = analyze_sweep(args.sweep_dir, budget=args.budget, control=args.control, data_dir=args.data_dir,
                         settings=args.settings.split(",") if args.settings else None)
    print("\n".join(analyses_markdown(data, heading="#")))
    return 0
