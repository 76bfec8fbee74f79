"""CIFAR-10 and CIFAR-100 (torchvision's python version): 60,000 32x32 colour images."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sslr.data.base import DownloadableDataModule, default_root
from sslr.data.errors import DatasetNotFoundError


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
        f"there, or pass root= the folder that holds {cls.base_folder}/."
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
    cls = _torchvision_class(name)
    target = str(Path(root or default_root()).expanduser())
    try:
        cls(target, train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise cifar_not_found(name, root, reason=str(err) or type(err).__name__) from err


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


class _CIFAR(DownloadableDataModule):
    """CIFAR through torchvision: downloaded in ``prepare_data`` when ``download`` and online.

    Offline and absent, ``prepare_data`` (and ``setup``) raise DatasetNotFoundError with one
    sentence naming the folder looked in. Test split: the official 10,000 test images.
    Augmentation: random crop with zero padding (4 px at 32 px) and horizontal flip.
    """

    dataset_name: str
    flip = True

    def prepare_data(self) -> None:
        if cifar_present(self.dataset_name, self.root):
            return
        if not self.download:
            raise cifar_not_found(self.dataset_name, self.root)
        download_cifar(self.dataset_name, self.root)

    def _load_train_test(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return load_cifar(self.dataset_name, self.root)


class CIFAR10(_CIFAR):
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes, 32x32 RGB."""

    dataset_name = "CIFAR-10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100(_CIFAR):
    """CIFAR-100: 50,000 training and 10,000 test images of 100 fine classes, 32x32 RGB."""

    dataset_name = "CIFAR-100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
