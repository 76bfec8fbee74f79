"""Deep-hashing retrieval splits of the in-memory datasets: the CIFAR-10 protocol and its offline twins.

The protocol (DPSH, HashNet, DeepHash-pytorch "cifar10-1"): pool the official train and test
images, then per class draw ``query_per_class`` queries (100) and ``train_per_class`` training
images (500); everything else is the retrieval database. On CIFAR-10: 1,000 queries, 5,000
training images, 54,000 database images. The same protocol runs on Fashion-MNIST and Digits so
that hashing works offline.

Splits (indices into one pool, disjoint): "train", "query" and "database" are the protocol's,
drawn with ``split_seed`` (fixed by default, whatever ``seed`` is, so runs with different seeds
are scored on the same queries and database). Validation must not touch the test queries, and
taking it from the training set would shrink the protocol's training set, so the validation
queries "val_query" are a seeded (``seed``) random part of the database, and "val_database" is
the database without them. Test queries are never seen before ``test``.

Batches: ``(x, labels)`` with labels multi-hot float (N, num_classes) (one-hot here).
``val_dataloader()`` and ``test_dataloader()`` return ``[queries, database]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslr.data.base import InMemoryDataModule
from sslr.data.cifar import CIFAR10, cifar_not_found, cifar_present, download_cifar, load_cifar
from sslr.data.digits import Digits, load_digits_pool
from sslr.data.errors import DatasetNotFoundError
from sslr.data.fashion_mnist import (
    FashionMNIST,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
    not_found_message,
)
from sslr.data.splits import DATABASE, VAL_QUERIES, per_class_split, random_subset


def carve_val_queries(
    database: Tensor, count: int, seed: int, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``count`` validation queries from ``database`` (never from ``exclude``).

    Returns (val_query, val_database): the drawn indices, and the database without them.
    """
    eligible = database
    if exclude is not None and exclude.numel():
        eligible = database[~torch.isin(database, exclude)]
    val_query = random_subset(eligible, count, seed, VAL_QUERIES) if count else eligible[:0]
    val_database = database[~torch.isin(database, val_query)]
    return val_query, val_database


