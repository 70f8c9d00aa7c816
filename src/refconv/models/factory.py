"""The classifier zoos behind :func:`refconv.models.get_model`: one name space over timm and torchvision.

Names are ``"timm/<name>"`` or ``"tv/<name>"`` (also ``timm:``, ``tv:``, ``torchvision/``, ``torchvision:``). A bare
name is looked up in timm, then torchvision: ``"resnet18"`` exists in both and resolves to timm, so write
``"tv/resnet18"`` for torchvision's. timm pretrained tags work (``"timm/resnet18.a1_in1k"``).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from .catalog import split_zoo
from .checkpoint import load_checkpoint
from .surgery import replace_classifier, replace_first_conv
from .weights import read_state_dict

__all__ = ["ZOOS", "zoo_names", "resolve_model_name", "build_classifier"]

_log = logging.getLogger(__name__)

ZOOS = ("timm", "tv")
_ZOO_ALIASES = {"timm": "timm", "tv": "tv", "torchvision": "tv"}
_OFFLINE_ENV = ("REFCONV_OFFLINE", "HF_HUB_OFFLINE")
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _timm() -> Any | None:
    try:
        import timm
    except ImportError:
        return None
    return timm


def _timm_names() -> list[str]:
    timm = _timm()
    return list(timm.list_models()) if timm is not None else []


def _tv_names() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models())


def zoo_names(zoo: str | None = None) -> list[str]:
    """Every classifier name of timm and torchvision, prefixed by its zoo (``timm/...``, ``tv/...``), sorted.

    Args:
        zoo: ``"timm"``, ``"tv"`` (or ``"torchvision"``); None for both.

    Raises:
        ModelError: unknown zoo.
    """
    if zoo is not None and zoo.lower() not in _ZOO_ALIASES:
        raise ModelError(f"unknown model zoo {zoo!r}; use 'timm' or 'tv' (torchvision).")
    zoos = [_ZOO_ALIASES[zoo.lower()]] if zoo is not None else list(ZOOS)
    names: list[str] = []
    if "timm" in zoos:
        names += [f"timm/{n}" for n in _timm_names()]
    if "tv" in zoos:
        names += [f"tv/{n}" for n in _tv_names()]
    return sorted(names)


def _timm_has(name: str) -> bool:
    timm = _timm()
    return timm is not None and bool(timm.is_model(name))


def _suggest(arch: str) -> str:
    by_bare: dict[str, list[str]] = {}
    for zoo, names in (("timm", _timm_names()), ("tv", _tv_names())):
        for n in names:
            by_bare.setdefault(n, []).append(f"{zoo}/{n}")
    base = arch.lower().split(".")[0]  # ignore a timm pretrained tag when matching
    close = difflib.get_close_matches(base, list(by_bare), n=5, cutoff=0.6)
    found = [full for c in close for full in by_bare[c]]
    return f" Did you mean: {', '.join(found)}?" if found else " See refconv.models.list_models()."


def resolve_model_name(name: str) -> tuple[str, str]:
    """Split ``name`` into ``(zoo, architecture)`` with ``zoo`` in :data:`ZOOS`.

    Raises:
        ModelError: unknown name (with close matches from both zoos), or timm asked for but not installed.
    """
    zoo, arch = split_zoo(name)
    if zoo == "timm" or zoo is None:
        if _timm_has(arch):
            return "timm", arch
        if zoo == "timm" and _timm() is None:
            raise ModelError(f"model {name!r} needs timm, which is not installed: pip install 'refconv[timm]'.")
    if zoo in ("tv", None) and arch.lower() in _tv_names():
        return "tv", arch.lower()
    where = {"timm": "timm", "tv": "torchvision", None: "timm or torchvision"}[zoo]
    raise ModelError(f"unknown model {name!r}: not a {where} model.{_suggest(arch)}")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub? False in seconds where a download would retry for a minute."""
    if any(_env_true(v) for v in _OFFLINE_ENV):
        return False
    if any(os.environ.get(v) for v in _PROXY_ENV):
        return True  # only the HTTP client knows how to reach the hub
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hf_offline(enabled: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode for the duration: cached files are used, nothing is fetched."""
    if not enabled:
        yield
        return
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        yield
        return
    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def _no_weights_error(model_name: str, cause: BaseException) -> ModelError:
    return ModelError(
        f"cannot get pretrained weights for '{model_name}': no network (or the hub is unreachable) and they are "
        f"not in the local cache ({type(cause).__name__}: {cause}). Pass --weights FILE with a local copy "
        "(.safetensors/.pth; python: get_model(..., weights=FILE)), or run once with network access to "
        "fill the cache."
    )


def _create_timm(arch: str, num_classes: int | None, in_chans: int | None, pretrained: bool, kwargs: dict) -> nn.Module:
    timm = _timm()
    assert timm is not None
    kw = dict(kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if in_chans is not None:
        kw["in_chans"] = in_chans
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kw)
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pretrained weights for '{arch}'; use pretrained=False or --weights FILE.")
    try:
        # Offline, huggingface_hub retries for about a minute before giving up; go straight to the cache.
        with _hf_offline(not _hub_reachable()):
            return timm.create_model(arch, pretrained=True, **kw)
    except OSError as e:  # LocalEntryNotFoundError, URLError, HTTPError, ConnectionError
        raise _no_weights_error(f"timm/{arch}", e) from e


def _create_torchvision(
    arch: str, num_classes: int | None, in_chans: int | None, pretrained: bool, kwargs: dict
) -> nn.Module:
    import torchvision.models as tvm

    if pretrained:
        # torchvision refuses num_classes != 1000 together with weights: build the stock model, then edit it.
        try:
            model = tvm.get_model(arch, weights="DEFAULT", **kwargs)
        except OSError as e:  # URLError when offline and not cached
            raise _no_weights_error(f"tv/{arch}", e) from e
    else:
        kw = dict(kwargs)
        if num_classes is not None:
            kw["num_classes"] = num_classes
        model = tvm.get_model(arch, weights=None, **kw)
    if pretrained and num_classes is not None:
        replace_classifier(model, num_classes)
    if in_chans is not None:
        replace_first_conv(model, in_chans, adapt_weights=pretrained)
    return model


def build_classifier(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    weights_file: Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm or torchvision classifier by name, with hub weights or a local weights file (already resolved).

    The private constructor behind :func:`refconv.models.get_model` for zoo names; see it for the arguments.
    ``weights_file`` loads strictly through :func:`~refconv.models.load_checkpoint`, except for the head and stem
    when ``num_classes``/``in_chans`` ask for a change.

    Raises:
        ModelError: unknown name (with close matches from both zoos), no pretrained weights available,
            arguments the builder rejects.
        CheckpointError: ``weights_file`` unreadable or not fitting the model.
    """
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < (0 if arg == "num_classes" else 1)
        ):
            raise ModelError(f"{arg} must be an int >= {0 if arg == 'num_classes' else 1}, got {value!r}.")
    zoo, arch = resolve_model_name(name)
    try:
        if zoo == "timm":
            model = _create_timm(arch, num_classes, in_chans, pretrained, kwargs)
        else:
            model = _create_torchvision(arch, num_classes, in_chans, pretrained, kwargs)
    except TypeError as e:  # an argument the builder does not take
        raise ModelError(f"cannot build '{zoo}/{arch}' with these arguments: {e}") from e
    if weights_file is not None:
        load_checkpoint(model, read_state_dict(weights_file), source=str(weights_file), strict=True,
                        new_head=num_classes is not None, adapt_in_chans=in_chans is not None)
        _log.info("loaded %s into %s/%s", weights_file, zoo, arch)
    return model
