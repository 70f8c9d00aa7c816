"""Reading weights files in the formats people actually have, and loading them without silent surprises.

Accepted: a registry name (``fmnist/...``, :mod:`refconv.models.pretrained`); ``.safetensors``; ``torch.save`` files (``.pth``/``.pt``/``.bin``/``.ckpt``...) holding a raw state_dict
or a training checkpoint with a ``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema`` entry (timm's
and torchvision's training scripts, and ours); a finished run directory (its deployable weights, as
:func:`refconv.runlayout.deployable_weights` says: the one answer every room gives). The format is recognised from the file's first bytes,
not its extension. ``torch.load`` always runs with ``weights_only=True``: a weights file cannot run code.

Loading checks everything before touching the model, so a failed load leaves it as it was: a checkpoint
whose classifier has another number of classes, keys that are missing or unexpected, a RefConv (unfolded)
checkpoint given to a plain model and the reverse. The RefConv paper's reference code loads its basis with
``strict=False`` and silently trains from a zero basis when keys do not match; here that is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..convert import check_state_dict_format, state_dict_format
from ..errors import CheckpointError, short_reason
from ..runlayout import deployable_weights
from .surgery import adapt_input_weight, classifier_names, first_conv_names

__all__ = [
    "CHECKPOINT_KEYS",
    "resolve_weights_path",
    "read_state_dict",
    "is_refconv_state_dict",
    "load_weights",
    "load_state_dict_checked",
]

_log = logging.getLogger(__name__)

# Entries of a training checkpoint that hold the model's state_dict, in order of preference.
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_EMA_FIRST = ("state_dict_ema", "model_ema", "state_dict", "model")
# Wrappers that prefix every key: DistributedDataParallel / DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed in an error message


def _safe_globals() -> list[Any]:
    """Non-tensor objects a training checkpoint commonly holds, all inert: argparse args, numpy scalars/arrays."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        # Scalars (metrics) and arrays (numpy RNG state): rebuilt from raw bytes, nothing else runs.
        allowed += [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
        allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    except (ImportError, AttributeError):  # pragma: no cover - numpy missing or reorganised
        _log.debug("numpy globals not allowlisted for torch.load")
    return allowed


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """The weights file ``path`` refers to: itself, a finished run directory's deployable weights, or the verified
    weights of a pretrained model of the registry (``fmnist/mobilenetv3_small_100``, see :mod:`refconv.models.pretrained`).

    Raises:
        CheckpointError: nothing at ``path``, an unfinished run (naming ``--resume`` and its ``last.pt``), or a
            directory that is not a run.
        PretrainedError: a registry name that is unknown, not trained yet, or whose file fails its SHA-256.
    """
    from . import pretrained

    if pretrained.is_pretrained_name(path):
        return pretrained.weights_path(str(path))
    p = Path(path).expanduser()
    if p.is_dir():
        return deployable_weights(p)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist.")
    return p


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"  # torch.save's zip format
    if head[:1] == b"\x80":
        return "torch"  # legacy torch.save (a raw pickle)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # u64 header length, then the JSON header
    if len(head) < 9:
        raise CheckpointError(f"{path}: truncated or empty weights file ({len(head)} bytes). Use another copy of the "
                              "weights, or the run's checkpoints/last.pt.")
    raise CheckpointError(f"{path}: not a weights file refconv can read (expected safetensors or a torch.save file). "
                          "Pass a .safetensors/.pth/.pt file or a run directory.")


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _extract(obj: Any, path: Path, use_ema: bool) -> dict[str, Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _EMA_FIRST if use_ema else CHECKPOINT_KEYS:
            value = obj.get(key)
            if _is_state_dict(value):
                return dict(value)
            if isinstance(value, nn.Module):  # pragma: no cover - weights_only refuses modules
                return value.state_dict()
        keys = ", ".join(sorted(map(str, obj))[:10])
        raise CheckpointError(
            f"{path}: no state_dict found: not a mapping of tensors, and no {'/'.join(CHECKPOINT_KEYS)} entry "
            f"holding one (top-level keys: {keys})."
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict.")


def read_state_dict(path: str | os.PathLike, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Read a weights file or run directory into a plain ``{key: tensor}`` dict on the CPU.

    Wrapper prefixes (``module.``, ``_orig_mod.``) are stripped. ``use_ema`` prefers a checkpoint's EMA
    weights (``state_dict_ema`` / ``model_ema``) when it has them.

    Raises:
        CheckpointError: missing, truncated or corrupt file (naming it), a file holding Python objects beyond
            tensors and plain data, or no state_dict inside.
    """
    file = resolve_weights_path(path)
    kind = _sniff(file)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(file), device="cpu")
        except Exception as e:  # SafetensorError, OSError
            raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({short_reason(e)}). Use another "
                                  "copy of the weights, or the run's checkpoints/last.pt.") from e
    else:
        try:
            with torch.serialization.safe_globals(_safe_globals()):
                raw = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # RuntimeError (bad zip), UnpicklingError, EOFError, KeyError (bad pickle)...
            if "Weights only load failed" in str(e):
                raise CheckpointError(
                    f"{file}: holds Python objects other than tensors and plain data, which refconv does not "
                    "unpickle (a weights file must not be able to run code). If you trust it, re-save just the "
                    "weights: torch.save(torch.load(FILE, weights_only=False)['state_dict'], 'weights.pth')."
                ) from e
            raise CheckpointError(f"{file}: truncated or corrupt torch file ({short_reason(e)}). Use another copy "
                                  "of the weights, or the run's checkpoints/last.pt.") from e
    state = _extract(raw, file, use_ema)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        out[_strip_wrappers(str(key))] = value
    return out


def is_refconv_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys are a converted (unfolded) RefConv model's (:func:`refconv.convert.state_dict_format`)."""
    return state_dict_format(state_dict) == "refconv"


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" ... ({len(items)} in all)" if len(items) > _SHOW else "")


@torch.no_grad()
def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "the state_dict",
    strict: bool = True,
    new_head: bool = False,
    adapt_in_chans: bool = False,
) -> list[str]:
    """Load ``state_dict`` into ``model`` after checking it fits; nothing is loaded when a check fails.

    Args:
        model: the model to fill.
        state_dict: keys without wrapper prefixes.
        source: what to call the weights in messages (a file name).
        strict: every key must match. ``False`` drops a classifier of another size (a new head is trained)
            and tolerates missing/unexpected keys with a warning; other shape mismatches stay errors.
        new_head: the caller asked for this model's number of classes: a classifier of another size in the
            weights is dropped quietly (the fine-tuning case).
        adapt_in_chans: the caller asked for this model's input channels: a stem kernel for another number
            of channels is adapted with :func:`~refconv.models.surgery.adapt_input_weight`.

    Returns:
        Keys of the model left at their initial values (a dropped head).

    Raises:
        CheckpointError: see the module docstring (a format mismatch is its subclass
            :class:`~refconv.errors.StateDictFormatError`).
    """
    check_state_dict_format(model, state_dict, source=source)
    model_sd = model.state_dict()

    sd = dict(state_dict)
    if adapt_in_chans:
        for name in first_conv_names(model):
            key = name + ".weight"
            if key in sd and key in model_sd:
                got, want = sd[key].shape, model_sd[key].shape
                if len(got) == len(want) and got[1] != want[1] and got[:1] == want[:1] and got[2:] == want[2:]:
                    _log.info("%s: adapting '%s' from %d to %d input channels", source, key, got[1], want[1])
                    sd[key] = adapt_input_weight(sd[key], int(want[1]))

    heads = classifier_names(model)
    mismatched = [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    # A classifier mismatch is another number of outputs over the same features; anything else is structural.
    head_mismatch = [k for k in mismatched if _under(k, heads) and sd[k].shape[1:] == model_sd[k].shape[1:]]
    other_mismatch = [k for k in mismatched if k not in head_mismatch]
    if other_mismatch:
        detail = [
            f"'{k}' {tuple(sd[k].shape)} in the file vs {tuple(model_sd[k].shape)} in the model" for k in other_mismatch
        ]
        stems = {n + ".weight" for n in first_conv_names(model)}
        stem = next(
            (k for k in other_mismatch if k in stems and sd[k].ndim > 1 and sd[k].ndim == model_sd[k].ndim), None
        )
        hint = (
            f" The checkpoint's input layer '{stem}' takes {sd[stem].shape[1]} channels, the model's "
            f"{model_sd[stem].shape[1]}: pass --in-chans {sd[stem].shape[1]} to match it, or build the model with "
            "create_model(..., in_chans=N, weights=FILE), which adapts the stem."
            if stem is not None and sd[stem].shape[1] != model_sd[stem].shape[1]
            else " It was saved from another architecture or variant."
        )
        raise CheckpointError(
            f"{source} does not fit the model: {len(other_mismatch)} shape mismatch(es): {_listing(detail)}.{hint}"
        )
    unexpected = [k for k in sd if k not in model_sd]
    head_unexpected = [k for k in unexpected if _under(k, heads)]
    dropped: list[str] = []
    if head_mismatch or head_unexpected:
        if new_head or not strict:
            dropped = head_mismatch + head_unexpected
            for k in dropped:
                del sd[k]
            log = _log.info if new_head else _log.warning
            log(
                "%s: classifier of another size dropped (%s); the model's new head is trained.",
                source,
                ", ".join(dropped),
            )
        elif head_mismatch:
            k = head_mismatch[0]
            n_file, n_model = int(sd[k].shape[0]), int(model_sd[k].shape[0])
            detail = [
                f"'{k}' {tuple(sd[k].shape)} in the file vs {tuple(model_sd[k].shape)} in the model"
                for k in head_mismatch
            ]
            raise CheckpointError(
                f"{source}: classifier mismatch: the checkpoint has {n_file} classes, the model {n_model} "
                f"({_listing(detail)}). Pass --num-classes {n_file} (num_classes={n_file}) to use its head, or "
                "load with strict=False to drop the head and train a new one."
            )
    unexpected = [k for k in sd if k not in model_sd]
    # BatchNorm's num_batches_tracked is absent from old checkpoints and filled in by BatchNorm itself.
    absent = [k for k in model_sd if k not in sd and not k.endswith("num_batches_tracked")]
    fresh = [k for k in absent if dropped and _under(k, heads)]  # a dropped head is re-initialised on purpose
    missing = [k for k in absent if k not in fresh]
    if not any(k in model_sd for k in sd):
        raise CheckpointError(
            f"{source}: none of its {len(sd)} keys match the model (e.g. {_listing(sorted(sd))}; the model has "
            f"{_listing(list(model_sd))}). It belongs to another architecture."
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_listing(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listing(unexpected)}")
        message = f"{source} does not match the model's keys; " + "; ".join(parts) + "."
        if strict:
            raise CheckpointError(
                message + " It was saved from another architecture or variant; load with strict=False to load "
                "the matching keys only."
            )
        warnings.warn(message + " Loading the matching keys only (strict=False).", stacklevel=3)
    model.load_state_dict(sd, strict=False)
    return fresh


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True, use_ema: bool = False) -> None:
    """Load a weights file or run directory into ``model`` in place, refusing anything that does not fit.

    Args:
        model: a plain model (or a converted RefConv model, for RefConv checkpoints).
        path: ``.safetensors``, a ``torch.save`` file (raw state_dict or training checkpoint) or a finished run
            directory (its ``model.safetensors`` / ``folded.safetensors``).
        strict: require every key to match. ``False`` drops a classifier with another number of classes and
            loads the matching keys only, with a warning naming the rest.
        use_ema: prefer a training checkpoint's EMA weights.

    Raises:
        CheckpointError: unreadable file (named), classifier mismatch (how to fix it), missing or unexpected
            keys, other shape mismatches, a RefConv checkpoint for a plain model or the reverse.
    """
    file = resolve_weights_path(path)
    state = read_state_dict(file, use_ema=use_ema)
    load_state_dict_checked(model, state, source=str(file), strict=strict)
