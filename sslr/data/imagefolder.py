"""ImageNet subsets (ImageNet-100 and the like) as class-per-folder trees: root/train, root/val."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from sslr.data.errors import DatasetNotFoundError
from sslr.data.loaders import streaming_loader
from sslr.data.splits import random_subset, stratified_split
from sslr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


class _FolderWithClasses(ImageFolder):
    """An ImageFolder whose class -> index map is given (val/ must use train/'s indices)."""

    def __init__(self, root: str, class_to_idx: dict[str, int], transform: Any) -> None:
        self._given = class_to_idx
        super().__init__(root, transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        present = {p.name for p in Path(directory).iterdir() if p.is_dir()}
        unknown = sorted(present - set(self._given))
        if unknown:
            raise DatasetNotFoundError(
                f"{directory} has class folders that {Path(directory).parent / 'train'} lacks "
                f"(first: {unknown[0]}); train/ and val/ must have the same class folders."
            )
        return sorted(self._given, key=self._given.get), self._given


class ImageFolderData(L.LightningDataModule):
    """An ImageNet subset laid out as ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``.

    Images are decoded and augmented per image in DataLoader workers (the set does not fit in
    memory): training resizes to 256 and takes a random 224 crop with a horizontal flip (centre
    crop without ``augment``); evaluation resizes to 256 and centre-crops 224 (both scaled when
    ``image_size`` is not 224). Splits: "val" is ``val_fraction`` of every class of train/,
    drawn with ``seed``; "test" is the val/ folder; ``predict_dataloader`` is the test split.

    ``num_classes`` is a constructor argument (attributes must be known before any I/O) and is
    checked against train/ in ``setup``. ``on_device`` must stay False here: the images are
    streamed from disk, not held in memory.
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str,
        num_classes: int = 100,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        image_size: int | None = 224,
        on_device: bool = False,
        subset: int | None = None,
    ) -> None:
        super().__init__()
        if on_device:
            raise ValueError(
                "ImageFolderData streams images from disk, so on_device=True is not available; "
                "it is meant for the in-memory datasets (Digits, FashionMNIST, CIFAR)."
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        self.save_hyperparameters()
        self.root = root
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_fraction = val_fraction
        self.seed = seed
        self.augment = augment
        self.image_size: int = image_size or 224
        self.subset = subset
        self._splits: dict[str, Subset | ImageFolder] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        root = Path(self.root).expanduser()
        train_dir, val_dir = root / "train", root / "val"
        for folder in (train_dir, val_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{folder} does not exist: ImageFolderData needs root= a folder with train/ "
                    f"and val/ subfolders, each holding one folder of images per class."
                )
        try:
            train_aug = ImageFolder(
                str(train_dir), transform=train_transform(self.image_size, self.augment)
            )
            train_eval = ImageFolder(str(train_dir), transform=eval_transform(self.image_size))
            test = _FolderWithClasses(
                str(val_dir), train_aug.class_to_idx, transform=eval_transform(self.image_size)
            )
        except FileNotFoundError as err:  # torchvision: no class folder, or a class with no image
            raise DatasetNotFoundError(f"{root}: {err}") from err
        if len(train_aug.classes) != self.num_classes:
            raise DatasetNotFoundError(
                f"{train_dir} has {len(train_aug.classes)} class folders but num_classes is "
                f"{self.num_classes}: set num_classes={len(train_aug.classes)} or fix the folder."
            )
        targets = torch.as_tensor(train_aug.targets)
        train_idx, val_idx = stratified_split(targets, self.val_fraction, self.seed)
        train_idx = random_subset(train_idx, self.subset, self.seed)
        self._splits = {
            "train": Subset(train_aug, train_idx.tolist()),
            "val": Subset(train_eval, val_idx.tolist()),
            "test": test,
        }

    def split_size(self, name: str) -> int:
        """Number of images in "train", "val" or "test" (after setup)."""
        self.setup()
        return len(self._splits[name])

    def _loader(self, name: str, train: bool) -> DataLoader:
        self.setup()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        pin = self.pin_memory and device is not None and device.type == "cuda"
        return streaming_loader(
            self._splits[name], train, self.batch_size, self.num_workers, pin, self.seed
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
