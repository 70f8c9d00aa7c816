"""``refconv analyze``: compare a baseline and a RefConv model with the paper's analyses.

Both models are rebuilt from what their artefacts record (run directories, checkpoints, ``.safetensors``
with a sidecar). A training-time RefConv model is folded on a copy for the weight, landscape and attack
analyses (the result says so) and costed in both forms. Writes ``analysis.json`` and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from . import add_model_data_options

__all__ = ["register", "main"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="channel redundancy, kernel skeleton, refocusing spectrum, loss landscape, "
                                       "attacks and cost of a baseline vs RefConv pair", description=__doc__)
    p.add_argument("--baseline", required=True, metavar="PATH", help="run directory, checkpoint or weights file")
    p.add_argument("--refconv", required=True, metavar="PATH",
                   help="RefConv run directory or checkpoint (training-time or folded)")
    add_model_data_options(p, model_help="architecture, for weights that do not record it (both sides)",
                           data_help="dataset (default: the RefConv run's, else fashion-mnist)")
    p.add_argument("--subset", type=int, default=None, help="use a class-stratified subset of the test set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="analysis-out", help="output directory (default: analysis-out)")
    p.add_argument("--sections", nargs="+", default=None,
                   help="subset of: cost redundancy skeleton spectrum landscape attacks (default: all)")
    p.add_argument("--num-batches", type=int, default=None, help="held-out batches for the landscape")
    p.add_argument("--resolution-1d", type=int, default=None)
    p.add_argument("--resolution-2d", type=int, default=None, help="points per axis of the 2-D surface; 0 skips it")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="L-inf budgets in pixel units")
    p.add_argument("--pgd-steps", type=int, default=None)
    p.add_argument("--attack-batches", type=int, default=None, help="attack only the first N test batches")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=main)


_OPTION_KEYS = ("sections", "num_batches", "resolution_1d", "resolution_2d", "eps", "pgd_steps", "attack_batches",
                "seed")


def main(args: argparse.Namespace) -> int:
    from ..analysis import AnalysisConfig, analyze
    from ..engine.artifacts import load_model
    from ..errors import ConfigError
    from ..protocol.evaldata import artefact_test_loader

    options = {k: getattr(args, k) for k in _OPTION_KEYS if getattr(args, k) is not None}
    config = AnalysisConfig.from_dict(options)  # ranges checked before anything heavy is loaded
    kw = dict(model_name=args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    base = load_model(args.baseline, **kw)
    ref = load_model(args.refconv, which="last" if Path(args.refconv).is_dir() else None, **kw)
    loader = artefact_test_loader(ref, base, data=args.data, data_dir=args.data_dir, image_size=args.image_size,
                                  subset=args.subset, batch_size=args.batch_size)
    info = loader.info
    # Every batch when every batch is attacked, else only as many as the landscape and the attacks use.
    need = None if config.attack_batches is None else max(config.num_batches, config.attack_batches)
    batches = list(itertools.islice(loader, need))
    if not batches:
        raise ConfigError(f"the {info.name} test set selected holds no images: drop --subset or give a larger one.")
    if "num_batches" not in options and len(batches) < config.num_batches:  # a small --subset: use what there is
        config = AnalysisConfig.from_dict({**options, "num_batches": len(batches)})
    result = analyze(base.model, ref.model, args.out, held_out=batches[: config.num_batches],
                     test=batches if config.attack_batches is None else batches[: config.attack_batches],
                     example_input=batches[0][0][:32], mean=info.mean, std=info.std, config=config,
                     plot=not args.no_plots)
    print(json.dumps(_summary(result), indent=2))
    print(f"wrote {Path(args.out) / 'analysis.json'}")
    return 0


def _summary(result: dict) -> dict:
    out = {"models": result.get("models")}
    if "redundancy" in result:
        out["channel_diversity"] = {k: result["redundancy"][k]["overall"] for k in ("baseline", "refconv")}
    if "skeleton" in result:
        out["skeleton_share"] = result["skeleton"].get("overall_share")
    if "spectrum" in result and "layers" in result["spectrum"]:
        out["refocus_lambda_max"] = {r["layer"]: r["lambda_max"]["max"] for r in result["spectrum"]["layers"]}
    if "attacks" in result:
        out["robust_accuracy"] = {k: {"eps": v["eps"], "fgsm": v.get("fgsm"), "pgd": v.get("pgd")}
                                  for k, v in result["attacks"].items() if isinstance(v, dict) and "eps" in v}
    return out
