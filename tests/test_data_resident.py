"""The resident, batched input path has the per-item pipeline's outputs and distribution, and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from _datagen import write_cifar, write_fashion_mnist
from refconv.data import build_dataset
from refconv.data import fashion_mnist as fm
from refconv.data.resident import ResidentLoader, augment_seed, resident_images
from refconv.data.transforms import RandomPadCrop, SmallImageSpec, draw_pad_crop_flip, pad_crop_flip_batch
from refconv.engine.sampling import ResumableSampler, ShardSampler

CPU = torch.device("cpu")


@pytest.fixture
def fmnist_dir(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    return str(write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=40))


@pytest.mark.parametrize("image_size,in_chans", [(None, None), (32, 3), (48, 1), (20, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_batch_equals_per_item_pipeline(fmnist_dir, image_size, in_chans, channels_last):
    ds, info = build_dataset("fashion-mnist", "test", data_dir=fmnist_dir, image_size=image_size, in_chans=in_chans,
                             subset=30)
    res = resident_images(ds, device=CPU, channels_last=channels_last)
    idx = torch.tensor([3, 0, 17, 29, 8, 8])
    images, targets = res.batch(idx)
    expected = torch.stack([ds[i][0] for i in idx.tolist()])
    assert images.shape == (6, info.in_chans, info.image_size, info.image_size)
    assert torch.equal(images, expected)
    assert torch.equal(targets, torch.tensor([ds[i][1] for i in idx.tolist()]))
    assert images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_rgb_to_luma_batch_matches_per_item(tmp_path, no_network):
    root = write_cifar(tmp_path / "c", n_train=20, n_test=12)
    ds, _ = build_dataset("cifar10", "test", data_dir=str(root.parent if root.name.startswith("cifar") else root),
                          in_chans=1)
    res = resident_images(ds, device=CPU)
    images, _ = res.batch(torch.arange(12))
    expected = torch.stack([ds[i][0] for i in range(12)])
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_train_batch_equals_per_item_crop_given_the_same_draws():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (50, 3, 28, 28), dtype=torch.uint8, generator=g)
    for padding in (1, 3, 4):
        draws = draw_pad_crop_flip(50, padding, g)
        out = pad_crop_flip_batch(images, draws, padding)
        crop = RandomPadCrop(padding)
        for b in range(50):
            assert torch.equal(out[b], crop.crop(images[b], int(draws[b]))), (padding, b)


def _marker_positions(augment, n: int) -> np.ndarray:
    """Where a single bright pixel at (10, 5) of a 28x28 image lands after ``n`` augmentations (-1: cropped out)."""
    pos = np.empty(n, dtype=np.int64)
    for i, out in enumerate(augment(n)):
        flat = torch.nonzero(out.flatten() == 255)
        pos[i] = int(flat[0]) if len(flat) else -1
    return pos


def test_train_augmentation_has_the_per_item_distribution():
    """Two-sample chi-square test on where a marker pixel lands: per-item RandomPadCrop vs the batched path."""
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 10, 5] = 255
    n = 6000
    torch.manual_seed(0)
    crop = RandomPadCrop(3)
    per_item = _marker_positions(lambda k: (crop(image) for _ in range(k)), n)
    g = torch.Generator().manual_seed(0)
    batch = pad_crop_flip_batch(image.expand(n, 1, 28, 28), draw_pad_crop_flip(n, 3, g), 3)
    batched = _marker_positions(lambda k: iter(batch), n)
    cats = np.union1d(per_item, batched)
    table = np.array([[np.sum(per_item == c) for c in cats], [np.sum(batched == c) for c in cats]])
    assert table.shape[1] == 7 * 7 * 2  # every shift and flip reachable, none cropped out here
    _, p, _, _ = stats.chi2_contingency(table)
    assert p > 1e-3, p
    # and each outcome is uniform
    _, p_uniform = stats.chisquare(table[1])
    assert p_uniform > 1e-3, p_uniform


def test_loader_draws_depend_only_on_seed_epoch_and_step(fmnist_dir):
    ds, _ = build_dataset("fashion-mnist", "train", data_dir=fmnist_dir, augment=True)
    res = resident_images(ds, device=CPU)
    sampler = ResumableSampler(len(ds), batch_size=8, seed=3)
    loader = ResidentLoader(res, sampler, 8, seed=3)
    sampler.set_epoch(2)
    full = list(loader)
    assert len(full) == len(loader) == 8
    sampler.set_epoch(2)
    sampler.set_start(5)  # a resume after 5 steps
    resumed = list(loader)
    assert len(resumed) == 3
    for (a, ya), (b, yb) in zip(full[5:], resumed):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    sampler.set_epoch(3)
    other = list(loader)
    assert not torch.equal(other[0][0], full[0][0])
    assert augment_seed(3, 2, 5) != augment_seed(3, 2, 5, rank=1)


def test_eval_loader_covers_every_item_once(fmnist_dir):
    ds, _ = build_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    res = resident_images(ds, device=CPU)
    seen = torch.cat([y for _, y in ResidentLoader(res, ShardSampler(len(ds)), 16)])
    assert torch.equal(seen, res.targets)


def test_image_folders_keep_the_dataloader_path():
    from torch.utils.data import TensorDataset

    assert resident_images(TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4)), device=CPU) is None


def test_spec_padding_matches_per_item_rule():
    spec = SmallImageSpec(native_size=32, image_size=32, src_chans=3, out_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                          train=True)
    assert spec.padding == 4
