"""One model API over timm, torchvision and refconv's own models, and one loader for weights.

::

    model = get_model("tv/mobilenet_v3_small", num_classes=10, in_chans=1, weights="mnv3s_in1k.pth")
    model = get_model("fmnist/mobilenetv3_small_100")                 # a pretrained model of refconv's catalogue
    model = get_model("ssdlite", num_classes=21, weights_backbone="fmnist_run/")   # a detector, same registry
    load_checkpoint(model, read_state_dict("runs/exp1"), source="runs/exp1")         # the one strict loader
    list_models(task="segmentation")

Layout (timm's ``_registry`` / ``_builder``, torchvision's ``_api``): :mod:`._api` (``get_model``,
``list_models``), :mod:`._registry` (registered names), :mod:`.catalog` (the pretrained entries, plain data),
:mod:`.factory` (the timm / torchvision classifier zoos), :mod:`.detection` and :mod:`.trunk` (detectors and
segmenters), :mod:`.checkpoint` (``load_checkpoint``), :mod:`.weights` (reading files), :mod:`.surgery` (stem and
head edits), :mod:`.hub` (export to a folder timm loads), :mod:`.pretrained` (the catalogue's public face).

Weights never load silently: a classifier of another size, missing or unexpected keys, or a RefConv
(unfolded) checkpoint for a plain model raise a :class:`~refconv.errors.CheckpointError` saying what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from . import pretrained  # the catalogue is plain data (no torch): `refconv pretrained` lists it at once

if TYPE_CHECKING:
    from ._api import create_model, get_model, list_models
    from ._registry import register_model
    from .checkpoint import load_checkpoint, load_state_dict_checked, rebuild_converted
    from .factory import resolve_model_name
    from .hub import export_hub_dir
    from .surgery import (
        adapt_input_weight,
        classifier_names,
        first_conv_names,
        replace_classifier,
        replace_first_conv,
    )
    from .weights import (
        is_refconv_state_dict,
        load_weights,
        read_sidecar,
        read_state_dict,
        read_weights,
        resolve_weights_path,
    )

lazy_exports(__name__, {
    **dict.fromkeys(("create_model", "get_model", "list_models"), "._api"),
    "register_model": "._registry",
    **dict.fromkeys(("load_checkpoint", "load_state_dict_checked", "rebuild_converted"), ".checkpoint"),
    "resolve_model_name": ".factory",
    "export_hub_dir": ".hub",
    **dict.fromkeys(("adapt_input_weight", "classifier_names", "first_conv_names", "replace_classifier",
                     "replace_first_conv"), ".surgery"),
    **dict.fromkeys(("is_refconv_state_dict", "load_weights", "read_sidecar", "read_state_dict", "read_weights",
                     "resolve_weights_path"), ".weights"),
})

__all__ = [
    "pretrained",
    "get_model",
    "list_models",
    "register_model",
    "load_checkpoint",
    "create_model",
    "resolve_model_name",
    "rebuild_converted",
    "export_hub_dir",
    "load_weights",
    "read_state_dict",
    "read_weights",
    "read_sidecar",
    "resolve_weights_path",
    "is_refconv_state_dict",
    "load_state_dict_checked",
    "adapt_input_weight",
    "replace_first_conv",
    "replace_classifier",
    "first_conv_names",
    "classifier_names",
]
