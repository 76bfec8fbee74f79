"""The splits and first batches of the embedded DataModules, pinned to literal values.

Runs compared across versions (and resumed runs) rely on them: a change of the split or order
code must show up here, not silently as different accuracies. The values were recorded from the
code before the DataModules were recomposed from sources and split protocols, and that code gave
the same splits and batches on every DataModule (Digits, Fashion-MNIST, image folders, list files).
"""

from __future__ import annotations

import pytest
import torch

from sslr.data import Digits, HashingDigits

# split -> (size, sum of pool indices, first four indices)
DIGITS = {
    0: {
        "train": (1295, 932368, [0, 1, 2, 3]),
        "val": (143, 100835, [7, 10, 34, 58]),
        "test": (359, 580503, [1438, 1439, 1440, 1441]),
    },
    1: {
        "train": (1295, 938206, [0, 1, 2, 3]),
        "val": (143, 94997, [34, 43, 45, 59]),
        "test": (359, 580503, [1438, 1439, 1440, 1441]),
    },
}
HASHING_DIGITS = {
    "train": (1000, 909834, [0, 2, 3, 5]),
    "query": (200, 166214, [15, 22, 23, 28]),
    "database": (597, 537658, [1, 4, 14, 16]),
    "val_query": (200, 183828, [27, 31, 43, 45]),
    "val_database": (397, 353830, [1, 4, 14, 16]),
}


def _summary(dm) -> dict:
    return {
        name: (idx.numel(), int(idx.sum()), idx[:4].tolist())
        for name in dm.split_names()
        for idx in [dm.split_indices(name)]
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_digits_splits_are_pinned(seed):
    dm = Digits(seed=seed)
    dm.setup()
    assert _summary(dm) == DIGITS[seed]


def test_hashing_digits_splits_are_pinned():
    dm = HashingDigits()
    dm.setup()
    assert _summary(dm) == HASHING_DIGITS


@pytest.mark.parametrize("on_device", [False, True])
def test_first_batches_are_pinned(on_device):
    dm = Digits(batch_size=16, on_device=on_device)
    dm.setup()
    _, y = next(iter(dm.train_dataloader()))
    assert y.tolist() == [6, 6, 1, 7, 6, 8, 0, 3, 3, 8, 4, 8, 0, 1, 9, 3]
    _, y = dm.split("test")
    assert int(y.sum()) == 1613 and y[:10].tolist() == [4, 2, 6, 7, 8, 2, 5, 7, 9, 9]
    hashing = HashingDigits(batch_size=16, on_device=on_device)
    _, labels = next(iter(hashing.train_dataloader()))
    assert labels.argmax(1).tolist() == [6, 1, 2, 7, 5, 0, 7, 1, 6, 3, 8, 7, 3, 8, 7, 7]
    assert torch.equal(labels.sum(1), torch.ones(16))


def test_constructor_arguments_are_hyperparameters_and_attributes():
    """What checkpoints record and what the CLI links: every argument, nothing more."""
    dm = HashingDigits(batch_size=32, database_size=300, val_queries=50)
    assert dict(dm.hparams) == {
        "root": None,
        "batch_size": 32,
        "num_workers": 0,
        "pin_memory": True,
        "seed": 0,
        "augment": True,
        "image_size": 32,
        "on_device": False,
        "query_per_class": 20,
        "train_per_class": 100,
        "database_size": 300,
        "val_queries": 50,
        "split_seed": 0,
    }
    assert dm.database_size == 300 and dm.val_queries == 50 and dm.batch_size == 32
    assert (dm.num_classes, dm.flip) == (10, False) and dm.mean == Digits().mean
