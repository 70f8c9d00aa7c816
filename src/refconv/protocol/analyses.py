"""Stage 4 of the protocol: the paper's analyses on this run's models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine import RunResult
from ..engine.artifacts import load_model
from .evaldata import test_loader

__all__ = ["run_analyses"]


def run_analyses(control_run: RunResult, refconv_run: RunResult, baseline_run: RunResult, out_dir: Path,
                 profile, data_dir: str | None) -> dict[str, Any]:
    """Analyse the RefConv model against the same-budget ``continue`` control (seed 0 of each).

    The control, not the shorter-trained baseline, is the comparison side: both saw the same extra epochs,
    so a difference is RefConv's, not more training's. The baseline's channel redundancy is added as a
    reference point. Returns the ``analysis.json`` data (file paths relative to ``out_dir``'s parent's parent).
    """
    from ..analysis import AnalysisConfig, analyze, redundancy_report

    control = load_model(control_run.run_dir).model.eval()
    refc = load_model(refconv_run.run_dir, which="last").model.eval()  # training-time form: cost sees both
    baseline = load_model(baseline_run.run_dir).model.eval()
    cfg = AnalysisConfig.from_dict(dict(profile.analysis))
    loader = test_loader(refconv_run.config, data_dir=data_dir, batch_size=profile.analysis_batch_size)
    info = loader.info
    batches = [b for _, b in zip(range(max(cfg.num_batches, cfg.attack_batches or 1)), loader)]
    result = analyze(control, refc, out_dir, held_out=batches[: cfg.num_batches],
                     test=batches[: cfg.attack_batches or len(batches)], example_input=batches[0][0][:32],
                     mean=info.mean, std=info.std, config=cfg)
    base_red = redundancy_report(baseline, mode=cfg.redundancy_mode, min_kernel_size=cfg.min_kernel_size,
                                 max_pairs=cfg.max_pairs, seed=cfg.seed)
    result["baseline_redundancy"] = base_red
    result["out_dir"] = str(out_dir)
    result["compared"] = {"baseline_side": f"continue (seed 0, {control_run.run_dir})",
                          "refconv_side": f"refconv (seed 0, {refconv_run.run_dir})"}
    return result
