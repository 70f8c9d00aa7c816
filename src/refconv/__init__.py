"""refconv: Re-parameterized Refocusing Convolution for pretrained ConvNets.

Convert a pretrained model, train it (Refocusing Learning), fold it back::

    import refconv
    model = refconv.convert(model)          # eligible convs -> RefConv layers, basis frozen
    ...                                     # train as usual
    model = refconv.reparameterize(model)   # plain model, original keys/classes/cost
"""

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
from .errors import (
    AlreadyConvertedError,
    CheckpointError,
    ConfigError,
    ConversionError,
    DataError,
    ModelError,
    NoEligibleConvError,
    RefConvError,
    StateDictFormatError,
)
from .layers import RefConv
from .transform import capped_groups, default_groups, refocus

__version__ = "0.1.0"

__all__ = [
    "RefConv",
    "convert",
    "reparameterize",
    "plan_conversion",
    "LayerPlan",
    "refconv_layers",
    "conversion_config",
    "state_dict_format",
    "load_state_dict",
    "capped_groups",
    "default_groups",
    "refocus",
    "RefConvWarning",
    "RefConvError",
    "ConversionError",
    "AlreadyConvertedError",
    "NoEligibleConvError",
    "StateDictFormatError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
    "__version__",
]
