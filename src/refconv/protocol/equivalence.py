"""Stage 3 of the protocol: the folded model is the trained RefConv model, at the baseline's cost."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..engine import RunResult
from ..engine.result import TrainedModels
from ..models import read_state_dict

__all__ = ["check_folding"]


@torch.no_grad()
def check_folding(refconv_run: RunResult, models: TrainedModels, baseline: nn.Module, loader: Iterable[Any], *,
                  latency_repeats: int) -> dict[str, Any]:
    """Compare the unfolded RefConv model, its folded weights (as shipped) and the start on the test set.

    ``models`` are the run's (:class:`~refconv.protocol.runner.StudyModels`: from memory when trained in this
    process); the shipped file is checked to hold exactly the folded model's tensors, so what is compared is what
    ships. ``baseline`` is what the arms started from: the folded model must cost exactly what it costs.

    Returns max |logit difference| (absolute and relative to the logit scale), how many predictions are
    identical, both accuracies, parameters and FLOPs of folded vs baseline, and their latency measured side
    by side (interleaved, same input).
    """
    from ..analysis.cost import count_flops, count_parameters, measure_latency

    # Implicit refocusing trains the stock model itself: its deployable weights are the model, nothing is folded.
    deployed = refconv_run.folded_path or refconv_run.weights_path
    if deployed is None:
        raise RuntimeError(f"{refconv_run.run_dir}: the RefConv run wrote no deployable weights.")
    unfolded, folded = models.trained.eval(), models.deployed.eval()
    shipped_identical = _same_tensors(read_state_dict(deployed), folded.state_dict())
    max_abs = 0.0
    scale = 0.0
    same = n = correct_u = correct_f = 0
    example = None
    for x, y in loader:
        if example is None:
            example = x
        lu, lf = unfolded(x), folded(x)
        max_abs = max(max_abs, (lu - lf).abs().max().item())
        scale = max(scale, lu.abs().max().item())
        pu, pf = lu.argmax(1), lf.argmax(1)
        same += int((pu == pf).sum())
        correct_u += int((pu == y).sum())
        correct_f += int((pf == y).sum())
        n += len(y)

    x1 = example[:1]
    p_f, p_b, p_u = count_parameters(folded), count_parameters(baseline), count_parameters(unfolded)
    f_f, f_b = count_flops(folded, x1), count_flops(baseline, x1)
    # Forward + backward of one training batch: RefConv's kernel transform is paid once per step, not per image.
    tsf_u = count_flops(unfolded, example, regime="train_step")
    tsf_b = count_flops(baseline, example, regime="train_step")
    lat = measure_latency({"baseline": baseline, "folded": folded}, example, warmup=2, repeats=latency_repeats)
    return {
        "run_dir": str(refconv_run.run_dir),
        "seed": refconv_run.config.get("seed"),
        "test_images": n,
        "max_abs_logit_err": max_abs,
        "max_rel_logit_err": max_abs / scale if scale else 0.0,
        "identical_predictions": same,
        "top1_unfolded": 100.0 * correct_u / n,
        "top1_folded": 100.0 * correct_f / n,
        "params": {"baseline": p_b["total"], "folded": p_f["total"], "training_time": p_u["total"],
                   "training_time_trainable": p_u["trainable"]},
        "flops_per_image": {"baseline": f_b, "folded": f_f},
        "train_step_flops": {"batch": int(example.shape[0]), "baseline": tsf_b, "refconv": tsf_u},
        "cost_equal": p_b["total"] == p_f["total"] and f_b == f_f,
        "shipped_weights_identical": shipped_identical,
        "latency_ms": {"batch": int(example.shape[0]), **lat},
    }


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Same keys, and every tensor equal bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
