"""CIFAR-10 and CIFAR-100 (torchvision's python version): 60,000 32x32 colour images."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sslr.data.base import DownloadableDataModule
from sslr.data.errors import DatasetNotFoundError
from sslr.data.source import DownloadableSource, Pool, default_root


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"CIFAR-10": datasets.CIFAR10, "CIFAR-100": datasets.CIFAR100}[name]


def cifar_folder(name: str, root: str | None) -> Path:
    """The folder torchvision reads (``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``)."""
    return Path(root or default_root()).expanduser() / _torchvision_class(name).base_folder


def cifar_not_found(name: str, root: str | None, reason: str | None = None) -> DatasetNotFoundError:
    cls = _torchvision_class(name)
    folder = cifar_folder(name, root)
    failed = f" and could not be downloaded ({reason})" if reason else ""
    return DatasetNotFoundError(
        f"{name} was not found in {folder}{failed}: extract the python version ({cls.url}) "
        f"there, or set --data.root (root= in Python) to the folder that holds {cls.base_folder}/."
    )


def cifar_present(name: str, root: str | None) -> bool:
    """True if torchvision finds a complete, checksum-verified copy under ``root``."""
    cls = _torchvision_class(name)
    try:
        cls(str(Path(root or default_root()).expanduser()), train=False, download=False)
    except RuntimeError:
        return False
    return True


def download_cifar(name: str, root: str | None) -> None:
    """Download and extract with torchvision; one clear DatasetNotFoundError when that fails."""
    {"CIFAR-10": CIFAR10Source, "CIFAR-100": CIFAR100Source}[name](root, True).prepare()


@functools.cache
def _load(name: str, folder: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cls = _torchvision_class(name)
    parts = []
    for train in (True, False):
        ds = cls(folder, train=train, download=False)
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # (N, 3, 32, 32)
        parts += [x, torch.as_tensor(ds.targets, dtype=torch.long)]
    return tuple(parts)


def load_cifar(name: str, root: str | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test) as uint8 (N, 3, 32, 32) and long labels, read locally."""
    folder = str(Path(root or default_root()).expanduser().resolve())
    try:
        return _load(name, folder)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise cifar_not_found(name, root) from err


class CIFARSource(DownloadableSource):
    """CIFAR read with torchvision under ``root``: the 50,000 official training images then the
    10,000 test images. Downloaded when absent and ``download``; offline and absent, one
    DatasetNotFoundError naming the folder looked in."""

    flip = True

    def present(self) -> bool:
        return cifar_present(self.name, self.root)

    def fetch(self, target: Path) -> None:
        _torchvision_class(self.name)(str(target), train=True, download=True)

    def not_found(self, reason: str | None = None) -> DatasetNotFoundError:
        return cifar_not_found(self.name, self.root, reason)

    def load(self) -> Pool:
        return Pool.from_parts(*load_cifar(self.name, self.root))


class CIFAR10Source(CIFARSource):
    name = "CIFAR-10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100Source(CIFARSource):
    name = "CIFAR-100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


class CIFAR10(DownloadableDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes, 32x32 RGB.

    Through torchvision: downloaded in ``prepare_data`` when ``download`` and online. Offline and
    absent, ``prepare_data`` (and ``setup``) raise DatasetNotFoundError with one sentence naming
    the folder looked in. Test split: the official 10,000 test images. Augmentation: random crop
    with zero padding (4 px at 32 px) and horizontal flip.
    """

    source_class = CIFAR10Source


class CIFAR100(DownloadableDataModule):
    """CIFAR-100: 50,000 training and 10,000 test images of 100 fine classes, 32x32 RGB.

    Read, downloaded and augmented as :class:`CIFAR10`.
    """

    source_class = CIFAR100Source
