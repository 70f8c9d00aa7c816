"""``refconv sweep CONFIG``: RefConv settings against fair controls over budgets and seeds, with a report.

Read a sweep YAML (a path, or a packaged sweep: fashion-mnist-small, ablations), train its baseline once, then every
RefConv setting and the controls (continue, finetune) from that checkpoint for each budget E and seed. Every cell is
an ordinary run directory: a rerun skips finished cells and resumes interrupted ones; adding seeds, budgets or
settings trains only what is new. Writes results.json, report.md, report.html and PNG plots into --out. See
docs/sweep.md for the config schema. On a cluster: --launcher slurm, then `refconv sweep status OUT` and
`refconv sweep report OUT` (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import add_command


def _parallel(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {value!r}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sweep", __doc__)
    p.add_argument("config", metavar="CONFIG",
                   help="sweep YAML file or packaged sweep name; or `status OUT` (each cell: done / running / queued / "
                        "failed) or `report OUT` (results.json and the report from the finished cells)")
    p.add_argument("target", nargs="?", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="output directory (default: sweeps/<name>)")
    p.add_argument("--data-dir", default=None, help="dataset directory, if not in a standard location")
    p.add_argument("--parallel", type=_parallel, default=None, metavar="N|auto",
                   help="cells run in N processes (default: the config's 'parallel', else 1)")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes per run")
    for switch, text in (
            ("--yes", "run even when the time estimate exceeds the config's time_budget_minutes"),
            ("--estimate", "validate the config, print the plan and the time estimate (JSON on stdout), and exit"),
            ("--overwrite", "recompute runs that cannot be reused (another recipe or baseline in --out, or changed "
                            "settings); finished matching cells are always kept")):
        p.add_argument(switch, action="store_true", help=text)
    p.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default=None,
                   help="per-run progress output (default: the config's, else plain lines)")
    from .launch_options import add_launcher_options

    add_launcher_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.config in ("status", "report") and (args.target or args.out):
        return _status_or_report(args.config, args.target or args.out)
    if args.target:
        from ..errors import ConfigError

        raise ConfigError(f"unexpected argument {args.target!r}: give the output directory with --out (or use "
                          "`refconv sweep status OUT` / `refconv sweep report OUT`).")
    from ..protocol.sweep import load_sweep, run_sweep
    from .launch_options import options_from_args

    spec = load_sweep(args.config)
    launcher = options_from_args(args, spec.launcher)
    command = " ".join(["refconv", "sweep", *sys.argv[sys.argv.index("sweep") + 1:]]) if "sweep" in sys.argv else None
    res = run_sweep(spec, args.out, data_dir=args.data_dir, parallel=args.parallel, yes=args.yes,
                    overwrite=args.overwrite, workers=args.workers, progress=args.progress,
                    estimate_only=args.estimate, command=command, launcher=launcher)
    if args.estimate:
        sys.stdout.write(json.dumps({"out": str(res.out_dir), "warnings": spec.warnings, **res.estimate}, indent=2)
                         + "\n")
        return 0
    if res.report_md is None:  # submitted without waiting
        return 0
    print(res.report_md)
    print(res.report_html)
    return 0


def _status_or_report(what: str, out: str) -> int:
    from ..protocol.sweep_status import sweep_report, sweep_status

    if what == "status":
        rows, text = sweep_status(out)
        print(text)
        return 0 if all(r["status"] == "done" for r in rows) else 3
    res = sweep_report(out)
    print(f"{out}/results.json" + (f" ({len(res['missing'])} cell(s) missing)" if res.get("missing") else ""))
    return 0
