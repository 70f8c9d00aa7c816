"""Analyses of RefConv models against their baselines: redundancy, skeleton, refocusing spectrum, landscape,
robustness, cost.

Every metric is a function returning plain data (floats, dicts, nested lists); plotting lives in
:mod:`refconv.analysis.plots` and reads that data. :func:`analyze` runs everything on a model pair and writes
``analysis.json`` and PNGs. Models holding training-time RefConv layers are folded (on a copy) before weight,
landscape and attack analyses; results say when that happened. Exact definitions: ``docs/analysis.md``.
"""

from __future__ import annotations

from refconv.analysis.attacks import DEFAULT_EPS, compare_robustness, fgsm, pgd, robust_accuracy
from refconv.analysis.compare import SECTIONS, AnalysisConfig, analyze, to_jsonable
from refconv.analysis.cost import (
    REGIMES,
    compare_cost,
    cost_report,
    count_flops,
    count_parameters,
    measure_latency,
    peak_memory,
)
from refconv.analysis.landscape import (
    compare_landscape,
    evaluate,
    filter_normalized_direction,
    interpolation_curve,
    loss_along_direction,
    loss_surface_2d,
    sharpness,
    take_batches,
)
from refconv.analysis.plots import (
    plot_cost,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_redundancy,
    plot_robustness,
    plot_skeleton,
    plot_spectrum,
)
from refconv.analysis._common import check_same_architecture, eligible_convs, fold_for_analysis, has_refconv_layers
from refconv.analysis.redundancy import (
    channel_diversity,
    compare_redundancy,
    kernel_distributions,
    layer_redundancy,
    redundancy_report,
)
from refconv.analysis.spectrum import layer_spectrum, refocus_spectrum
from refconv.analysis.skeleton import (
    compare_skeleton,
    cross_mask,
    kernel_skeleton,
    layer_skeletons,
    skeleton_report,
    skeleton_share,
    stages_by_name,
    stages_by_resolution,
)

__all__ = [
    "AnalysisConfig",
    "DEFAULT_EPS",
    "REGIMES",
    "SECTIONS",
    "analyze",
    "channel_diversity",
    "check_same_architecture",
    "compare_cost",
    "compare_landscape",
    "sharpness",
    "compare_redundancy",
    "compare_robustness",
    "compare_skeleton",
    "cost_report",
    "count_flops",
    "count_parameters",
    "cross_mask",
    "eligible_convs",
    "evaluate",
    "fgsm",
    "filter_normalized_direction",
    "fold_for_analysis",
    "has_refconv_layers",
    "interpolation_curve",
    "kernel_distributions",
    "kernel_skeleton",
    "layer_redundancy",
    "layer_skeletons",
    "loss_along_direction",
    "loss_surface_2d",
    "measure_latency",
    "peak_memory",
    "pgd",
    "plot_cost",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_redundancy",
    "plot_robustness",
    "plot_skeleton",
    "plot_spectrum",
    "layer_spectrum",
    "refocus_spectrum",
    "redundancy_report",
    "robust_accuracy",
    "skeleton_report",
    "skeleton_share",
    "stages_by_name",
    "stages_by_resolution",
    "take_batches",
    "to_jsonable",
]
