"""Fixtures for the data tests: CPU only, no logger, no network, small and fast."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fashion_dir() -> Path:
    """Debian's Fashion-MNIST folder; the test is skipped where it is not installed."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    """No dataset found by accident through the environment; downloads land in tmp_path.

    One intra-op thread: these tensors are small, and on a shared 2-core machine two threads
    per process make tiny ops ten times slower through contention.
    """
    monkeypatch.delenv("SSLR_FASHION_MNIST", raising=False)
    monkeypatch.setenv("SSLR_DATA", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearClassifier(L.LightningModule):
    """Logistic regression on normalized pixels: small enough to train in seconds on the CPU."""

    def __init__(self, in_features: int, num_classes: int, mean, std, lr: float = 0.05):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.linear = nn.Linear(in_features, num_classes)
        self.lr = lr
        self.first_targets: dict[int, torch.Tensor] = {}
        self.test_correct = 0
        self.test_seen = 0

    def forward(self, x):
        return self.linear(((x - self.mean) / self.std).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and x.shape[1] == 3, (x.dtype, x.shape)
        if batch_idx == 0:
            self.first_targets[self.current_epoch] = y.detach().cpu()
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_correct += int((self(x).argmax(1) == y).sum())
        self.test_seen += y.numel()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


@pytest.fixture
def linear_classifier():
    return LinearClassifier


@pytest.fixture
def make_trainer(tmp_path):
    """A factory of quiet CPU trainers writing only under tmp_path."""

    def make(**kwargs) -> L.Trainer:
        defaults = dict(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        return L.Trainer(**{**defaults, **kwargs})

    return make
