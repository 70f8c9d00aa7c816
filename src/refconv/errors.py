"""Exceptions raised by refconv.

Every error a user can trigger with bad input is one of these, and its message names the problem and the
fix. They subclass the builtin exception a caller would already catch (``ValueError``, ``TypeError``,
``FileNotFoundError``...), so generic handlers keep working.
"""

from __future__ import annotations

import re

__all__ = [
    "RefConvError",
    "ConversionError",
    "AlreadyConvertedError",
    "NoEligibleConvError",
    "StateDictFormatError",
    "DataError",
    "CorruptImageError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
    "PretrainedError",
    "UnknownPretrainedError",
    "PretrainedNotShippedError",
    "short_reason",
]


class RefConvError(Exception):
    """Base class of every refconv error."""


class ConversionError(RefConvError, ValueError):
    """A convolution cannot be converted with the requested settings (map_k, groups, dtype...)."""


class AlreadyConvertedError(ConversionError):
    """``convert`` was called on layers that already are RefConv layers."""


class NoEligibleConvError(ConversionError):
    """The model (or the include/exclude selection) holds no convolution that can be converted."""


class DataError(RefConvError, FileNotFoundError):
    """A dataset is missing, truncated or malformed."""


class CorruptImageError(DataError):
    """An image file of an image folder cannot be decoded.

    The run stops (it does not skip): a skipped image silently changes the dataset and, under DDP, the ranks'
    step counts. When raised in a data loader worker, PyTorch re-raises it in the main process as
    ``CorruptImageError(<worker traceback text>)``; the constructor then keeps only the original message, so
    the command line still prints one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)


class ModelError(RefConvError, ValueError):
    """An unknown model name or weights that do not fit the model."""


class CheckpointError(RefConvError, ValueError):
    """A checkpoint or run directory that cannot be used as asked."""


class StateDictFormatError(CheckpointError, KeyError):
    """A state_dict in one format (folded / RefConv) was given where the other one is needed.

    A :class:`CheckpointError` (weights that cannot be used as asked), so a caller catching those catches it.
    """

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


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
def short_reason(exc: BaseException, limit: int = 160) -> str:
    """``"TypeName: first sentence"`` of an exception, cut at a word, for a one-line message.

    Library errors (torch.load, PIL, zipfile) are often several lines or paragraphs long; quoting them whole
    breaks the one-line contract, and cutting at a fixed width leaves half a sentence.
    """
    text = " ".join(str(exc).split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0] if text else ""
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
