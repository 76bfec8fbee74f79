"""Hashing protocol splits: per-class counts, disjoint parts, validation apart from test queries."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from sslr.data import HashingDigits, HashingFashionMNIST
from sslr.data.digits import load_digits_pool


@pytest.fixture(scope="module")
def hashing_digits() -> HashingDigits:
    dm = HashingDigits(batch_size=100)
    dm.setup()
    return dm


def _sets(dm):
    return {k: set(dm.split_indices(k).tolist()) for k in dm.split_names()}


def test_protocol_counts_per_class(hashing_digits):
    dm = hashing_digits
    for name, per_class in (("query", 20), ("train", 100)):
        _, labels = dm.split(name)
        assert labels.sum(0).tolist() == [float(per_class)] * 10
    _, y = load_digits_pool()
    _, db_labels = dm.split("database")
    assert db_labels.sum(0).tolist() == (torch.bincount(y) - 120).float().tolist()


def test_parts_are_disjoint_and_cover_the_pool(hashing_digits):
    s = _sets(hashing_digits)
    assert not (s["query"] & s["train"]) and not (s["query"] & s["database"])
    assert not (s["train"] & s["database"])
    assert s["query"] | s["train"] | s["database"] == set(range(1797))
    # Validation queries come from the database, never from the test queries or training set.
    assert s["val_query"] <= s["database"] and len(s["val_query"]) == 200
    assert s["val_database"] == s["database"] - s["val_query"]


def test_labels_are_one_hot_floats_matching_the_digits(hashing_digits):
    x, labels = hashing_digits.split("query")
    _, y = load_digits_pool()
    assert x.shape == (200, 3, 32, 32) and labels.dtype == torch.float32
    assert torch.equal(labels.sum(1), torch.ones(200))
    assert torch.equal(labels.argmax(1), y[hashing_digits.split_indices("query")])


def test_val_and_test_loaders_are_queries_then_database(hashing_digits):
    for loaders, names in (
        (hashing_digits.val_dataloader(), ("val_query", "val_database")),
        (hashing_digits.test_dataloader(), ("query", "database")),
    ):
        assert len(loaders) == 2
        for loader, name in zip(loaders, names, strict=True):
            labels = torch.cat([y for _, y in loader])
            assert torch.equal(labels, hashing_digits.split(name)[1])  # in order, no shuffle


def test_protocol_split_is_fixed_validation_follows_seed():
    a, b = HashingDigits(seed=0), HashingDigits(seed=1)
    a.setup()
    b.setup()
    for name in ("query", "train", "database"):
        assert torch.equal(a.split_indices(name), b.split_indices(name))
    assert not torch.equal(a.split_indices("val_query"), b.split_indices("val_query"))
    c = HashingDigits(split_seed=1)
    c.setup()
    assert not torch.equal(a.split_indices("query"), c.split_indices("query"))


def test_database_size_caps_both_databases():
    dm = HashingDigits(database_size=50, val_queries=30)
    dm.setup()
    s = _sets(dm)
    assert len(s["database"]) == 50 and len(s["val_database"]) == 50
    assert len(s["val_query"]) == 30 and not (s["val_query"] & s["val_database"])
    assert len(s["query"]) == 200  # test queries untouched


def test_too_many_per_class_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than the 200"):
        HashingDigits(query_per_class=100, train_per_class=100).setup()


class _CodeRecorder(L.LightningModule):
    """Records what the Trainer feeds a hashing task: two validation loaders, multi-hot labels."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3 * 32 * 32, 8)
        self.val_seen = {0: 0, 1: 0}

    def training_step(self, batch, batch_idx):
        x, labels = batch
        assert x.shape[1:] == (3, 32, 32) and labels.shape[1] == 10
        return torch.tanh(self.net(x.flatten(1))).pow(2).mean()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, labels = batch
        assert labels.dtype == torch.float32 and labels.shape == (x.shape[0], 10)
        self.val_seen[dataloader_idx] += x.shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("on_device", [True, False])
def test_trainer_sees_queries_and_database(on_device, make_trainer):
    dm = HashingDigits(batch_size=128, on_device=on_device)
    model = _CodeRecorder()
    make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(model, datamodule=dm)
    assert model.val_seen == {0: 200, 1: 397}


def test_fashion_mnist_protocol(fashion_dir):
    dm = HashingFashionMNIST(num_workers=0)
    dm.setup()
    sizes = {k: dm.split_indices(k).numel() for k in dm.split_names()}
    assert sizes == {
        "train": 5000,
        "query": 1000,
        "database": 64000,
        "val_query": 1000,
        "val_database": 63000,
    }
    s = _sets(dm)
    assert not (s["train"] & s["query"]) and not (s["train"] & s["database"])
    assert not (s["query"] & s["database"]) and s["val_query"] <= s["database"]
    for name, per_class in (("query", 100), ("train", 500)):
        assert dm.split(name)[1].sum(0).tolist() == [float(per_class)] * 10
