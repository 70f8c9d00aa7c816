"""The way out to the hub: a folder that stock timm loads, ``config.json`` + ``model.safetensors`` + ``README.md``.

::

    export_pretrained("fmnist/mobilenetv3_small_100", "hub/fmnist-mnv3")      # refconv pretrained export NAME DIR
    export_hub_dir(folded, "hub/run1", arch="mobilenetv3_small_100", ...)      # refconv fold RUN --hub-dir DIR

    # anywhere, without refconv:
    model = timm.create_model("local-dir:hub/fmnist-mnv3", pretrained=True)    # or "hf-hub:USER/REPO" once pushed

The folder is timm's own format (:func:`timm.models.save_for_hf`, safetensors only): the architecture and its
construction arguments (classes, input channels), the preprocessing refconv trained with (input size, mean,
std, no crop, bilinear resize, which ``timm.data.resolve_data_config`` reads back) and the weights of the stock
model, so the folder loads ``strict=True`` with the outputs of the refconv model. ``README.md`` is the model card,
with the front matter the hub reads. Only timm architectures can go there: a torchvision model has no timm name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..errors import ModelError
from . import catalog

__all__ = ["HUB_FILES", "export_hub_dir", "export_pretrained", "hub_card"]

#: What a hub folder holds.
HUB_FILES = ("config.json", "model.safetensors", "README.md")


def _timm_arch(model_name: str) -> str:
    zoo, arch = catalog.split_zoo(model_name)
    if zoo == "tv":
        raise ModelError(f"{model_name} is a torchvision model: stock timm cannot build it, so it has no hub folder. "
                         "Only timm architectures (timm/<name>) export to one.")
    return arch


def hub_card(title: str, body: str, *, arch: str, tags: Sequence[str] = ()) -> str:
    """A model card: the hub's front matter (timm library, image classification), then ``body``."""
    lines = ["---", "library_name: timm", "pipeline_tag: image-classification", "tags:",
             *[f"- {t}" for t in ("image-classification", "timm", "refconv", *tags)], "---", "", f"# {title}", ""]
    usage = ("```python\nimport timm\nmodel = timm.create_model('local-dir:PATH_TO_THIS_FOLDER', pretrained=True)  "
             "# or 'hf-hub:USER/REPO'\nmodel.eval()\n```\n")
    return "\n".join(lines) + body.rstrip() + f"\n\n## Loading it with timm ({arch})\n\n" + usage


def export_hub_dir(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    card: str,
    overwrite: bool = False,
) -> Path:
    """Write a plain (folded) timm ``model`` as a folder ``timm.create_model("local-dir:DIR", pretrained=True)`` loads.

    Args:
        model: a stock timm model (a folded RefConv model is one), weights as they are.
        out_dir: the folder; created, and refused when it holds files unless ``overwrite``.
        arch: its timm (or refconv ``timm/...``) name.
        num_classes / in_chans / image_size / mean / std: what it was trained on (recorded as timm's
            construction arguments and preprocessing).
        card: the model card's Markdown (:func:`hub_card`), written as ``README.md``.
        overwrite: replace a non-empty folder's hub files.

    Returns:
        The folder.

    Raises:
        ModelError: a torchvision model, a model that is not a plain timm one, or a non-empty folder.
    """
    from timm.models import save_for_hf

    name = _timm_arch(arch)
    if not hasattr(model, "pretrained_cfg"):
        raise ModelError(f"{type(model).__name__} was not built by timm; only timm models export to a hub folder.")
    out = Path(out_dir).expanduser()
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace its hub files, or "
                         "choose a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    data_config = {"input_size": (in_chans, image_size, image_size), "mean": tuple(mean), "std": tuple(std),
                   "crop_pct": 1.0, "interpolation": "bilinear"}
    save_for_hf(model, str(out), model_config={"pretrained_cfg": {"tag": "refconv"}},
                model_args={"in_chans": int(in_chans), "num_classes": int(num_classes)},
                safe_serialization=True, data_config=data_config)
    config = json.loads((out / "config.json").read_text())
    if config.get("architecture") != name.split(".")[0]:
        raise ModelError(f"{arch}: timm recorded the architecture as {config.get('architecture')!r}.")
    (out / "README.md").write_text(card)
    return out


def export_pretrained(name: str, out_dir: str | os.PathLike, *, root: str | os.PathLike | None = None,
                      overwrite: bool = False) -> Path:
    """Export a catalogue entry (SHA-256 checked) to a hub folder; its card becomes ``README.md``.

    Raises:
        ModelError: a torchvision entry; and the errors of :func:`refconv.models.pretrained.load`.
    """
    from ._api import get_model

    e = catalog.entry(name)
    _timm_arch(e.model)  # a torchvision entry is refused before anything is built
    model = get_model(name, root=root).eval()
    files = catalog.entry_files(name, root)
    body = files["markdown"].read_text() if files["markdown"].is_file() else e.summary
    body = body.split("\n", 1)[1] if body.startswith("# ") else body  # the title is the hub card's
    card = hub_card(e.name, body, arch=e.zoo_arch[1], tags=(e.data,))
    out = export_hub_dir(model, out_dir, arch=e.model, num_classes=e.num_classes, in_chans=e.in_chans,
                         image_size=e.image_size, mean=e.mean, std=e.std, card=card, overwrite=overwrite)
    plot = files["plot"]
    if plot.is_file():
        shutil.copyfile(plot, out / plot.name)  # the card's curve, when it links it
    return out

