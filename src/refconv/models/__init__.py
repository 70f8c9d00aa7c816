"""Model factory over timm and torchvision, and a strict loader for local weights files.

::

    model = create_model("tv/mobilenet_v3_small", num_classes=10, in_chans=1, weights="mnv3s_in1k.pth")
    load_weights(model, "runs/exp1")            # a finished run: its model/folded.safetensors

    model = create_model("fmnist/mobilenetv3_small_100")  # a pretrained model of refconv's registry

Weights never load silently: a classifier of another size, missing or unexpected keys, or a RefConv
(unfolded) checkpoint for a plain model raise a :class:`~refconv.errors.CheckpointError` saying what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from . import pretrained  # the registry is plain data (no torch): `refconv pretrained` lists it at once

if TYPE_CHECKING:
    from .factory import create_model, list_models, resolve_model_name
    from .surgery import (
        adapt_input_weight,
        classifier_names,
        first_conv_names,
        replace_classifier,
        replace_first_conv,
    )
    from .weights import (
        is_refconv_state_dict,
        load_state_dict_checked,
        load_weights,
        read_state_dict,
        resolve_weights_path,
    )

lazy_exports(__name__, {
    **dict.fromkeys(("create_model", "list_models", "resolve_model_name"), ".factory"),
    **dict.fromkeys(("adapt_input_weight", "classifier_names", "first_conv_names", "replace_classifier",
                     "replace_first_conv"), ".surgery"),
    **dict.fromkeys(("is_refconv_state_dict", "load_state_dict_checked", "load_weights", "read_state_dict",
                     "resolve_weights_path"), ".weights"),
})

__all__ = [
    "pretrained",
    "create_model",
    "list_models",
    "resolve_model_name",
    "load_weights",
    "read_state_dict",
    "resolve_weights_path",
    "is_refconv_state_dict",
    "load_state_dict_checked",
    "adapt_input_weight",
    "replace_first_conv",
    "replace_classifier",
    "first_conv_names",
    "classifier_names",
]
