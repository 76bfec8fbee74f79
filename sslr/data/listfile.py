"""Hashing datasets from list files (NUS-WIDE-21, MS-COCO, ImageNet-100), as deep-hashing code ships them.

A list file has one image per line: a path relative to the image root, then the 0/1 label
vector, separated by spaces (``images/0001.jpg 0 1 0 ... 1``). DeepHash-pytorch and HashNet
distribute ``train.txt`` (training set), ``test.txt`` (queries) and ``database.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from sslr.data.errors import DatasetNotFoundError, ListFileError
from sslr.data.module import WithHashingSplits
from sslr.data.protocols import HashingSplits
from sslr.data.streaming import StreamingDataModule, StreamingSource
from sslr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

# Number of labels of each known dataset (the width of its label vectors).
LIST_DATASETS: dict[str, int] = {"nuswide": 21, "coco": 80, "imagenet100": 100}


@dataclass(frozen=True)
class ImageList:
    """A parsed list file: image paths (as written) and labels (N, C) float 0/1."""

    source: Path
    paths: list[str]
    labels: Tensor


def parse_list_file(path: Path, num_labels: int) -> ImageList:
    """Read ``path``; every non-blank line must be an image path and ``num_labels`` 0/1 values."""
    if not path.is_file():
        raise DatasetNotFoundError(f"the list file {path} does not exist.")
    paths: list[str] = []
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            values = fields[1:]
            if len(values) != num_labels:
                raise ListFileError(
                    f"{path}, line {lineno}: expected {num_labels} labels after the image path, "
                    f"found {len(values)}."
                )
            if any(v not in ("0", "1") for v in values):
                raise ListFileError(
                    f"{path}, line {lineno}: labels must be 0 or 1, found "
                    f"{next(v for v in values if v not in ('0', '1'))!r}."
                )
            paths.append(fields[0])
            rows.append([float(v) for v in values])
    if not paths:
        raise ListFileError(f"{path} lists no images.")
    return ImageList(path, paths, torch.tensor(rows, dtype=torch.float32))


def check_images(images: ImageList, image_root: Path) -> None:
    """Raise DatasetNotFoundError if any listed image is not a file under ``image_root``."""
    missing = [p for p in images.paths if not (image_root / p).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{images.source}: {len(missing)} of {len(images.paths)} images are missing under "
            f"{image_root}, the first being {missing[0]}; paths in the list are relative to root=."
        )


class ListImages(Dataset):
    """Images named by a list, decoded with PIL (as RGB): items ``(x (3, S, S), labels (C,))``."""

    def __init__(self, image_root: Path, paths: list[str], labels: Tensor, transform: Any):
        self.image_root = image_root
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = default_loader(str(self.image_root / self.paths[i]))
        return self.transform(image), self.labels[i]


class ListFileSource(StreamingSource):
    """Images under ``root`` named by three list files in ``list_dir`` (default: ``root``):
    ``names["train"]``, ``names["query"]`` (the test queries) and ``names["database"]``.

    The protocol carves the validation queries out of the database, never from images that are
    also training images (by path), and caps both databases. Setup checks every listed image.
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    flip = True

    def __init__(self, root: str, dataset: str, list_dir: str | None, names: dict[str, str]):
        if dataset not in LIST_DATASETS:
            raise ValueError(
                f"unknown hashing list dataset {dataset!r}; choose one of "
                f"{', '.join(LIST_DATASETS)}."
            )
        self.root = root
        self.name = dataset
        self.num_classes = LIST_DATASETS[dataset]
        self.list_dir = list_dir
        self.names = names

    def datasets(
        self, splits: HashingSplits, image_size: int, augment: bool, seed: int
    ) -> dict[str, Dataset]:
        image_root = Path(self.root).expanduser()
        list_dir = Path(self.list_dir).expanduser() if self.list_dir else image_root
        lists = {
            name: parse_list_file(list_dir / file, self.num_classes)
            for name, file in self.names.items()
        }
        for images in lists.values():
            check_images(images, image_root)

        train, query, database = lists["train"], lists["query"], lists["database"]
        # Indices into the database list; val queries avoid images that are also training images.
        db_index = torch.arange(len(database.paths))
        train_paths = set(train.paths)
        in_train = torch.tensor([p in train_paths for p in database.paths], dtype=torch.bool)
        val_query, val_database = splits.validation(
            db_index, len(query.paths), seed, db_index[in_train]
        )
        train_tf = train_transform(image_size, augment)
        eval_tf = eval_transform(image_size)

        def part(images: ImageList, index: Tensor | None, transform: Any) -> ListImages:
            if index is None:
                return ListImages(image_root, images.paths, images.labels, transform)
            paths = [images.paths[i] for i in index.tolist()]
            return ListImages(image_root, paths, images.labels[index], transform)

        return {
            "train": part(train, None, train_tf),
            "query": part(query, None, eval_tf),
            "database": part(database, splits.cap(db_index), eval_tf),
            "val_query": part(database, val_query, eval_tf),
            "val_database": part(database, splits.cap(val_database), eval_tf),
        }


class HashingListData(WithHashingSplits, StreamingDataModule):
    """Multi-label hashing retrieval from list files: NUS-WIDE (21 most frequent concepts), MS-COCO
    (80) and ImageNet-100 (100).

    ``root`` holds the images; the list files are looked for in ``list_dir`` (default: ``root``).
    The test queries are ``query_list``, the database ``database_list``, training ``train_list``.
    Validation queries are a seeded random part of the database that is not in the training list
    (by path), and the validation database is the database without them: test queries stay
    untouched. ``database_size`` caps both databases (drawn with ``split_seed``) for quick runs.

    Images: resize 256, crop 224 (random crop and flip in training when ``augment``), float
    [0, 1], not normalized; ``mean``/``std`` are ImageNet's. Batches ``(x, labels)``, labels
    multi-hot float (N, num_classes). ``val_dataloader()``/``test_dataloader()`` return
    ``[queries, database]``. Setup checks that every listed image exists.
    """

    fixed_options = ("query_per_class", "train_per_class")  # the lists fix them

    def __init__(
        self,
        root: str,
        dataset: Literal["nuswide", "coco", "imagenet100"] = "nuswide",
        list_dir: str | None = None,
        train_list: str = "train.txt",
        query_list: str = "test.txt",
        database_list: str = "database.txt",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Folder the images are read from (list paths are relative to it).
            dataset: Which set the lists describe (fixes the number of labels).
            list_dir: Folder of the list files (None: root).
            train_list: List file of the training images.
            query_list: List file of the test queries.
            database_list: List file of the retrieval database.
        """
        names = {"train": train_list, "query": query_list, "database": database_list}
        super().__init__(
            ListFileSource(root, dataset, list_dir, names),
            query_per_class=None,  # the lists fix the queries and the training images
            train_per_class=None,
            root=root,
            **kwargs,
        )
        self.list_names = names
