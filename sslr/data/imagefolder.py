"""ImageNet subsets (ImageNet-100 and the like) as class-per-folder trees: root/train, root/val."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from sslr.data.errors import DatasetNotFoundError
from sslr.data.module import WithClassificationSplits
from sslr.data.protocols import ClassificationSplits
from sslr.data.streaming import StreamingDataModule, StreamingSource
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


class ImageFolderSource(StreamingSource):
    """``root/train/<class>/*`` and ``root/val/<class>/*``; "test" is val/, and the protocol's
    train/val split is drawn from train/. ``num_classes`` is given and checked against train/."""

    name = "image folder"
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    flip = True

    def __init__(self, root: str, num_classes: int) -> None:
        self.root = root
        self.num_classes = num_classes

    def datasets(
        self, splits: ClassificationSplits, image_size: int, augment: bool, seed: int
    ) -> dict[str, Dataset]:
        root = Path(self.root).expanduser()
        train_dir, val_dir = root / "train", root / "val"
        for folder in (train_dir, val_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{folder} does not exist: ImageFolderData needs root= a folder with train/ "
                    f"and val/ subfolders, each holding one folder of images per class."
                )
        try:
            train_aug = ImageFolder(str(train_dir), transform=train_transform(image_size, augment))
            train_eval = ImageFolder(str(train_dir), transform=eval_transform(image_size))
            test = _FolderWithClasses(
                str(val_dir), train_aug.class_to_idx, transform=eval_transform(image_size)
            )
        except FileNotFoundError as err:  # torchvision: no class folder, or a class with no image
            raise DatasetNotFoundError(f"{root}: {err}") from err
        if len(train_aug.classes) != self.num_classes:
            raise DatasetNotFoundError(
                f"{train_dir} has {len(train_aug.classes)} class folders but num_classes is "
                f"{self.num_classes}: set num_classes={len(train_aug.classes)} or fix the folder."
            )
        train_idx, val_idx = splits.train_val(torch.as_tensor(train_aug.targets), seed)
        return {
            "train": Subset(train_aug, train_idx.tolist()),
            "val": Subset(train_eval, val_idx.tolist()),
            "test": test,
        }


class ImageFolderData(WithClassificationSplits, StreamingDataModule):
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

    def __init__(
        self,
        root: str,
        num_classes: int = 100,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Folder with the train/ and val/ class-per-folder trees.
            num_classes: Number of class folders (checked against train/ in setup).
        """
        super().__init__(ImageFolderSource(root, num_classes), root=root, **kwargs)
