"""``refconv demo``: the paper's protocol on the embedded default data, with a report.

From the shipped converged Fashion-MNIST model (or, with a *-scratch profile, a baseline trained here), train
RefConv and its fair controls (continue, finetune) with the same budget over several seeds; fold and check
equivalence; run the analyses for every seed; write report.md, report.html and results.json into --out. Every stage
is cached: a rerun skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse

from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", __doc__)
    p.add_argument("--profile", default="quick", metavar="NAME|YAML",
                   help="a packaged profile (src/refconv/configs/demo) or a YAML file of one's own: quick: from the "
                        "shipped converged model, <=10 min on a 2-core CPU (subsampled); full: both shipped models, all "
                        "data, 3 seeds (hours on a CPU); quick-scratch / full-scratch: a baseline trained here from "
                        "scratch instead; tiny: a smoke test")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per arm (default: the profile's)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="models to run, e.g. timm/mobilenetv3_small_100 tv/shufflenet_v2_x1_0 (a pretrained profile "
                        "starts each from its registry entry)")
    p.add_argument("--start", nargs="+", default=None, metavar="NAME",
                   help="registry models to start from (`refconv pretrained` lists them), e.g. fmnist/mobilenetv3_small_100")
    p.add_argument("--refocus-impl", choices=("explicit", "implicit"), default=None,
                   help="how the authors' RefConv arm trains: explicit RT layers (default) or the equivalent "
                        "preconditioned update (docs/method.md)")
    p.add_argument("--refocus-precond", choices=("exact", "normalized", "geometry", "isotropic"), default=None,
                   help="the refocusing preconditioner of that arm (geometry and isotropic: --refocus-impl implicit)")
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files, if not in a standard location")
    p.add_argument("--download", action="store_true",
                   help="fetch Fashion-MNIST with torchvision when it is found nowhere (needs network)")
    p.add_argument("--overwrite", action="store_true", help="recompute an output directory holding another config")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    from .launch_options import add_launcher_options

    add_launcher_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..protocol.demo import profile, run_demo
    from .launch_options import options_from_args

    prof = profile(args.profile, seeds=args.seeds, models=args.models, starts=args.start,
                   refocus_impl=args.refocus_impl, refocus_precond=args.refocus_precond)
    res = run_demo(prof, args.out, data_dir=args.data_dir, overwrite=args.overwrite, workers=args.workers,
                   download=args.download, launcher=options_from_args(args))
    if res is None:  # submitted without waiting
        return 0
    print(res.report_md)
    print(res.report_html)
    return 0
