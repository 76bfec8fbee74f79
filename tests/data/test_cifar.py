"""CIFAR offline: a clear DatasetNotFoundError naming the folder; loading checked on fake batches."""

from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from sslr.data import CIFAR10, CIFAR100, DatasetNotFoundError, HashingCIFAR10


def _offline(self):
    raise urllib.error.URLError("no network")


@pytest.fixture
def no_network(monkeypatch):
    """Hermetic even on a machine that is online: torchvision's download always fails."""
    from torchvision.datasets import CIFAR10 as TV10
    from torchvision.datasets import CIFAR100 as TV100

    monkeypatch.setattr(TV10, "download", _offline)
    monkeypatch.setattr(TV100, "download", _offline)


@pytest.mark.parametrize(
    "cls,folder", [(CIFAR10, "cifar-10-batches-py"), (CIFAR100, "cifar-100-python")]
)
def test_offline_and_absent_fails_at_once_naming_the_folder(cls, folder, tmp_path, no_network):
    dm = cls(root=str(tmp_path))
    assert dm.num_classes == (10 if cls is CIFAR10 else 100)  # known without any I/O
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / folder) in message
    assert "could not be downloaded" in message and "no network" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert "--data.root" in message  # the option as it is typed


def _mkdir_then_offline(url, download_root, *args, **kwargs):
    """torchvision's downloader offline: it creates the target folder, then the request fails."""
    os.makedirs(download_root, exist_ok=True)
    raise urllib.error.URLError("no network")


def test_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    """torchvision creates the target folder before the download fails: it must not stay."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", _mkdir_then_offline)
    monkeypatch.setenv("SSLR_DATA", str(tmp_path / "data"))
    for dm in (CIFAR10(), HashingCIFAR10()):
        with pytest.raises(DatasetNotFoundError, match="no network"):
            dm.prepare_data()
        assert not (tmp_path / "data").exists()
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)
    (kept / "notes" / "a.txt").write_text("mine")
    with pytest.raises(DatasetNotFoundError):
        CIFAR10(root=str(kept)).prepare_data()
    assert sorted(p.name for p in kept.rglob("*")) == [
        "a.txt",
        "notes",
    ]  # folders that existed stay


def test_no_download_and_setup_without_data_fail_clearly(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        CIFAR10(root=str(tmp_path), download=False).prepare_data()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        CIFAR10(root=str(tmp_path)).setup()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        HashingCIFAR10(root=str(tmp_path), download=False).prepare_data()


def _image(i: int) -> np.ndarray:
    """A (3, 32, 32) image that encodes its index and its channel and row."""
    img = np.zeros((3, 32, 32), dtype=np.uint8)
    for c in range(3):
        img[c] = (i % 80) + 80 * c
    img[:, 0, :] = 255  # a white top row: orientation check
    return img


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """torchvision's python layout with 5 x 24 training and 30 test images (checksums skipped)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    index = 0

    def dump(name, n):
        nonlocal index
        data = np.stack([_image(index + k).reshape(-1) for k in range(n)])  # (n, 3072)
        labels = [(index + k) % 10 for k in range(n)]
        index += n
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)

    for b in range(1, 6):
        dump(f"data_batch_{b}", 24)
    dump("test_batch", 30)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
    return tmp_path


def test_cifar10_loads_channels_first_in_order(fake_cifar10):
    dm = CIFAR10(root=str(fake_cifar10), val_fraction=0.25, augment=False)
    dm.prepare_data()
    dm.setup()
    assert [dm.split_indices(k).numel() for k in ("train", "val", "test")] == [90, 30, 30]
    x, y = dm.split("test")
    assert x.shape == (30, 3, 32, 32)
    expected = torch.stack([torch.from_numpy(_image(120 + k)) for k in range(30)]).float() / 255
    assert torch.equal(x, expected)
    assert y.tolist() == [(120 + k) % 10 for k in range(30)]


def test_hashing_cifar10_protocol_on_fake_data(fake_cifar10):
    # 150 images, 15 per class: 2 queries and 5 training images per class, the rest database.
    dm = HashingCIFAR10(root=str(fake_cifar10), query_per_class=2, train_per_class=5)
    dm.prepare_data()
    dm.setup()
    sizes = {k: dm.split_indices(k).numel() for k in ("query", "train", "database")}
    assert sizes == {"query": 20, "train": 50, "database": 80}
    _, labels = dm.split("train")
    assert labels.shape == (50, 10) and labels.dtype == torch.float32
    assert labels.sum(0).tolist() == [5.0] * 10
