"""Fashion-MNIST read offline: Debian's copy, $SSLR_FASHION_MNIST, root=, and the not-found error."""

from __future__ import annotations

import gzip
import struct
import urllib.error

import numpy as np
import pytest
import torch

from sslr.data import DatasetNotFoundError, FashionMNIST
from sslr.data import fashion_mnist as fm


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion(tmp_path):
    """A folder of four idx .gz files: 40 training and 20 test images whose pixels encode them."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_reads_idx_files_from_root_exactly(tiny_fashion):
    x_train, y_train, x_test, y_test = fm.load_fashion_mnist(str(tiny_fashion))
    images = fm.read_idx(tiny_fashion / "train-images-idx3-ubyte.gz")
    assert x_train.shape == (40, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert torch.equal(x_train[:, 0], torch.from_numpy(images))
    assert y_train.tolist() == [i % 10 for i in range(40)] and y_test.dtype == torch.long


def test_env_var_and_torchvision_layout_are_found(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setenv(fm.ENV_VAR, str(tiny_fashion))
    assert fm.find_fashion_mnist(None)["train_images"].parent == tiny_fashion
    monkeypatch.delenv(fm.ENV_VAR)
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in tiny_fashion.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    assert fm.find_fashion_mnist(str(tmp_path / "tv"))["test_labels"].parent == raw


def test_datamodule_on_tiny_files(tiny_fashion):
    dm = FashionMNIST(root=str(tiny_fashion), val_fraction=0.25, batch_size=8, image_size=32)
    dm.prepare_data()  # found locally: no download attempted
    dm.setup()
    assert [dm.split_indices(k).numel() for k in ("train", "val", "test")] == [30, 10, 20]
    x, y = dm.split("test")
    assert x.shape == (20, 3, 32, 32) and y.tolist() == [i % 10 for i in range(20)]


def test_missing_everywhere_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    dm = FashionMNIST(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "no-debian" in message
    assert fm.ENV_VAR in message and "dataset-fashion-mnist" in message
    with pytest.raises(DatasetNotFoundError):
        dm.setup()


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    from torchvision.datasets import FashionMNIST as TV

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setattr(TV, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded .*no network"):
        FashionMNIST(root=str(tmp_path / "nowhere")).prepare_data()


def test_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    """torchvision creates FashionMNIST/raw before its download fails: none of it may stay."""
    import torchvision.datasets.mnist as tv_mnist

    def mkdir_then_offline(url, download_root, *args, **kwargs):
        (tmp_path / "nowhere" / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)
        assert str(download_root).startswith(str(tmp_path / "nowhere"))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", mkdir_then_offline)
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded .*no network") as err:
        FashionMNIST(root=str(tmp_path / "nowhere")).prepare_data()
    assert "\n" not in str(err.value)  # torchvision's multi-line reason joined into one line
    assert not (tmp_path / "nowhere").exists()


def test_debian_copy(fashion_dir):
    dm = FashionMNIST(num_workers=0, seed=3)
    dm.prepare_data()
    dm.setup()
    sizes = {k: dm.split_indices(k).numel() for k in ("train", "val", "test")}
    assert sizes == {"train": 54000, "val": 6000, "test": 10000}
    x, y = dm.split("val")
    assert x.shape == (6000, 3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.bincount(y).tolist() == [600] * 10  # stratified
    assert float(x.mean()) == pytest.approx(dm.mean[0], abs=0.01)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.dtype == torch.uint8 and xb.shape == (128, 1, 32, 32)
    augmented = dm.transform_batch(xb, train=True)
    assert augmented.shape == (128, 3, 32, 32) and not torch.equal(
        augmented, dm.transform_batch(xb, train=False)
    )
