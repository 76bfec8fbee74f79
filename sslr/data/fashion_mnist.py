"""Fashion-MNIST: 70,000 28x28 grey images of clothing, 10 classes; works offline from local idx files.

Looked for, in order: ``root``, the folder named by $SSLR_FASHION_MNIST, Debian's copy
(``apt-get install dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist), and the default
data folder ($SSLR_DATA or ./data). A folder qualifies if it (or its ``FashionMNIST/raw``, the
layout torchvision downloads into) holds the four idx files, gzipped or not.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sslr.data.base import DownloadableDataModule
from sslr.data.errors import DatasetNotFoundError
from sslr.data.source import DownloadableSource, Pool, default_root

ENV_VAR = "SSLR_FASHION_MNIST"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def candidate_dirs(root: str | None) -> list[Path]:
    """The folders searched for the idx files, in order (see the module docstring)."""
    dirs = [root, os.environ.get(ENV_VAR), DEBIAN_DIR, default_root()]
    return [Path(d).expanduser() for d in dict.fromkeys(d for d in dirs if d)]


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in ``folder`` or ``folder/FashionMNIST/raw``, or None."""
    for place in (folder, folder / "FashionMNIST" / "raw"):
        found = {}
        for key, name in FILES.items():
            path = next((p for p in (place / f"{name}.gz", place / name) if p.is_file()), None)
            if path is None:
                break
            found[key] = path
        else:
            return found
    return None


def find_fashion_mnist(root: str | None) -> dict[str, Path] | None:
    """The idx files of the first candidate folder that has all four, or None."""
    for folder in candidate_dirs(root):
        files = _idx_files(folder)
        if files is not None:
            return files
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DatasetNotFoundError(f"{path} is not an idx file of unsigned bytes.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetNotFoundError(
            f"{path} is truncated: expected {shape}, got {array.size} bytes."
        )
    return array.reshape(shape).copy()  # writable, independent of the file's bytes


@functools.cache
def _load_files(files: tuple[tuple[str, Path], ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f = dict(files)
    x_train = torch.from_numpy(read_idx(f["train_images"]))[:, None]  # (60000, 1, 28, 28)
    y_train = torch.from_numpy(read_idx(f["train_labels"]).astype(np.int64))
    x_test = torch.from_numpy(read_idx(f["test_images"]))[:, None]  # (10000, 1, 28, 28)
    y_test = torch.from_numpy(read_idx(f["test_labels"]).astype(np.int64))
    return x_train, y_train, x_test, y_test


def load_fashion_mnist(root: str | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): uint8 (N, 1, 28, 28) and long labels, read locally.

    Raises DatasetNotFoundError naming every folder searched when none has the files.
    """
    files = find_fashion_mnist(root)
    if files is None:
        raise DatasetNotFoundError(not_found_message(root))
    return _load_files(tuple(sorted(files.items())))


def not_found_message(root: str | None, reason: str | None = None) -> str:
    searched = ", ".join(str(d) for d in candidate_dirs(root))
    failed = f" and could not be downloaded ({reason})" if reason else ""
    return (
        f"Fashion-MNIST was not found in {searched}{failed}: put the four idx .gz files "
        f"(train-images-idx3-ubyte.gz, ...) in a folder and set {ENV_VAR} or --data.root to it, "
        f"or install Debian's copy with `apt-get install dataset-fashion-mnist`."
    )


def download_fashion_mnist(root: str | None) -> None:
    """Fetch the idx files with torchvision into ``root`` (or the default data folder)."""
    FashionMNISTSource(root, download=True).prepare()


class FashionMNISTSource(DownloadableSource):
    """Fashion-MNIST's 60,000 training then 10,000 test images, found offline where possible (see
    the module docstring), else downloaded with torchvision when ``download``. A mirrored garment
    is the same kind of garment: flip allowed."""

    name = "Fashion-MNIST"
    num_classes = 10
    # Statistics of the [0, 1] pixels of the 60,000 training images at 32 px (at 28 px: .2860, .3530).
    mean = (0.2854, 0.2854, 0.2854)
    std = (0.3384, 0.3384, 0.3384)
    flip = True

    def present(self) -> bool:
        return find_fashion_mnist(self.root) is not None

    def fetch(self, target: Path) -> None:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        for train in (True, False):
            TorchvisionFashionMNIST(str(target), train=train, download=True)

    def not_found(self, reason: str | None = None) -> DatasetNotFoundError:
        return DatasetNotFoundError(not_found_message(self.root, reason))

    def load(self) -> Pool:
        return Pool.from_parts(*load_fashion_mnist(self.root))


class FashionMNIST(DownloadableDataModule):
    """Fashion-MNIST (10 classes), 28 px grey upsampled once to ``image_size`` (32) RGB.

    Found offline when possible (see the module docstring); downloaded with torchvision in
    ``prepare_data`` only when no local copy exists and ``download`` is True. Test split: the
    official 10,000 test images. Augmentation: random crop with zero padding (4 px at 32 px) and
    horizontal flip (a mirrored garment is the same kind of garment).
    """

    source_class = FashionMNISTSource
