"""A run's data and device as the engine uses them, for what a study measures outside a run.

A study evaluates its starting weights, times training steps for its estimate and checks folded models after
training; each must see the images a run sees (same dataset, subset, resize and normalisation) on the device a
run would pick, or its numbers would not be comparable with the runs'. These helpers are the one place that
turns a :class:`~refconv.engine.RunConfig` into those, through :func:`refconv.data.build_dataset` and the one
loader builder :func:`refconv.data.build_loader`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import DatasetInfo, build_dataset, build_loader
from ..engine import RunConfig
from ..engine.config import make_config
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..engine.artifacts import LoadedModel

__all__ = ["run_split", "test_loader", "artefact_test_loader", "study_device", "evaluate_weights", "weights_fingerprint",
           "evaluate_start"]


def run_split(run_config: RunConfig | dict[str, Any], split: str, *,
              data_dir: str | None = None) -> tuple[Dataset, DatasetInfo]:
    """The run's ``split`` ("train": augmented as the run's is; "test") with the run's own data settings and
    subset, as the engine builds it."""
    cfg = make_config(run_config)
    train = split == "train"
    return build_dataset(cfg.data, split, data_dir=data_dir or cfg.data_dir, image_size=cfg.image_size,
                         in_chans=cfg.in_chans, download=cfg.download, seed=cfg.data_seed, augment=cfg.augment and train,
                         subset=cfg.subset_train if train else cfg.subset_test)


def test_loader(run_config: RunConfig | dict[str, Any], *, data_dir: str | None = None,
                batch_size: int = 128) -> DataLoader:
    """The run's test split, in order; the loader's ``info`` attribute is its :class:`~refconv.data.DatasetInfo`
    (normalisation etc.)."""
    ds, info = run_split(run_config, "test", data_dir=data_dir)
    loader = build_loader(ds, batch_size=batch_size, train=False)
    loader.info = info  # type: ignore[attr-defined]
    return loader


def artefact_test_loader(*loaded: LoadedModel, data: str | None = None, data_dir: str | None = None,
                         image_size: int | None = None, subset: int | None = None, batch_size: int = 128,
                         workers: int = 0) -> DataLoader:
    """The test split that loaded models were trained on (``refconv eval``, ``refconv analyze``), in order.

    Each setting left ``None`` comes from the first model that records it (its run's config, else what its
    weights file records), then the defaults (Fashion-MNIST at its native size); the input channels are the
    first model's. The loader's ``info`` attribute is the split's :class:`~refconv.data.DatasetInfo`.
    """
    cfg = next((m.config for m in loaded if m.config is not None), None)
    data = data or (cfg.data if cfg else None) or next((m.meta["data"] for m in loaded if m.meta.get("data")), None)
    ds, info = build_dataset(
        data or "fashion-mnist", "test", data_dir=data_dir or (cfg.data_dir if cfg else None),
        image_size=image_size or next((m.image_size for m in loaded if m.image_size), None),
        in_chans=loaded[0].in_chans, augment=False, seed=cfg.data_seed if cfg else 0,
        subset=subset if subset is not None else (cfg.subset_test if cfg else None))
    loader = build_loader(ds, batch_size=batch_size, train=False, workers=workers)
    loader.info = info  # type: ignore[attr-defined]
    return loader


def study_device(device: str) -> torch.device:
    """The device a run with ``device`` ("auto", "cpu", "cuda") trains on; refuses "cuda" without CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available. Use device: cpu (or auto).")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def evaluate_weights(weights: str, run_config: RunConfig | dict[str, Any], *, data_dir: str | None = None,
                     batch_size: int | None = None) -> dict[str, Any]:
    """Test metrics of starting ``weights`` (a registry name, a finished run or a weights file) on the run's test
    split: loaded the way the engine starts a run from them (its architecture, ``load_start_weights``) and scored
    by the engine's :func:`~refconv.engine.evaluate`, so the number is the arms' epoch-0 accuracy.

    Returns ``loss``, ``top1``, ``top5``, ``correct1`` and ``images``.
    """
    from ..engine.loop import evaluate
    from ..engine.modeling import load_start_weights
    from ..models import get_model

    cfg = make_config(run_config)
    loader = test_loader(cfg, data_dir=data_dir, batch_size=batch_size or cfg.batch_size)
    info = loader.info  # type: ignore[attr-defined]
    model = get_model(cfg.model, num_classes=cfg.num_classes or info.num_classes, in_chans=info.in_chans)
    load_start_weights(model, weights)
    device = study_device(cfg.device)
    m = evaluate(model.to(device), loader, device=device)
    return {k: m[k] for k in ("loss", "top1", "top5", "correct1", "images")}


def weights_fingerprint(weights: str) -> str:
    """The first 16 hex digits of the SHA-256 of the file ``weights`` means (a registry name, a finished run or a
    file: :func:`refconv.models.resolve_weights_path`, so an unusable one is refused here, before any work)."""
    from ..models import resolve_weights_path

    h = hashlib.sha256()
    with open(resolve_weights_path(weights), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def evaluate_start(weights: str, run_config: RunConfig | dict[str, Any], cache: Path, *,
                   data_dir: str | None = None) -> dict[str, Any]:
    """:func:`evaluate_weights`, cached in the JSON file ``cache`` by the weights' fingerprint (a rerun reuses it; a
    republished or replaced file under the same name is evaluated again).

    Returns ``{"weights", "sha256", "final": metrics, "wall_time_s"}``.
    """
    fingerprint = weights_fingerprint(weights)
    if cache.is_file():
        try:
            rec = json.loads(cache.read_text())
            if rec.get("sha256") == fingerprint:
                return rec
        except (OSError, json.JSONDecodeError):
            pass
    t0 = time.perf_counter()
    final = evaluate_weights(weights, run_config, data_dir=data_dir)
    rec = {"weights": weights, "sha256": fingerprint, "final": final, "wall_time_s": time.perf_counter() - t0}
    cache.write_text(json.dumps(rec, indent=2))
    return rec
