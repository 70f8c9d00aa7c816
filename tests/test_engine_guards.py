"""Runs that would fail cryptically or succeed meaninglessly are stopped or flagged up front (issue 13)."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from _datagen import write_fashion_mnist, write_image_folder

from safetensors.torch import load_file

from refconv.data import build_dataset
from refconv.engine import RunConfig, run
from refconv.engine.checkpoint import load_checkpoint
from refconv.engine.progress import Reporter
from refconv.errors import ConfigError, CorruptImageError, DataError


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("guards") / "data", n_train=32, n_test=16)


def _common(data_dir, **kw):
    return {**dict(model="timm/test_resnet", data_dir=str(data_dir), batch_size=16, lr=0.05, warmup_epochs=0,
                   epochs=1, progress="none"), **kw}


def _log(cfg: RunConfig) -> str:
    stream = io.StringIO()
    run(cfg, reporter=Reporter(mode="plain", stream=stream))
    return stream.getvalue()


def test_one_class_dataset_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "one", classes=("cat",), per_class={"train": 4, "val": 2})
    with pytest.raises(DataError, match=r"1 class \('cat'\).*meaningless 100%.*another class folder"):
        run(RunConfig(out=str(tmp_path / "r"), **_common(root, data="imagefolder", image_size=32, batch_size=2)))
    assert not (tmp_path / "r").exists()


def test_warmup_longer_than_training_warns(fm, tmp_path):
    log = _log(RunConfig(out=str(tmp_path / "w"), **{**_common(fm), "warmup_epochs": 5}))
    assert "warning: warmup_epochs=5 is >= the 1 training epoch(s)" in log and "--warmup-epochs 0" in log
    assert "warmup_epochs" in (tmp_path / "w" / "log.txt").read_text()
    assert "warmup_epochs" not in _log(RunConfig(out=str(tmp_path / "w0"), **_common(fm)))


def test_subset_larger_than_the_data_says_what_it_uses(fm, tmp_path):
    log = _log(RunConfig(out=str(tmp_path / "s"), **_common(fm, subset_train=100000)))
    assert "warning: --subset-train 100,000 is more than the 32 training images of fashion-mnist: using all 32" in log


@pytest.mark.parametrize("model,size", [("tv/alexnet", 8), ("timm/test_convnext", 28)])
def test_input_too_small_for_the_architecture(fm, tmp_path, model, size):
    cfg = RunConfig(out=str(tmp_path / "small"), **{**_common(fm), "model": model, "image_size": size})
    with pytest.raises(ConfigError, match=rf"{model} cannot take 1x{size}x{size} inputs.*--image-size \d+ or larger"):
        run(cfg)
    assert not (tmp_path / "small").exists()


def test_corrupt_image_is_named_and_the_run_stops_with_a_checkpoint(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class={"train": 8, "val": 2})
    ds, _ = build_dataset("imagefolder", "train", data_dir=root, image_size=32)
    bad = ds.samples[5][0]
    shutil.copy(bad, tmp_path / "good.png")
    with open(bad, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(CorruptImageError, match="cannot be read") as info:
        ds[5]
    assert bad in str(info.value)

    # with augmentation, read by a worker: each item's augmentation is seeded by (seed, epoch, index), so the
    # batch that failed half-way is drawn again exactly as the run that never stopped drew it
    cfg = RunConfig(out=str(tmp_path / "run"), **_common(root, data="imagefolder", image_size=32, batch_size=4,
                                                          workers=1, epochs=2, augment=True))
    with pytest.raises(CorruptImageError) as info:  # raised in a loader worker: still one line, naming the file
        run(cfg)
    msg = str(info.value)
    assert "\n" not in msg and bad in msg and "Training stopped" in msg and "--resume" in msg
    shutil.copy(tmp_path / "good.png", bad)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if "saved" in msg:  # the bad image was not in the first batch: the steps before it are kept
        assert load_checkpoint(last)["step_in_epoch"] >= 1
        res = run(cfg, resume=True)
    else:
        res = run(cfg.replace(overwrite=True))
    assert (res.run_dir / "done.json").is_file()
    # the continued run is the run that never stopped: same metrics, same weights
    clean = run(cfg.replace(out=str(tmp_path / "clean")))
    timing = {"images_per_s", "epoch_time_s", "eval_images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in res.history] == \
        [{k: v for k, v in r.items() if k not in timing} for r in clean.history]
    a, b = load_file(str(res.run_dir / "model.safetensors")), load_file(str(clean.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_items_draw_by_epoch_and_index_and_leave_the_callers_rng_alone():
    import random

    import numpy as np

    from refconv.engine.sampling import SeededItems

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (torch.rand(1).item(), random.random(), float(np.random.rand()))

    items = SeededItems(Noisy(), seed=3)
    first = [items[i] for i in range(4)]
    torch.manual_seed(0)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert [items[i] for i in reversed(range(4))] == first[::-1]  # a function of the index, not of the order
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()
    assert len({x for item in first for x in item}) == 12  # items and generators differ
    items.set_epoch(1)
    assert [items[i] for i in range(4)] != first  # another epoch, other draws
    assert SeededItems(Noisy(), seed=4)[0] != first[0]
