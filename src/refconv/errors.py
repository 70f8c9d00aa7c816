"""Exceptions raised by refconv.

Every error a user can trigger with bad input is one of these, and its message names the problem and the
fix. They subclass the builtin exception a caller would already catch (``ValueError``, ``TypeError``,
``FileNotFoundError``...), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "RefConvError",
    "ConversionError",
    "AlreadyConvertedError",
    "NoEligibleConvError",
    "StateDictFormatError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
    "PretrainedError",
    "UnknownPretrainedError",
    "PretrainedNotShippedError",
]


class RefConvError(Exception):
    """Base class of every refconv error."""


class ConversionError(RefConvError, ValueError):
    """A convolution cannot be converted with the requested settings (map_k, groups, dtype...)."""


class AlreadyConvertedError(ConversionError):
    """``convert`` was called on layers that already are RefConv layers."""


class NoEligibleConvError(ConversionError):
    """The model (or the include/exclude selection) holds no convolution that can be converted."""


class StateDictFormatError(RefConvError, KeyError):
    """A state_dict in one format (folded / RefConv) was given where the other one is needed."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class DataError(RefConvError, FileNotFoundError):
    """A dataset is missing, truncated or malformed."""


class ModelError(RefConvError, ValueError):
    """An unknown model name or weights that do not fit the model."""


class CheckpointError(RefConvError, ValueError):
    """A checkpoint or run directory that cannot be used as asked."""


class ConfigError(RefConvError, ValueError):
    """A configuration file or option that is invalid (unknown keys, bad values)."""


class PretrainedError(CheckpointError):
    """A pretrained model of the registry (``fmnist/...``) that cannot be used as asked: weights whose SHA-256
    does not match the card, a card that does not fit the model or input size asked for."""


class UnknownPretrainedError(PretrainedError, LookupError):
    """A name that is not in the registry of pretrained models (the message lists the names)."""


class PretrainedNotShippedError(PretrainedError):
    """A registry entry whose weights have not been trained and published yet (the message names the commands
    that do it)."""
