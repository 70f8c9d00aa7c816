"""The pretrained models made by this project, for users: the catalogue (:mod:`refconv.models.catalog`) and ``load``.

::

    model = refconv.pretrained.load("fmnist/mobilenetv3_small_100")        # SHA-256 checked, eval mode
    refconv.pretrained.list_pretrained()                                     # name, model, input, top-1, status
    model = timm.create_model(**refconv.pretrained.timm_kwargs("fmnist/mobilenetv3_small_100"))

Everything but :func:`load` is the catalogue's (plain data, no torch at import time); :func:`load` builds through
the one model API, :func:`refconv.models.get_model`.
"""

from __future__ import annotations

import os
from typing import Any

from . import catalog
from .catalog import *  # noqa: F403  (the catalogue's names: entry, weights_path, list_pretrained, timm_kwargs...)

__all__ = [*catalog.__all__, "load"]


def load(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    root: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Any:
    """The entry's stock model with its verified weights (``strict=True``), in eval mode:
    ``get_model(name, ...).eval()``.

    Args:
        num_classes: another classifier width: the backbone is kept and a new head initialised (fine-tuning).
        in_chans: other input channels: the stem kernels are adapted (see :func:`refconv.models.get_model`).
        root: another registry root.
        **kwargs: passed to the model builder (``drop_rate``...).

    Raises:
        the errors of :func:`weights_path`; CheckpointError when the file does not fit the model.
    """
    from ._api import get_model

    return get_model(name, num_classes=num_classes, in_chans=in_chans, root=root, **kwargs).eval()
