"""From run artefacts back to models: what ``refconv eval`` and ``refconv fold`` are built on.

A run artefact is a run directory, one of its training checkpoints (``checkpoints/last.pt``/``best.pt``,
plain or RefConv), its deployable ``.safetensors`` (with a sidecar JSON naming the model), or a foreign
weights file together with a model name. :func:`load_model` rebuilds whichever model the artefact holds:
for a RefConv checkpoint the stock model is rebuilt by name and re-converted layer by layer from the
recorded ``conversion_config`` before the weights are loaded strictly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert import refconv_layers, reparameterize, state_dict_format
from ..errors import CheckpointError, ConfigError, ConversionError, StateDictFormatError
from ..runlayout import CHECKPOINT_DIR, CONFIG_FILE, checkpoint_path, deployable_weights, is_finished
from .checkpoint import is_run_checkpoint, load_checkpoint
from .config import RunConfig, make_config
from .export import compare_outputs, export_onnx, read_sidecar, save_weights
from ..models import get_model, pretrained, read_state_dict, rebuild_converted
from ..models import load_checkpoint as load_into
from .modeling import count_params
from .task_registry import task_class

__all__ = ["LoadedModel", "load_model", "fold_model", "fold_checkpoint", "FoldResult", "find_checkpoint",
           "FOLD_REL_TOL"]

#: The one tolerance of fold-and-verify (``refconv train``, ``refconv fold``, ``detect`` / ``segment``): the
#: largest relative output difference ``max |folded - trained| / max |trained|`` a fold may show. Folding is
#: exact algebra done in float64; what remains is fp32 rounding of two computation orders (1e-7 to 1e-6
#: relative on a healthy model). A model whose training diverged amplifies that rounding through its layers:
#: the suite's sweep fixture has a cell with logits near 4,300 that folds to 1.4e-4 relative, so the bound is
#: 1e-3, which still catches any wrong kernel or layout (those give differences of order 1 relative).
FOLD_REL_TOL = 1e-3


@dataclass
class LoadedModel:
    """A model rebuilt from an artefact, with what is known about it."""

    model: nn.Module
    source: Path
    arch: str
    num_classes: int
    in_chans: int
    format: str  # "plain" | "refconv"
    image_size: int | None = None
    config: RunConfig | None = None  # the run's config, when the artefact belongs to a run
    meta: dict[str, Any] = field(default_factory=dict)
    conversion: dict[str, Any] | None = None


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """``run_dir/checkpoints/<which>.pt``, with an error naming what exists instead."""
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        have = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).glob("*.pt")) if (run_dir / CHECKPOINT_DIR).is_dir() else []
        raise CheckpointError(f"{path} does not exist (checkpoints there: {have or 'none'}).")
    return path


def _run_config(run_dir: Path) -> RunConfig | None:
    path = run_dir / CONFIG_FILE
    return make_config(path) if path.is_file() else None


def load_model(
    source: str | Path,
    *,
    which: str | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    use_ema: bool = True,
) -> LoadedModel:
    """Rebuild the model an artefact holds, on the CPU, in eval mode.

    Args:
        source: a registry name (``fmnist/...``), a run directory, a checkpoint ``.pt`` of this engine, a
            ``.safetensors`` (sidecar JSON or header metadata name the model), or any weights file :func:`refconv.models.read_state_dict` reads together
            with ``model_name``.
        which: for a run directory: ``None`` = its deployable weights when finished (else ``last``), or
            ``"last"`` / ``"best"`` for a training checkpoint.
        model_name / num_classes / in_chans: needed for foreign weights; override the recorded ones otherwise.
        use_ema: take a checkpoint's EMA weights when it has them (what the run deployed).

    Raises:
        CheckpointError: missing/corrupt files, weights that do not fit, no model name known.
        StateDictFormatError: a state_dict whose format cannot be rebuilt (RefConv weights without their
            conversion record).
    """
    src, cfg = _locate(source, which, {"model": model_name, "in_chans": in_chans, "num_classes": num_classes})
    ckpt = None
    if src.suffix in (".pt", ".pth", ".tar", ".ckpt"):
        obj = load_checkpoint(src)
        if is_run_checkpoint(obj):
            ckpt = obj
    task = (ckpt or {}).get("task") or (cfg.task if cfg is not None else "classification")
    if task != "classification":
        command = task_class(task).command
        raise CheckpointError(f"{source} is a {task} run: this command handles classifiers. Evaluate, fold and export "
                              f"it with `refconv {command} --epochs 0 --weights {src} --out NEW_DIR`.")
    if ckpt is not None:
        arch = model_name or ckpt["arch"]
        n_cls = num_classes or ckpt["model_kwargs"]["num_classes"]
        chans = in_chans or ckpt["model_kwargs"]["in_chans"]
        state = ckpt["state_dict_ema"] if use_ema and ckpt.get("state_dict_ema") is not None else ckpt["state_dict"]
        meta = {"image_size": ckpt.get("image_size"), "method": ckpt.get("method")}
        conversion = ckpt.get("conversion")
        if cfg is None and ckpt.get("config"):
            cfg = make_config(ckpt["config"])
    else:
        state = read_state_dict(src)  # first: an unreadable file must say so, not ask for --model
        meta = read_sidecar(src)
        arch = model_name or meta.get("model")
        n_cls = num_classes or meta.get("num_classes")
        chans = in_chans or meta.get("in_chans")
        if cfg is not None:
            arch = arch or cfg.model
        if arch is None:
            raise CheckpointError(f"{src} does not say which model it belongs to: pass --model NAME (e.g. "
                                  "timm/mobilenetv3_small_100) and --num-classes / --in-chans.")
        conversion = None
        if n_cls is None:
            n_cls = _infer_num_classes(state)
        chans = chans or 3
    fmt = state_dict_format(state)
    model = get_model(arch, num_classes=int(n_cls), in_chans=int(chans))
    if fmt == "refconv":
        if not conversion:
            raise StateDictFormatError(
                f"{src} holds RefConv (unfolded) weights but no conversion record to rebuild the RefConv model from. "
                "Use the run's checkpoint (checkpoints/last.pt), or fold the model and use the folded weights."
            )
        rebuild_converted(model, conversion["layers"])
    load_into(model, state, source=str(src), strict=True)
    model.eval()
    return LoadedModel(model=model, source=src, arch=arch, num_classes=int(n_cls), in_chans=int(chans), format=fmt,
                       image_size=meta.get("image_size") or (cfg.image_size if cfg else None), config=cfg, meta=meta,
                       conversion=conversion)


def _locate(source: str | Path, which: str | None, asked: dict[str, Any]) -> tuple[Path, RunConfig | None]:
    """The file an artefact means (a registry entry's verified weights, checked against what the caller ``asked``
    for; a run's deployable weights or checkpoint) and the config of the run it belongs to, if any."""
    if pretrained.is_pretrained_name(source):
        pretrained.check_compatible(str(source), **asked, native_defaults=False)
        source = pretrained.weights_path(str(source))  # SHA-256 checked; its card is the sidecar naming the model
    src = Path(source)
    if not src.exists():
        raise CheckpointError(f"{src} does not exist. Pass a run directory, a checkpoint or a weights file.")
    cfg: RunConfig | None = None
    if src.is_dir():
        cfg = _run_config(src)
        if which is None and is_finished(src):
            src = deployable_weights(src)
        elif cfg is not None or (src / CHECKPOINT_DIR).is_dir():
            src = find_checkpoint(src, which or "last")
        else:
            raise CheckpointError(f"{src} is a directory but not a refconv run (no config.yaml or {CHECKPOINT_DIR}/).")
    elif src.parent.name == CHECKPOINT_DIR:
        cfg = _run_config(src.parent.parent)
    elif (src.parent / CONFIG_FILE).is_file():
        cfg = _run_config(src.parent)
    return src, cfg


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    """The row count of the last 2-d weight: the classifier of every timm / torchvision classifier."""
    mats = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not mats:
        raise ConfigError("cannot tell the number of classes from these weights: pass --num-classes.")
    return int(mats[-1].shape[0])


def _logits(reference: nn.Module, other: nn.Module, sample: Any) -> dict[str, float]:
    return compare_outputs(reference(sample), other(sample))


@torch.no_grad()
def fold_model(model: nn.Module, sample: Any, *, into: nn.Module | None = None,
               compare: Callable[[nn.Module, nn.Module, Any], dict[str, Any]] = _logits) -> tuple[nn.Module, dict[str, Any]]:
    """Fold a copy of a RefConv model and verify it computes what the model computes: the one fold-and-verify.

    Args:
        model: the trained (converted) model; left as it was.
        sample: inputs both models see, in eval mode.
        into: a freshly built stock model: the folded weights are loaded into it ``strict=True`` (the deployable
            contract, checked on the real thing) and it is what is returned and compared.
        compare: ``(model, folded, sample) -> report`` with ``max_abs_err`` and ``rel_err`` (default: the
            outputs themselves, :func:`~refconv.engine.export.compare_outputs`); detection and segmentation
            compare their raw head outputs.

    Returns:
        ``(folded model in eval mode, report)``.

    Raises:
        ConversionError: ``rel_err`` above :data:`FOLD_REL_TOL` (a bug: please report it).
    """
    was_training = model.training
    model.eval()
    try:
        folded = reparameterize(copy.deepcopy(model)).eval()
        if into is not None:
            into.load_state_dict(folded.state_dict(), strict=True)
            folded = into.to(next(model.parameters()).device).eval()
        report = compare(model, folded, sample)
    finally:
        model.train(was_training)
    if not report["rel_err"] <= FOLD_REL_TOL:
        raise ConversionError(
            f"the folded model's outputs differ from the RefConv model's by {report['max_abs_err']:.3g} "
            f"({report['rel_err']:.3g} relative, tolerance {FOLD_REL_TOL}); please report this as a bug."
        )
    return folded, report


@dataclass
class FoldResult:
    """What ``refconv fold`` produced."""

    source: Path
    weights_path: Path
    max_abs_err: float
    layers: int
    train_params: int
    deploy_params: int
    onnx: dict[str, Any] | None = None
    hub_dir: Path | None = None  # the folder stock timm loads (``--hub-dir``)

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "weights_path": str(self.weights_path), "max_abs_err": self.max_abs_err,
                "layers": self.layers, "train_params": self.train_params, "deploy_params": self.deploy_params,
                "onnx": self.onnx, "hub_dir": str(self.hub_dir) if self.hub_dir else None}


