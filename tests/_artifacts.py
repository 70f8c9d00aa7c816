"""Re-evaluate a run's deployable weights from its files alone, independently of the run's own bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from refconv.convert import refconv_layers
from refconv.data import build_dataset
from refconv.engine.loop import evaluate
from refconv.engine import load_run_config
from refconv.models import create_model


def stock_model_from_file(weights: str | Path) -> torch.nn.Module:
    """A freshly built stock model (named by the sidecar JSON) with ``weights`` loaded ``strict=True``."""
    weights = Path(weights)
    meta = json.loads(weights.with_suffix(".json").read_text())
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    assert not refconv_layers(model)  # an ordinary model: nothing left to fold
    return model.eval()


def reevaluate(run_dir: str | Path, weights_name: str, *, batch_size: int = 32) -> dict:
    """Top-1 correct count etc. of ``run_dir/weights_name`` on the test split named by the run's config.yaml."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    model = stock_model_from_file(run_dir / weights_name)
    meta = json.loads((run_dir / weights_name).with_suffix(".json").read_text())
    dataset, _ = build_dataset(cfg.data, "test", data_dir=cfg.data_dir, image_size=cfg.image_size,
                               in_chans=meta["in_chans"], augment=False, subset=cfg.subset_test, seed=cfg.data_seed)
    return evaluate(model, DataLoader(dataset, batch_size=batch_size), device=torch.device("cpu"))
