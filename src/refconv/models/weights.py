"""Reading weights files in the formats people actually have, and loading them without silent surprises.

Accepted: a registry name (``fmnist/...``, :mod:`refconv.models.pretrained`); ``.safetensors``; ``torch.save`` files (``.pth``/``.pt``/``.bin``/``.ckpt``...) holding a raw state_dict
or a training checkpoint with a ``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema`` entry (timm's
and torchvision's training scripts, and ours); a finished run directory (its deployable weights, as
:func:`refconv.runlayout.deployable_weights` says: the one answer every room gives). The format is recognised from the file's first bytes,
not its extension. ``torch.load`` always runs with ``weights_only=True``: a weights file cannot run code.

A weights file's description (:func:`read_sidecar`) is its sidecar JSON or its safetensors header. Loading
(:func:`load_weights`, through :func:`refconv.models.load_checkpoint`) checks everything before touching the model, so a failed load leaves it as it was: a checkpoint
whose classifier has another number of classes, keys that are missing or unexpected, a RefConv (unfolded)
checkpoint given to a plain model and the reverse. The RefConv paper's reference code loads its basis with
``strict=False`` and silently trains from a zero basis when keys do not match; here that is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..convert import state_dict_format
from ..errors import CheckpointError, short_reason
from ..runlayout import deployable_weights
from . import catalog
from .checkpoint import load_checkpoint

__all__ = [
    "CHECKPOINT_KEYS",
    "resolve_weights_path",
    "read_state_dict",
    "is_refconv_state_dict",
    "load_weights",
    "sidecar_path",
    "read_sidecar",
    "read_weights",
    "DOWNSTREAM_FORMAT",
]

# The "format" of detect/segment checkpoints before they joined the engine (now "refconv-run" with a "task").
DOWNSTREAM_FORMAT = "refconv-downstream"

_log = logging.getLogger(__name__)

# Entries of a training checkpoint that hold the model's state_dict, in order of preference.
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_EMA_FIRST = ("state_dict_ema", "model_ema", "state_dict", "model")
# Wrappers that prefix every key: DistributedDataParallel / DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
    if catalog.is_pretrained_name(path):
        return catalog.weights_path(str(path))
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
    load_checkpoint(model, state, source=str(file), strict=strict)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON that describes a ``.safetensors`` weights file: beside it, same stem."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The description of a weights file: its sidecar JSON, else its safetensors header, else ``{}``."""
    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    if path.suffix == ".safetensors" and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            return {k[len("refconv."):]: json.loads(v) for k, v in meta.items() if k.startswith("refconv.")}
        except Exception:  # noqa: BLE001 - an unreadable header describes nothing
            return {}
    return {}


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file into ``(state_dict, info)``; ``info`` is a checkpoint's metadata (``format``,
    ``task``, ``arch``...) or a ``.safetensors`` sidecar's, ``{}`` for a bare state_dict.

    Raises:
        CheckpointError: missing, truncated or unreadable file (see :func:`refconv.models.read_state_dict`).
    """
    file = resolve_weights_path(path)
    info: dict[str, Any] = {}
    if file.suffix != ".safetensors":
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:
            obj = None  # read_state_dict below raises the detailed error
        if isinstance(obj, dict):
            keep = ("conversion", "config", "backbone")
            info = {k: v for k, v in obj.items() if not isinstance(v, (dict, Tensor)) or k in keep}
            if obj.get("format") == DOWNSTREAM_FORMAT and isinstance(obj.get("state_dict"), dict):
                return dict(obj["state_dict"]), info
    else:
        info = read_sidecar(file)
    return read_state_dict(file), info