def default_val_queries(val_queries: int | None, n_queries: int, n_database: int) -> int:
    """As many validation queries as test queries unless set, and at most half the database."""
    count = n_queries if val_queries is None else val_queries
    return max(0, min(count, n_database // 2))


class _HashingInMemory(InMemoryDataModule):
    """The per-class protocol on an in-memory dataset; subclasses provide :meth:`_load_all`."""

    def __init__(
        self,
        root: str | None,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        seed: int,
        augment: bool,
        image_size: int | None,
        on_device: bool,
        query_per_class: int,
        train_per_class: int,
        database_size: int | None,
        val_queries: int | None,
        split_seed: int,
    ) -> None:
        super().__init__(
            root, batch_size, num_workers, pin_memory, seed, augment, image_size, on_device
        )
        if query_per_class < 1 or train_per_class < 1:
            raise ValueError(
                f"query_per_class and train_per_class must be positive, got {query_per_class} "
                f"and {train_per_class}."
            )
        if database_size is not None and database_size < 1:
            raise ValueError(f"database_size must be positive, got {database_size}.")
        if val_queries is not None and val_queries < 0:
            raise ValueError(f"val_queries must be 0 or more, got {val_queries}.")
        self.query_per_class = query_per_class
        self.train_per_class = train_per_class
        self.database_size = database_size
        self.val_queries = val_queries
        self.split_seed = split_seed

    def _load_all(self) -> tuple[Tensor, Tensor]:
        """Every image of the dataset: uint8 (N, C, h, w) and long class labels (N,)."""
        raise NotImplementedError

    def _load(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x, y = self._load_all()
        query, train, database = per_class_split(
            y, [self.query_per_class, self.train_per_class], self.split_seed
        )
        count = default_val_queries(self.val_queries, query.numel(), database.numel())
        val_query, val_database = carve_val_queries(database, count, self.seed)
        database = random_subset(database, self.database_size, self.split_seed, DATABASE)
        val_database = random_subset(val_database, self.database_size, self.split_seed, DATABASE)
        index = {
            "train": train,
            "query": query,
            "database": database,
            "val_query": val_query,
            "val_database": val_database,
        }
        labels = F.one_hot(y, self.num_classes).float()  # (N, C) multi-hot (here one-hot)
        return x, labels, index

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        self.setup()
        if self._index["val_query"].numel() == 0:
            return []
        return [self._loader("val_query", train=False), self._loader("val_database", train=False)]

    def test_dataloader(self):
        return [self._loader("query", train=False), self._loader("database", train=False)]

    def predict_dataloader(self):
        return self.test_dataloader()


class _DownloadableHashing(_HashingInMemory):
    """A hashing protocol over a set torchvision can download: the protocol's options plus
    ``download`` (in ``prepare_data``, only when no local copy is found)."""

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = True,
        seed: int = 0,
        augment: bool = True,
        image_size: int | None = 32,
        on_device: bool = False,
        query_per_class: int = 100,
        train_per_class: int = 500,
        database_size: int | None = None,
        val_queries: int | None = None,
        split_seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            pin_memory,
            seed,
            augment,
            image_size,
            on_device,
            query_per_class,
            train_per_class,
            database_size,
            val_queries,
            split_seed,
        )
        self.download = download


class HashingCIFAR10(_DownloadableHashing):
    """CIFAR-10 retrieval: 100 queries and 500 training images per class, the rest the database.

    Data as :class:`~sslr.data.CIFAR10` (downloaded in ``prepare_data`` when online; offline and
    absent, a DatasetNotFoundError naming the folder). Augmentation: crop with padding and flip.
    """

    num_classes = 10
    mean = CIFAR10.mean
    std = CIFAR10.std
    flip = True

    def prepare_data(self) -> None:
        if cifar_present("CIFAR-10", self.root):
            return
        if not self.download:
            raise cifar_not_found("CIFAR-10", self.root)
        download_cifar("CIFAR-10", self.root)

    def _load_all(self) -> tuple[Tensor, Tensor]:
        x_train, y_train, x_test, y_test = load_cifar("CIFAR-10", self.root)
        return torch.cat([x_train, x_test]), torch.cat([y_train, y_test])


class HashingFashionMNIST(_DownloadableHashing):
    """The CIFAR-10 protocol on Fashion-MNIST's 70,000 images (offline: see FashionMNIST).

    Per class 100 queries and 500 training images; database 64,000 images.
    """

    num_classes = 10
    mean = FashionMNIST.mean
    std = FashionMNIST.std
    flip = True

    def prepare_data(self) -> None:
        if find_fashion_mnist(self.root) is not None:
            return
        if not self.download:
            raise DatasetNotFoundError(not_found_message(self.root))
        download_fashion_mnist(self.root)

    def _load_all(self) -> tuple[Tensor, Tensor]:
        x_train, y_train, x_test, y_test = load_fashion_mnist(self.root)
        return torch.cat([x_train, x_test]), torch.cat([y_train, y_test])


class HashingDigits(_HashingInMemory):
    """The CIFAR-10 protocol scaled to scikit-learn's 1,797 digits (embedded, no download).

    Per class 20 queries and 100 training images (classes have 174 to 183 images), so about
    200 queries, 1,000 training images and 597 database images. Augmentation: crop, no flip.
    """

    num_classes = 10
    mean = Digits.mean
    std = Digits.std
    flip = False

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = True,
        seed: int = 0,
        augment: bool = True,
        image_size: int | None = 32,
        on_device: bool = False,
        query_per_class: int = 20,
        train_per_class: int = 100,
        database_size: int | None = None,
        val_queries: int | None = None,
        split_seed: int = 0,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            pin_memory,
            seed,
            augment,
            image_size,
            on_device,
            query_per_class,
            train_per_class,
            database_size,
            val_queries,
            split_seed,
        )

    def _load_all(self) -> tuple[Tensor, Tensor]:
        return load_digits_pool()
