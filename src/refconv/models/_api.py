"""``get_model``: the one way refconv builds a model, in the spirit of ``torchvision.models.get_model``.

::

    get_model("timm/mobilenetv3_small_100", num_classes=10, in_chans=1)            # random init
    get_model("tv/resnet18", weights="DEFAULT")                                      # hub weights (timm / torchvision)
    get_model("tv/resnet18", num_classes=10, weights="runs/exp1")                    # a local file, run or entry
    get_model("fmnist/mobilenetv3_small_100")                                        # a pretrained catalogue entry
    get_model("ssdlite", num_classes=21, weights_backbone="IMAGENET1K_V1")          # a registered detector

Every weights file goes into the model through :func:`refconv.models.load_checkpoint` (format check, head
re-initialisation, stem adaptation). Models come back in train mode, whatever built them; ``.eval()`` is the
caller's (:func:`refconv.models.pretrained.load` does it).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..errors import ModelError
from . import _registry, catalog, detection  # detection registers the detectors and segmenters
from .factory import ZOOS, build_classifier, zoo_names
from .weights import resolve_weights_path

__all__ = ["get_model", "list_models", "create_model"]

#: ``weights`` values that ask a zoo classifier for its hub weights (timm's default tag, torchvision's DEFAULT).
HUB_WEIGHTS = ("DEFAULT", "hub")
_ZOO_CHOICES = (*ZOOS, "torchvision", "refconv")


def _from_catalog(name: str, *, weights: Any, num_classes: int | None, in_chans: int | None,
                  root: str | os.PathLike | None, kwargs: dict[str, Any]) -> nn.Module:
    if weights is not None:
        raise ModelError(f"{name!r} is a pretrained model of refconv's registry: it brings its own weights, so pass "
                         "neither pretrained=True nor weights=.")
    e = catalog.entry(name)
    path = catalog.weights_path(name, root)
    return build_classifier(e.model, num_classes=num_classes or e.num_classes, in_chans=in_chans or e.in_chans,
                            weights_file=path, **kwargs)


def get_model(
    name: str,
    *,
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build any model refconv knows by name, optionally with weights.

    Args:
        name: a zoo classifier (``"timm/<name>"``, ``"tv/<name>"``, a bare name: timm first), a pretrained entry of
            the catalogue (``"fmnist/mobilenetv3_small_100"``: built with its verified weights), or a registered
            detector / segmenter (``"ssdlite320_mobilenet_v3_large"``, ``"deeplabv3_timm"``...: see
            :func:`list_models`).
        weights: a classifier: ``None`` (random init), ``"DEFAULT"`` / ``True`` (the zoo's hub weights; offline,
            the local caches), or a local weights file, run directory or catalogue name, loaded strictly except
            for the head and stem when ``num_classes`` / ``in_chans`` ask for a change. A detector / segmenter:
            torchvision's weights name (``"COCO_V1"``) or a file (:func:`refconv.models.detection.build_model`).
        num_classes: classifier width (None keeps the architecture's, 1000, or the entry's); required for a
            detector / segmenter (background included).
        in_chans: input channels of a classifier (None keeps 3, or the entry's); pretrained stem kernels are
            adapted.
        **kwargs: passed to the builder (``drop_rate``...; a detector's ``weights_backbone``, ``image_size``...;
            ``root``: another catalogue root).

    Raises:
        ModelError: unknown name (with close matches), arguments the builder rejects, no hub weights.
        CheckpointError: weights unreadable or not fitting the model.
        PretrainedError: a catalogue entry without (verified) weights.
    """
    root = kwargs.pop("root", None)
    if catalog.is_pretrained_name(name):
        return _from_catalog(str(name), weights=weights, num_classes=num_classes, in_chans=in_chans, root=root,
                             kwargs=kwargs)
    entry = _registry.find_model(name)
    if entry is None and kwargs.get("task") in ("detection", "segmentation"):
        detection.get_spec(name, kwargs["task"])  # raises: unknown, naming the architectures of the task
    if entry is not None:
        if in_chans is not None:
            raise ModelError(f"{entry.name} takes RGB images; in_chans is for classifiers.")
        if num_classes is None:
            raise ModelError(f"{entry.name} is a {entry.task} model: pass num_classes (background included).")
        return entry.builder(num_classes, weights=weights, **kwargs)
    hub = weights is True or (isinstance(weights, str) and weights in HUB_WEIGHTS)
    weights_file = resolve_weights_path(weights) if weights is not None and not hub else None
    return build_classifier(name, num_classes=num_classes, in_chans=in_chans, pretrained=hub,
                            weights_file=weights_file, **kwargs)


def list_models(zoo: str | None = None, *, task: str | None = None) -> list[str]:
    """Every name :func:`get_model` accepts, sorted: ``timm/...`` and ``tv/...`` classifiers, and refconv's own
    (the catalogue's pretrained entries, the registered detectors and segmenters).

    Args:
        zoo: ``"timm"``, ``"tv"`` (or ``"torchvision"``), ``"refconv"``; None for all.
        task: ``"classification"``, ``"detection"``, ``"segmentation"``; None for all.

    Raises:
        ModelError: unknown zoo or task.
    """
    if zoo is not None and zoo.lower() not in _ZOO_CHOICES:
        raise ModelError(f"unknown model zoo {zoo!r}; use 'timm', 'tv' (torchvision) or 'refconv'.")
    if task is not None and task not in _registry.TASKS:
        raise ModelError(f"unknown task {task!r}; use one of {', '.join(_registry.TASKS)}.")
    names: list[str] = []
    if zoo is None or zoo.lower() != "refconv":
        names += zoo_names(zoo) if task in (None, "classification") else []
    if zoo is None or zoo.lower() == "refconv":
        names += catalog.names() if task in (None, "classification") else []
        names += [n for n in _registry.registered_names() if task in (None, _registry.model_task(n))]
    return sorted(names)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """:func:`get_model` with timm's spelling of hub weights: ``pretrained=True`` is ``weights="DEFAULT"``.

    Raises:
        ModelError: both ``pretrained`` and ``weights``, or either with a catalogue name; and those of
            :func:`get_model`.
    """
    if pretrained and weights is not None:
        raise ModelError("pass either pretrained=True (hub weights) or weights=FILE (local weights), not both.")
    return get_model(name, weights="DEFAULT" if pretrained else weights, num_classes=num_classes, in_chans=in_chans,
                     **kwargs)
