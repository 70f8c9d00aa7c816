"""Stage 4 of the protocol: the paper's analyses on this run's models, for every seed.

Each seed's RefConv model is compared with the same seed's same-budget ``continue`` control; the scalars of
every seed are then summarised (mean ± sample std) and differenced per seed (RefConv − continue, with a t
interval), so no analysis claim rests on one seed. Plots are drawn for seed 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..stats import paired_difference, summarize

__all__ = ["run_analyses", "compared_sides", "analysis_scalars", "summarize_analyses"]


def run_analyses(control: nn.Module, refconv_model: nn.Module, start: nn.Module | None, loader: DataLoader,
                 out_dir: Path, profile: Any, *, compared: Mapping[str, str], plot: bool = True) -> dict[str, Any]:
    """Analyse one seed's RefConv model against the same seed's same-budget ``continue`` control.

    The control, not the starting model, is the comparison side: both saw the same extra epochs, so a
    difference is RefConv's, not more training's. ``refconv_model`` is the training-time form (the cost analysis
    sees both forms); ``start`` (what the arms started from; None to skip) adds its channel redundancy as a
    reference point. ``loader`` is the test split (its ``info`` gives the normalisation); ``compared`` names the
    two sides in the output. Returns the ``analysis.json`` data.
    """
    from ..analysis import AnalysisConfig, analyze, redundancy_report

    cfg = AnalysisConfig.from_dict(dict(profile.analysis))
    info = loader.info  # type: ignore[attr-defined]
    batches = [b for _, b in zip(range(max(cfg.num_batches, cfg.attack_batches or 1)), loader)]
    result = analyze(control.eval(), refconv_model.eval(), out_dir, held_out=batches[: cfg.num_batches],
                     test=batches[: cfg.attack_batches or len(batches)], example_input=batches[0][0][:32],
                     mean=info.mean, std=info.std, config=cfg, plot=plot)
    if start is not None:
        result["baseline_redundancy"] = redundancy_report(start.eval(), mode=cfg.redundancy_mode,
                                                          min_kernel_size=cfg.min_kernel_size,
                                                          max_pairs=cfg.max_pairs, seed=cfg.seed)
    result["out_dir"] = str(out_dir)
    result["compared"] = dict(compared)
    return result


def compared_sides(control_run: Any, refconv_run: Any) -> dict[str, str]:
    """How :func:`run_analyses` names its two sides: the arm, the seed and the run directory of each."""
    return {"baseline_side": f"continue (seed {control_run.config.get('seed')}, {control_run.run_dir})",
            "refconv_side": f"refconv (seed {refconv_run.config.get('seed')}, {refconv_run.run_dir})"}


def analysis_scalars(a: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The comparable scalars of one seed's analysis: ``{metric: {"continue": x, "refconv": y}}``.

    Metric names say what they measure and which way is better, so the report can print them as they are.
    """
    out: dict[str, dict[str, float]] = {}

    def put(name: str, base: Any, ref: Any) -> None:
        if isinstance(base, (int, float)) and isinstance(ref, (int, float)):
            out[name] = {"continue": float(base), "refconv": float(ref)}

    red = a.get("redundancy") or {}
    if "baseline" in red:
        put("channel diversity (mean symmetric KL; higher = less redundant)", red["baseline"].get("overall"),
            red["refconv"].get("overall"))
    sk = a.get("skeleton") or {}
    if "baseline" in sk:
        put("kernel skeleton share (central cross)", sk["baseline"].get("overall_share"),
            sk["refconv"].get("overall_share"))
    ls = (a.get("landscape") or {}).get("summary") or {}
    if "baseline" in ls:
        put("loss at the trained weights (held-out batches)", ls["baseline"]["center_loss"],
            ls["refconv"]["center_loss"])
        sb, sr = ls["baseline"].get("sharpness"), ls["refconv"].get("sharpness")
        if sb and sr:
            for i, r in enumerate(sb["radii"]):
                put(f"sharpness: loss rise at radius {r:g} (lower = flatter)", sb["rise"][i], sr["rise"][i])
    rob = a.get("attacks") or {}
    if "baseline" in rob and "refconv" in rob:
        b, r = rob["baseline"], rob["refconv"]
        put("clean top-1 % (attacked images)", 100 * b["clean"], 100 * r["clean"])
        for attack in ("fgsm", "pgd"):
            if attack in b and attack in r:
                for i, eps in enumerate(b["eps"]):
                    if eps > 0:
                        put(f"{attack.upper()} top-1 % at eps {eps:g}", 100 * b[attack][i], 100 * r[attack][i])
    return out


def summarize_analyses(per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int], *,
                       confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per metric over seeds: each side's summary and the paired difference RefConv − continue.

    Metrics missing from a seed (a section skipped there) are left out rather than averaged over fewer seeds.
    """
    scal = [analysis_scalars(a) for a in per_seed]
    names = [n for n in scal[0] if all(n in s for s in scal)] if scal else []
    rows = []
    for name in names:
        cont = [s[name]["continue"] for s in scal]
        ref = [s[name]["refconv"] for s in scal]
        rows.append({"metric": name, "seeds": list(seeds), "continue": cont, "refconv": ref,
                     "continue_summary": summarize(cont).to_dict(), "refconv_summary": summarize(ref).to_dict(),
                     "diff": paired_difference(ref, cont, confidence=confidence).to_dict()})
    return rows
