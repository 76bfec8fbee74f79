"""Shared fixtures: a small CNN trained once per session on real data (sklearn's Digits, 16 px,
3 channels), taking [0, 1] pixels, and a fixed test subset. Its clean accuracy is checked
before any test relies on it."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")

SIZE = 16
MEAN, STD = 0.3, 0.4


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


class PixelCNN(nn.Module):
    """Normalization, conv-BN-ReLU-pool, conv-ReLU-pool, linear: takes [0, 1] pixels."""

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
        return self.classifier(self.features((x - MEAN) / STD).flatten(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def digits():
    return digits_tensors()


@pytest.fixture(scope="session")
def model(digits):
    """The trained network (eval mode, frozen); clean test accuracy checked >= 0.9."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared CPU: one thread is fastest
    try:
        torch.manual_seed(0)
        (x_train, y_train), (x_test, y_test) = digits
        net = train(PixelCNN(), x_train, y_train)
        with torch.no_grad():
            accuracy = (net(x_test).argmax(dim=1) == y_test).float().mean().item()
        assert accuracy >= 0.9, f"the Digits fixture model is not trained ({accuracy:.3f})"
        return net
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def subset(digits):
    """96 test images and labels."""
    _, (x_test, y_test) = digits
    return x_test[:96].clone(), y_test[:96].clone()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
