"""The catalogue of pretrained models made by this project: ``fmnist/mobilenetv3_small_100`` and friends.

RefConv is a method for *pretrained* models, and the demo and the study must start from a model that has been
trained to convergence, not from a few-epoch baseline. The registry is the one place that says which such
models exist: each :class:`PretrainedEntry` names the stock architecture, what it was trained on (classes,
channels, input size, normalisation) and the packaged recipe that trains it. What a training produced lives
beside it, under the registry root (``refconv/weights`` in the package, or ``$REFCONV_PRETRAINED_DIR``)::

    <root>/fmnist/mobilenetv3_small_100.safetensors   the weights: the stock model's state_dict, strict-loadable
    <root>/fmnist/mobilenetv3_small_100.json          the card, machine-readable (also the weights' sidecar)
    <root>/fmnist/mobilenetv3_small_100.md            the card, for people
    <root>/fmnist/mobilenetv3_small_100.png           the test top-1 per epoch

Weights are only handed out after their SHA-256 matched the card, so a corrupted, truncated or swapped file is
refused instead of silently giving other numbers. An entry without weights yet is an error that names the two
commands (train, publish) that make them. Everywhere refconv accepts ``--weights`` (``refconv train``,
``refconv eval``, ``get_model(weights=...)``, ``load_weights``), a registry name works like a path::

    model = refconv.pretrained.load("fmnist/mobilenetv3_small_100")
    model = refconv.models.get_model("fmnist/mobilenetv3_small_100")              # the same, in train mode
    model = timm.create_model(**refconv.pretrained.timm_kwargs("fmnist/mobilenetv3_small_100"))

This module is plain data and file checks: it imports no torch and no other module of :mod:`refconv.models`, so
every loader may ask it (the CLI's listing stays fast). :mod:`refconv.models.pretrained` is its public face, with
``load``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PretrainedError, PretrainedNotShippedError, UnknownPretrainedError
from ..normalization import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = [
    "ROOT_ENV",
    "CARD_VERSION",
    "ZOO_PREFIXES",
    "split_zoo",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "PretrainedEntry",
    "ENTRIES",
    "registry_root",
    "names",
    "entry",
    "is_pretrained_name",
    "entry_files",
    "read_card",
    "sha256_file",
    "weights_status",
    "weights_path",
    "same_model",
    "check_compatible",
    "list_pretrained",
    "timm_overlay",
    "timm_kwargs",
]

ROOT_ENV = "REFCONV_PRETRAINED_DIR"  # overrides the registry root (tests, a private model store)
CARD_VERSION = 1
FMNIST_MEAN, FMNIST_STD = FASHION_MNIST_MEAN, FASHION_MNIST_STD
_NATIVE = {"fashion-mnist": (28, 1, 10)}  # data -> (image size, channels, classes) when a run leaves them unset
# How a model name says its zoo: ``timm/x``, ``tv/x`` (``timm:x``, ``torchvision/x``... too); one table for every
# place that reads a model name (:func:`split_zoo`).
ZOO_PREFIXES = (("timm/", "timm"), ("timm:", "timm"), ("tv/", "tv"), ("tv:", "tv"), ("torchvision/", "tv"),
                ("torchvision:", "tv"))


@dataclass(frozen=True)
class PretrainedEntry:
    """One model of the registry: what it is, what it was trained on, and the recipe that trains it.

    ``recipe`` is a packaged recipe name (``pretrained/<stem>``, a YAML in ``refconv/configs/pretrained``) or a
    YAML path; ``refconv train --config RECIPE`` reproduces the entry and ``refconv pretrained publish`` checks a
    run against it.
    """

    name: str  # "<namespace>/<stem>", e.g. "fmnist/mobilenetv3_small_100"
    model: str  # refconv model name: "timm/<name>" or "tv/<name>"
    recipe: str
    image_size: int
    in_chans: int = 1
    num_classes: int = 10
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD
    data: str = "fashion-mnist"
    summary: str = ""
    # An under-trained snapshot of the same recipe (the study's second start): the weights after this epoch,
    # kept by the recipe's ``snapshot_epochs`` as ``checkpoints/epoch-<N>.pt``. None: the run's final weights.
    snapshot_epoch: int | None = None

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def zoo_arch(self) -> tuple[str, str]:
        """``(zoo, architecture)`` of :attr:`model`, e.g. ``("timm", "mobilenetv3_small_100")``."""
        zoo, arch = split_zoo(self.model)
        return zoo or "timm", arch

    def default_run_dir(self) -> str:
        """``runs/<recipe>``: a snapshot entry shares the run of its recipe."""
        stem = self.recipe[:-5] if self.recipe.endswith(".yaml") else self.recipe
        return f"runs/{stem}" if stem.startswith("pretrained/") else f"runs/pretrained/{self.name.replace('/', '-')}"

    def train_command(self, out: str | None = None) -> str:
        return f"refconv train --config {self.recipe} --out {out or self.default_run_dir()}"

    def publish_command(self, run_dir: str | None = None) -> str:
        return f"refconv pretrained publish {run_dir or self.default_run_dir()} --name {self.name}"

    def refconv_command(self, out: str | None = None) -> str:
        """Refocusing Learning from this entry with its own recipe (the authors' protocol: the same recipe as the
        baseline's), the first command a card shows."""
        out = out or f"runs/{self.name.replace('/', '-')}-refconv"
        return f"refconv train --config {self.recipe} --method refconv --weights {self.name} --out {out}"


ENTRIES: dict[str, PretrainedEntry] = {
    e.name: e
    for e in (
        PretrainedEntry(
            name="fmnist/mobilenetv3_small_100",
            model="timm/mobilenetv3_small_100",
            recipe="pretrained/fmnist-mobilenetv3_small_100",
            image_size=64,
            summary="the paper's family (depthwise convs); 64 px so the last stages see 2x2, not 1x1, maps",
        ),
        PretrainedEntry(
            name="fmnist/mobilenetv3_small_100_e2",
            model="timm/mobilenetv3_small_100",
            recipe="pretrained/fmnist-mobilenetv3_small_100",
            image_size=64,
            snapshot_epoch=2,
            summary="UNDER-TRAINED on purpose: the same run after epoch 2 of 20 (10 %), the study's under-trained "
                    "start; not a model to deploy",
        ),
        PretrainedEntry(
            name="fmnist/shufflenet_v2_x1_0",
            model="tv/shufflenet_v2_x1_0",
            recipe="pretrained/fmnist-shufflenet_v2_x1_0",
            image_size=64,
            summary="a second family, from torchvision (5 MB of weights); 64 px so the last stage sees 2x2, not 1x1, maps",
        ),
    )
}


# ---------------------------------------------------------------------------------------------- lookup
def registry_root(root: str | os.PathLike | None = None) -> Path:
    """Where the weights and cards live: ``root``, else ``$REFCONV_PRETRAINED_DIR``, else the package's
    ``refconv/weights``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ROOT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("refconv") / "weights"))


def names() -> list[str]:
    """The registry's names, sorted."""
    return sorted(ENTRIES)


def _namespaces() -> set[str]:
    return {e.namespace for e in ENTRIES.values()}


def entry(name: str) -> PretrainedEntry:
    """The registry entry called ``name``.

    Raises:
        UnknownPretrainedError: not a registry name; the message lists the names and the closest one.
    """
    text = str(name).strip()
    if text in ENTRIES:
        return ENTRIES[text]
    close = difflib.get_close_matches(text, names(), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownPretrainedError(
        f"unknown pretrained model {text!r}.{hint} The registry has: {', '.join(names())} (`refconv pretrained` "
        "lists them with their accuracy)."
    )


def is_pretrained_name(text: str | os.PathLike) -> bool:
    """True when ``text`` is meant as a registry name: ``<namespace>/<name>`` with a registry namespace (``fmnist``)
    and no file or directory of that name here (an existing path always wins)."""
    s = str(text).strip()
    if "/" not in s or s.split("/", 1)[0] not in _namespaces():
        return False
    return not Path(s).expanduser().exists()


def entry_files(name: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of an entry's files under the registry root: ``weights``, ``card`` (JSON), ``markdown``, ``plot``."""
    e = entry(name)
    base = registry_root(root) / e.name
    return {"weights": base.with_name(base.name + ".safetensors"), "card": base.with_name(base.name + ".json"),
            "markdown": base.with_name(base.name + ".md"), "plot": base.with_name(base.name + ".png")}


def read_card(name: str, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The entry's card (JSON) as a dict, or None when it has none yet.

    Raises:
        PretrainedError: a card that is not valid JSON.
    """
    path = entry_files(name, root)["card"]
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"{path}: unreadable model card ({exc}). Republish it: {entry(name).publish_command()}.") from None
    if not isinstance(card, dict):
        raise PretrainedError(f"{path}: a model card must be a JSON object. Republish it: {entry(name).publish_command()}.")
    return card


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (cached per path, size and modification time: a changed file is hashed again)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def weights_status(name: str, root: str | os.PathLike | None = None) -> str:
    """``"ok"``, ``"not trained yet"``, ``"no card"``, ``"bad card"`` or ``"SHA-256 mismatch"``."""
    files = entry_files(name, root)
    if not files["weights"].is_file():
        return "not trained yet"
    try:
        card = read_card(name, root)
    except PretrainedError:
        return "bad card"
    if card is None:
        return "no card"
    return "ok" if card.get("sha256") == sha256_file(files["weights"]) else "SHA-256 mismatch"


def weights_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The entry's weights file, after its SHA-256 matched its card.

    Raises:
        UnknownPretrainedError: not a registry name (lists the names).
        PretrainedNotShippedError: no weights yet; names the commands that train and publish them.
        PretrainedError: no card, a card for another model, or a file whose SHA-256 is not the card's.
    """
    e = entry(name)
    files = entry_files(name, root)
    weights = files["weights"]
    if not weights.is_file():
        raise PretrainedNotShippedError(
            f"pretrained model {e.name!r} has no weights yet (no {weights}): it has not been trained and published. "
            f"Train it with `{e.train_command()}` (a GPU is advised; see docs/pretrained.md), then publish it with "
            f"`{e.publish_command()}`."
        )
    card = read_card(name, root)
    if card is None:
        raise PretrainedError(
            f"{weights} has no model card ({files['card'].name}), so its SHA-256 cannot be checked: republish it with "
            f"`{e.publish_command()}`, or restore the card (`git checkout -- {files['card']}`)."
        )
    if card.get("model") != e.model or card.get("name", e.name) != e.name:
        raise PretrainedError(
            f"{files['card']} describes {card.get('name')!r} ({card.get('model')}), not {e.name!r} ({e.model}): "
            f"republish it with `{e.publish_command()}`."
        )
    got, want = sha256_file(weights), str(card.get("sha256", ""))
    if got != want:
        raise PretrainedError(
            f"{weights}: SHA-256 {got[:16]}... does not match its card ({want[:16] or 'none'}...): the file is corrupt "
            f"or was replaced. Restore it (`git checkout -- {weights}` or reinstall refconv), or republish it with "
            f"`{e.publish_command()}`."
        )
    return weights


# ---------------------------------------------------------------------------------------------- fit checks
def split_zoo(name: str) -> tuple[str | None, str]:
    """``(zoo, architecture)`` of a model name: ``"timm"`` / ``"tv"`` from its prefix, None for a bare name."""
    text = str(name).strip()
    for prefix, zoo in ZOO_PREFIXES:
        if text.lower().startswith(prefix):
            return zoo, text[len(prefix):]
    return None, text


def same_model(a: str, b: str) -> bool:
    """Do two refconv model names name the same architecture (``timm/x`` == ``timm:x`` == bare ``x``)?"""
    (za, aa), (zb, ab) = split_zoo(a), split_zoo(b)
    return aa.lower() == ab.lower() and (za is None or zb is None or za == zb)


def check_compatible(
    name: str,
    *,
    model: str | None = None,
    data: str | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
    native_defaults: bool = True,
) -> PretrainedEntry:
    """Check that a run or evaluation asking for ``model`` / ``image_size`` / ... fits the entry's card.

    ``None`` means "not asked for". With ``native_defaults`` (a training run, whose unset values become the
    dataset's), ``None`` stands for the native value of the entry's own dataset (Fashion-MNIST: 28 px, 1 channel,
    10 classes), which must then match too; without it (``refconv eval``, which takes them from the card), it is
    not checked.

    Raises:
        UnknownPretrainedError: not a registry name.
        PretrainedError: what does not match, and the flags that do.
    """
    e = entry(name)
    native = _NATIVE.get(e.data) if native_defaults and (data is None or data == e.data) else None
    size = image_size if image_size is not None else (native[0] if native else None)
    chans = in_chans if in_chans is not None else (native[1] if native else None)
    classes = num_classes if num_classes is not None else (native[2] if native else None)
    wrong = []
    if model is not None and not same_model(model, e.model):
        wrong.append(f"model {model}")
    if size is not None and size != e.image_size:
        wrong.append(f"image size {size}" + (" (the data's native size)" if image_size is None else ""))
    if chans is not None and chans != e.in_chans:
        wrong.append(f"{chans} input channels")
    if classes is not None and classes != e.num_classes:
        wrong.append(f"{classes} classes")
    if wrong:
        raise PretrainedError(
            f"pretrained model {e.name!r} is {e.model} trained on {e.in_chans}x{e.image_size}x{e.image_size} "
            f"{e.data} images with {e.num_classes} classes; this asks for {', '.join(wrong)}. What matches: --model "
            f"{e.model} --image-size {e.image_size} --in-chans {e.in_chans} --num-classes {e.num_classes} (its recipe: "
            f"--config {e.recipe})."
        )
    return e


# ---------------------------------------------------------------------------------------------- listing
def list_pretrained(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per entry: ``name``, ``model``, ``input`` (``CxHxW``), ``test_top1`` (None before training),
    ``epochs``, ``status`` (see :func:`weights_status`), ``recipe``."""
    rows = []
    for n in names():
        e = ENTRIES[n]
        status = weights_status(n, root)
        card = None if status == "bad card" else read_card(n, root)
        rows.append({"name": n, "model": e.model, "input": f"{e.in_chans}x{e.image_size}x{e.image_size}",
                     "test_top1": (card or {}).get("test_top1"), "epochs": (card or {}).get("epochs"),
                     "status": status, "recipe": e.recipe, "summary": e.summary})
    return rows


# ---------------------------------------------------------------------------------------------- loading
def timm_overlay(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``pretrained_cfg_overlay`` that makes ``timm.create_model(arch, pretrained=True, ...)`` load the entry.

    Beyond ``file`` (the verified weights), it declares the classes and input size the weights were trained
    for, which is what keeps timm's loading strict: with the stock ImageNet config (1000 classes, 3 channels)
    timm would drop the 10-class classifier and load non-strictly. ``mean``/``std``/``crop_pct``/``interpolation``
    make ``timm.data.resolve_data_config`` build the preprocessing refconv trained with (resize to the input size,
    no crop).

    Raises:
        PretrainedError: a torchvision entry (use :func:`load`), or the errors of :func:`weights_path`.
    """
    e = entry(name)
    zoo, _ = e.zoo_arch
    if zoo != "timm":
        raise PretrainedError(f"{e.name!r} is a torchvision model ({e.model}), not a timm one: load it with "
                              f"refconv.pretrained.load({e.name!r}).")
    path = weights_path(name, root)
    return {
        "file": str(path),
        "num_classes": e.num_classes,
        "input_size": (e.in_chans, e.image_size, e.image_size),
        "mean": tuple(e.mean),
        "std": tuple(e.std),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "url": None,
        "hf_hub_id": None,
        "source": None,
        "tag": f"refconv_{e.namespace}",
    }


def timm_kwargs(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """All the ``timm.create_model`` arguments for the entry: ``timm.create_model(**timm_kwargs(name))``."""
    e = entry(name)
    overlay = timm_overlay(name, root)
    return {"model_name": e.zoo_arch[1], "pretrained": True, "num_classes": e.num_classes, "in_chans": e.in_chans,
            "pretrained_cfg_overlay": overlay}