def fold_checkpoint(
    source: str | Path,
    *,
    which: str = "last",
    out: str | Path | None = None,
    onnx: bool = False,
    batch: int = 8,
    image_size: int | None = None,
    seed: int = 0,
    hub_dir: str | Path | None = None,
) -> FoldResult:
    """Fold a RefConv training checkpoint (or a run directory's) into deployable ``.safetensors``.

    The folded weights are loaded ``strict=True`` into a freshly built stock model, and that model's outputs
    are compared with the RefConv model's on a seeded random batch; the max abs error is returned (and
    written into the sidecar JSON). ``hub_dir``: also write the folded model as a folder stock timm loads
    (``timm.create_model("local-dir:DIR", pretrained=True)``, :func:`refconv.models.hub.export_hub_dir`).

    Raises:
        StateDictFormatError: ``source`` holds plain (already folded) weights: nothing to fold.
        CheckpointError: missing/corrupt checkpoint, or one whose keys do not fit the model.
    """
    src = Path(source)
    if src.is_dir():
        src = find_checkpoint(src, which)
    loaded = load_model(src)
    if loaded.format != "refconv":
        raise StateDictFormatError(
            f"{loaded.source} holds plain (folded) weights: there is nothing to fold. It already loads with "
            "strict=True into the stock model; `refconv fold` needs a RefConv training checkpoint "
            "(RUN_DIR/checkpoints/last.pt of a --method refconv run"
            + ("; this run used --refocus-impl implicit, which trains the stock model: its model.safetensors is "
               "already the deployable model)." if _is_implicit_run(src) else ").")
        )
    size = image_size or loaded.image_size or 32
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, loaded.in_chans, size, size, generator=gen)
    stock, report = fold_model(loaded.model, sample, into=get_model(
        loaded.arch, num_classes=loaded.num_classes, in_chans=loaded.in_chans))
    err = report["max_abs_err"]
    if out is None:
        run_dir = src.parent.parent if src.parent.name == CHECKPOINT_DIR else src.parent
        out = run_dir / ("folded.safetensors" if which == "last" else f"folded-{which}.safetensors")
    elif Path(out).is_dir():
        raise CheckpointError(f"--out {out} is a directory; it must name the weights file to write. Use e.g. "
                              f"--out {Path(out) / 'folded.safetensors'}.")
    meta = {"model": loaded.arch, "num_classes": loaded.num_classes, "in_chans": loaded.in_chans,
            "image_size": size, "format": "plain", "folded_from": str(src), "fold_max_abs_err": err,
            "method": loaded.meta.get("method")}
    path = save_weights(stock, out, meta)
    onnx_info = export_onnx(stock, Path(out).with_suffix(".onnx"), sample[:2]) if onnx else None
    hub = _export_hub(stock, loaded, meta, Path(hub_dir)) if hub_dir is not None else None
    return FoldResult(source=src, weights_path=path, max_abs_err=err, layers=len(refconv_layers(loaded.model)),
                      train_params=count_params(loaded.model)[1], deploy_params=count_params(stock)[1], onnx=onnx_info,
                      hub_dir=hub)


