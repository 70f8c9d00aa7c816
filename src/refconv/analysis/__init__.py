"""Analyses of RefConv models against their baselines: redundancy, skeleton, refocusing spectrum, landscape,
robustness, cost.

Every metric is a function returning plain data (floats, dicts, nested lists); plotting lives in
:mod:`refconv.analysis.plots` and reads that data. :func:`analyze` runs everything on a model pair and writes
``analysis.json`` and PNGs. Models holding training-time RefConv layers are folded (on a copy) before weight,
landscape and attack analyses; results say when that happened. Exact definitions: ``docs/analysis.md``.
"""

from __future__ import annotations

# Each module's ``__all__`` says what it exports; the package re-exports exactly that, plus four checks of
# ``_common``.
from refconv.analysis import attacks, compare, cost, landscape, plots, redundancy, skeleton, spectrum
from refconv.analysis.attacks import *  # noqa: F403
from refconv.analysis.compare import *  # noqa: F403
from refconv.analysis.cost import *  # noqa: F403
from refconv.analysis.landscape import *  # noqa: F403
from refconv.analysis.plots import *  # noqa: F403
from refconv.analysis._common import check_same_architecture, eligible_convs, fold_for_analysis, has_refconv_layers
from refconv.analysis.redundancy import *  # noqa: F403
from refconv.analysis.spectrum import *  # noqa: F403
from refconv.analysis.skeleton import *  # noqa: F403

__all__ = sorted(
    {
        *attacks.__all__, *compare.__all__, *cost.__all__, *landscape.__all__, *plots.__all__,
        *redundancy.__all__, *spectrum.__all__, *skeleton.__all__,
        "check_same_architecture", "eligible_convs", "fold_for_analysis", "has_refconv_layers",
    }
)
