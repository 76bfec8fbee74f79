"""Digits: real data with no download. Splits, determinism, augmentation, on-device epochs, training."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sslr.data import Digits
from sslr.data.digits import load_digits_pool
from sslr.data.loaders import EpochBatchSampler
from sslr.data.splits import TEST_SPLIT, stratified_split


@pytest.fixture(scope="module")
def digits() -> Digits:
    dm = Digits(batch_size=64)
    dm.setup()
    return dm


def test_attributes_exist_before_any_io():
    dm = Digits(image_size=48)
    assert dm.num_classes == 10 and dm.image_size == 48
    assert len(dm.mean) == len(dm.std) == 3 and all(isinstance(v, float) for v in dm.mean)
    assert dm._x is None  # nothing loaded yet


def test_splits_add_up_without_overlap(digits):
    sizes = {k: digits.split_indices(k).numel() for k in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=6)
    assert sizes["val"] == pytest.approx(0.1 * (1797 - sizes["test"]), abs=6)
    sets = [set(digits.split_indices(k).tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_test_split_is_stratified(digits):
    _, y_all = load_digits_pool()
    _, y_test = digits.split("test")
    per_class_all = torch.bincount(y_all, minlength=10).float()
    per_class_test = torch.bincount(y_test, minlength=10).float()
    assert torch.all((per_class_test - 0.2 * per_class_all).abs() <= 1)


def test_images_are_float_rgb_in_unit_range(digits):
    x, y = digits.split("train")
    assert x.shape == (digits.split_indices("train").numel(), 3, 32, 32)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to 3 channels
    # Stated normalization statistics are those of the data.
    assert float(x.mean()) == pytest.approx(digits.mean[0], abs=0.01)
    assert float(x.std()) == pytest.approx(digits.std[0], abs=0.01)


def test_upsampled_digits_keep_their_8px_content(digits):
    x8, y8 = load_digits_pool()
    _, test_idx = stratified_split(y8, digits.test_fraction, digits.split_seed, TEST_SPLIT)
    x, y = digits.split("test")
    assert torch.equal(y, y8[test_idx])
    pooled = torch.nn.functional.avg_pool2d(x[:, :1], 4)  # back to 8x8
    original = x8.float() / 255  # (1797, 1, 8, 8)
    # Each upsampled test image, pooled back to 8x8, is nearest to its own original.
    distances = torch.cdist(pooled.flatten(1), original.flatten(1))  # (n_test, 1797)
    assert torch.equal(distances.argmin(1), test_idx)


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = Digits(seed=1), Digits(seed=1), Digits(seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.split_indices("val"), b.split_indices("val"))
    assert not torch.equal(a.split_indices("val"), c.split_indices("val"))
    # The test split is fixed by split_seed, whatever the seed: runs share one test set.
    assert torch.equal(a.split_indices("test"), c.split_indices("test"))
    assert torch.equal(a.split("test")[1], c.split("test")[1])


def test_subset_caps_the_training_set_only():
    dm = Digits(subset=100)
    dm.setup()
    full = Digits()
    full.setup()
    assert dm.split_indices("train").numel() == 100
    assert set(dm.split_indices("train").tolist()) <= set(full.split_indices("train").tolist())
    assert torch.equal(dm.split_indices("val"), full.split_indices("val"))


def test_training_batches_are_augmented_on_transfer(digits):
    x_u8, _ = next(iter(digits.train_dataloader()))
    assert x_u8.dtype == torch.uint8 and x_u8.shape[1:] == (1, 32, 32)
    plain = digits.transform_batch(x_u8, train=False)
    augmented = digits.transform_batch(x_u8, train=True)
    assert augmented.shape == plain.shape == (x_u8.shape[0], 3, 32, 32)
    assert 0.0 <= float(augmented.min()) and float(augmented.max()) <= 1.0
    assert not torch.equal(augmented, plain)
    # A crop moves the digit but keeps (most of) its ink; digits are never mirrored.
    changed = (augmented - plain).abs().flatten(1).amax(1) > 0
    assert changed.float().mean() > 0.8
    ink_ratio = augmented.sum((1, 2, 3)) / plain.sum((1, 2, 3))
    assert float(ink_ratio.min()) > 0.5


def test_no_augmentation_when_disabled():
    dm = Digits(augment=False)
    dm.setup()
    x_u8, _ = next(iter(dm.train_dataloader()))
    assert torch.equal(dm.transform_batch(x_u8, train=True), dm.transform_batch(x_u8, False))


@pytest.mark.parametrize("on_device", [True, False])
def test_an_epoch_covers_every_training_example_once(on_device):
    dm = Digits(batch_size=100, on_device=on_device, augment=False)
    dm.setup()
    loader = dm.train_dataloader()
    x_split, y_split = dm.split("train")
    loader.sampler.set_epoch(4)  # what Lightning does at each epoch start
    xs, ys = zip(*[(dm.transform_batch(x, train=True), y) for x, y in loader], strict=True)
    x_epoch, y_epoch = torch.cat(xs), torch.cat(ys)
    assert x_epoch.shape == x_split.shape
    assert torch.equal(torch.bincount(y_epoch), torch.bincount(y_split))

    # Same images, each once: sorting by a per-image fingerprint lines them up exactly.
    def by_fingerprint(x):
        key = (x.flatten(1) * torch.linspace(1, 2, x[0].numel())).sum(1)
        return x[key.argsort()]

    assert torch.equal(by_fingerprint(x_epoch), by_fingerprint(x_split))


def test_on_device_and_worker_paths_give_the_same_batches():
    a = Digits(batch_size=50, on_device=True)
    b = Digits(batch_size=50, on_device=False, num_workers=2)
    ya, yb = [], []
    for dm, out in ((a, ya), (b, yb)):
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        out.extend(y for _, y in loader)
    assert len(ya) == len(yb) and all(torch.equal(p, q) for p, q in zip(ya, yb, strict=True))


def test_eval_loaders_yield_float_rgb_in_order(digits):
    xs, ys = zip(*digits.test_dataloader(), strict=True)
    x_test, y_test = digits.split("test")
    assert torch.equal(torch.cat(xs), x_test) and torch.equal(torch.cat(ys), y_test)
    xp, _ = next(iter(digits.predict_dataloader()))
    assert xp.dtype == torch.float32 and xp.shape[1] == 3


@pytest.mark.parametrize("on_device", [True, False])
def test_logistic_regression_learns_digits_through_the_trainer(
    on_device, make_trainer, linear_classifier
):
    """Real-data sanity: a linear model trained for a few epochs is far above chance (10%)."""
    L.seed_everything(0, verbose=False)
    # No augmentation: shifted digits are hard for a linear model; this checks data and labels.
    dm = Digits(batch_size=64, on_device=on_device, image_size=16, augment=False)
    model = linear_classifier(3 * 16 * 16, dm.num_classes, dm.mean, dm.std)
    trainer = make_trainer(max_epochs=5)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.test_seen == dm.split_indices("test").numel()
    assert model.test_correct / model.test_seen > 0.85
    # Lightning set each epoch's order: the first batch is the one (seed, epoch) dictates.
    y_train = dm.split("train")[1]
    for epoch, first in model.first_targets.items():
        sampler = EpochBatchSampler(y_train.numel(), 64, seed=dm.seed)
        sampler.set_epoch(epoch)
        assert torch.equal(first, y_train[next(iter(sampler))])
    assert not torch.equal(model.first_targets[0], model.first_targets[1])


@pytest.mark.parametrize("on_device", [True, False])
def test_no_validation_split(on_device):
    dm = Digits(val_fraction=0.0, on_device=on_device)
    dm.setup()
    assert dm.split_indices("val").numel() == 0 and len(dm.val_dataloader()) == 0
    assert dm.split_indices("train").numel() == 1797 - dm.split_indices("test").numel()


def test_invalid_options_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="val_fraction"):
        Digits(val_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        Digits(batch_size=0)
    with pytest.raises(ValueError, match="subset"):
        Digits(subset=0)


def test_large_upsampled_pools_stay_native_and_batches_are_upsampled(monkeypatch):
    """Past MAX_POOL_BYTES (CIFAR at 224 px), the pool keeps its native size; batches grow later."""
    import sslr.data.augment as augment

    upfront = Digits(image_size=64, num_workers=0)
    upfront.setup()
    monkeypatch.setattr(augment, "MAX_POOL_BYTES", 1)
    lazy = Digits(image_size=64, num_workers=0)
    lazy.setup()
    assert upfront._x.shape[-1] == 64 and lazy._x.shape[-1] == 8
    x_train, _ = next(iter(lazy.train_dataloader()))
    assert x_train.dtype == torch.uint8 and x_train.shape[-1] == 8
    augmented = lazy.transform_batch(x_train, train=True)
    assert augmented.shape == (x_train.shape[0], 3, 64, 64)
    assert 0.0 <= float(augmented.min()) and float(augmented.max()) <= 1.0
    x_eval, _ = next(iter(lazy.test_dataloader()))
    assert x_eval.shape[1:] == (3, 64, 64) and x_eval.dtype == torch.float32
    # Both paths show the same images (up to uint8 rounding at setup).
    assert (lazy.split("test")[0] - upfront.split("test")[0]).abs().mean() < 0.01


def test_a_second_run_on_the_same_datamodule_sees_the_same_augmentation():
    data = Digits(batch_size=8, num_workers=0)
    data.setup("fit")
    x = data.split("train")[0][:8]
    first = data.transform_batch(x, train=True)
    again_same_run = data.transform_batch(x, train=True)  # the stream moves on within a run
    data.setup("fit")  # a new Trainer entry (a second trainer.fit in the same process)
    second_run = data.transform_batch(x, train=True)
    assert not torch.equal(first, again_same_run)
    assert torch.equal(first, second_run)
