"""The test split exactly as the engine evaluated it, for checks made after training."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from ..engine.config import make_config

__all__ = ["test_loader"]


def test_loader(run_config: dict[str, Any], *, data_dir: str | None = None, batch_size: int = 128,
                train_split: bool = False, subset: int | None = None) -> DataLoader:
    """Build the run's test (or un-augmented train) split with the run's own data settings.

    The loader's ``info`` attribute is the split's :class:`~refconv.data.DatasetInfo` (normalisation etc.).
    """
    from ..data import build_dataset

    cfg = make_config(run_config)
    split = "train" if train_split else "test"
    ds, info = build_dataset(cfg.data, split, data_dir=data_dir or cfg.data_dir, image_size=cfg.image_size,
                          in_chans=cfg.in_chans, augment=False,
                          subset=subset if subset is not None else (cfg.subset_train if train_split else cfg.subset_test),
                          seed=cfg.data_seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    loader.info = info  # type: ignore[attr-defined]
    return loader
