"""Shared fixtures: a small CNN trained on real data (sklearn's Digits, 16 px, 3 channels) in
a few seconds on the CPU, and attack targets made from it."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from sslr.robustness import AttackTarget  # noqa: E402  (after the environment)

MEAN = (0.3, 0.3, 0.3)
STD = (0.4, 0.4, 0.4)
SIZE = 16


def digits_tensors(size: int = SIZE):
    """Digits as (N, 3, size, size) in [0, 1] and labels; a fixed 1297/500 train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, size, size)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1297], order[1297:]
    return (x[train], y[train]), (x[test], y[test])


class SmallCNN(nn.Module):
    """conv-BN-ReLU-pool, conv-ReLU-pool, linear: ~15k parameters, takes normalized input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
        )
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8) -> nn.Module:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model((x[idx] - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for these modules (restored after each): on a small shared CPU,
    OpenMP's spinning threads make these tiny models several times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return digits_tensors()


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The trained network (do not modify: tests take copies through ``target``)."""
    torch.manual_seed(0)
    (x_train, y_train), _ = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session-scoped: set up before the module-scoped _one_thread
    try:
        return _train(SmallCNN(), x_train, y_train)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def test_subset(digits):
    """64 test images and labels."""
    _, (x_test, y_test) = digits
    return x_test[:64].clone(), y_test[:64].clone()


@pytest.fixture(scope="session")
def make_target():
    """Network (taking normalized input) -> AttackTarget with the Digits normalization."""
    return lambda network, num_classes=10: AttackTarget(network, MEAN, STD, num_classes)


@pytest.fixture
def target(trained_cnn, make_target) -> AttackTarget:
    """A fresh copy of the trained network as an attack target (eval mode)."""
    return make_target(copy.deepcopy(trained_cnn).eval())