def _normalisation(data: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a run on ``data`` normalised its ``in_chans`` inputs with (ImageNet's for image folders)."""
    from ..data import cifar, fashion_mnist
    from ..data.factory import canonical_name
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, channel_stats

    try:
        name = canonical_name(data)
    except ConfigError:
        name = data
    base = {"fashion-mnist": (fashion_mnist.MEAN, fashion_mnist.STD)}
    base.update({k: (v.mean, v.std) for k, v in cifar.SPECS.items()})
    return channel_stats(*base.get(name, (IMAGENET_MEAN, IMAGENET_STD)), in_chans)


def _export_hub(stock: nn.Module, loaded: LoadedModel, meta: dict[str, Any], hub_dir: Path) -> Path:
    """The folded model as a hub folder, its card saying where it came from and what it was trained on."""
    from ..models.hub import export_hub_dir, hub_card

    cfg = loaded.config
    data = cfg.data if cfg is not None else "unknown data"
    mean, std = _normalisation(data, loaded.in_chans)
    body = "\n".join([
        f"A RefConv model folded back into the stock `{loaded.arch}` (same keys, parameters and cost).", "",
        "| | |", "|---|---|",
        f"| trained on | {data}, input {loaded.in_chans}x{meta['image_size']}x{meta['image_size']}, {loaded.num_classes} "
        f"classes, mean {list(mean)}, std {list(std)} |",
        f"| method | {meta.get('method') or 'refconv'} |",
        f"| folded from | `{meta['folded_from']}` |",
        f"| max abs error, folded vs RefConv model | {meta['fold_max_abs_err']:.3g} |",
    ])
    card = hub_card(f"{loaded.arch} (RefConv, folded)", body, arch=loaded.arch, tags=(data,))
    return export_hub_dir(stock, hub_dir, arch=loaded.arch, num_classes=loaded.num_classes, in_chans=loaded.in_chans,
                          image_size=meta["image_size"], mean=mean, std=std, card=card)


def _is_implicit_run(checkpoint: Path) -> bool:
    """Whether a checkpoint was written by an implicit-refocusing run (its stock weights need no fold)."""
    try:
        from .checkpoint import load_checkpoint

        return bool(load_checkpoint(checkpoint, map_location="cpu").get("implicit_refocus"))
    except Exception:  # noqa: BLE001 - only refines an error message
        return False
