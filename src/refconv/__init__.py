"""refconv: Re-parameterized Refocusing Convolution for pretrained ConvNets.

Convert a pretrained model, train it (Refocusing Learning), fold it back::

    import refconv
    model = refconv.convert(model)          # eligible convs -> RefConv layers, basis frozen
    ...                                     # train as usual
    model = refconv.reparameterize(model)   # plain model, original keys/classes/cost

Pretrained models made by this project (Fashion-MNIST, converged): ``refconv.pretrained.load("fmnist/...")``,
``refconv.pretrained.list_pretrained()``; see :mod:`refconv.models.pretrained`.
"""

from typing import TYPE_CHECKING

from . import errors
from ._lazy import lazy_exports
from .errors import (
    AlreadyConvertedError,
    CheckpointError,
    ConfigError,
    ConversionError,
    DataError,
    ModelError,
    NoEligibleConvError,
    PretrainedError,
    PretrainedNotShippedError,
    RefConvError,
    StateDictFormatError,
    UnknownPretrainedError,
)

if TYPE_CHECKING:
    from .convert import (
        LayerPlan,
        RefConvWarning,
        conversion_config,
        convert,
        load_state_dict,
        plan_conversion,
        refconv_layers,
        reparameterize,
        state_dict_format,
    )
    from .layers import RefConv
    from .models import pretrained
    from .transform import capped_groups, default_groups, refocus

# torch is imported on first use of these names, not by ``import refconv`` (the CLI answers --help at once).
_EXPORTS = {
    **dict.fromkeys(("LayerPlan", "RefConvWarning", "conversion_config", "convert", "load_state_dict",
                     "plan_conversion", "refconv_layers", "reparameterize", "state_dict_format"), ".convert"),
    "RefConv": ".layers",
    "pretrained": ".models",  # the registry module: refconv.pretrained.load("fmnist/..."), list_pretrained()
    **dict.fromkeys(("capped_groups", "default_groups", "refocus"), ".transform"),
}
lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

# The public names: the lazy ones above, the errors imported above (in refconv.errors' order) and the version; each
# list is written once, where its names come from.
__all__ = [*_EXPORTS, *(name for name in errors.__all__ if name in globals()), "__version__"]
