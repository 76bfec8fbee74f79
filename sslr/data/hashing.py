"""Deep-hashing retrieval on the in-memory datasets: the CIFAR-10 protocol and its offline twins.

The protocol (:class:`~sslr.data.protocols.HashingSplits`; DPSH, HashNet, DeepHash-pytorch
"cifar10-1"): pool the official train and test images, then per class draw ``query_per_class``
queries (100) and ``train_per_class`` training images (500); everything else is the retrieval
database. On CIFAR-10: 1,000 queries, 5,000 training images, 54,000 database images. The same
protocol runs on Fashion-MNIST and Digits so that hashing works offline.

Splits (indices into one pool, disjoint): "train", "query" and "database" are the protocol's,
drawn with ``split_seed``; "val_query" is a seeded (``seed``) random part of the database and
"val_database" the database without them. Test queries are never seen before ``test``.

Batches: ``(x, labels)`` with labels multi-hot float (N, num_classes) (one-hot here).
``val_dataloader()`` and ``test_dataloader()`` return ``[queries, database]``.
"""

from __future__ import annotations

from sslr.data.base import InMemoryDataModule
from sslr.data.cifar import CIFAR10Source
from sslr.data.digits import DigitsSource
from sslr.data.fashion_mnist import FashionMNISTSource
from sslr.data.protocols import HashingSplits, carve_val_queries, default_val_queries
from sslr.data.source import DownloadableSource

__all__ = [
    "HashingCIFAR10",
    "HashingDigits",
    "HashingFashionMNIST",
    "carve_val_queries",
    "default_val_queries",
]


class _DownloadableHashing(InMemoryDataModule):
    """The hashing protocol over a set torchvision can download: the protocol's options plus
    ``download`` (in ``prepare_data``, only when no local copy is found). Subclasses name their
    source in ``source_class``."""

    source_class: type[DownloadableSource]

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
            self.source_class(root, download),
            HashingSplits(query_per_class, train_per_class, database_size, val_queries, split_seed),
        )


class HashingCIFAR10(_DownloadableHashing):
    """CIFAR-10 retrieval: 100 queries and 500 training images per class, the rest the database.

    Data as :class:`~sslr.data.CIFAR10` (downloaded in ``prepare_data`` when online; offline and
    absent, a DatasetNotFoundError naming the folder). Augmentation: crop with padding and flip.
    """

    source_class = CIFAR10Source


class HashingFashionMNIST(_DownloadableHashing):
    """The CIFAR-10 protocol on Fashion-MNIST's 70,000 images (offline: see FashionMNIST).

    Per class 100 queries and 500 training images; database 64,000 images.
    """

    source_class = FashionMNISTSource


class HashingDigits(InMemoryDataModule):
    """The CIFAR-10 protocol scaled to scikit-learn's 1,797 digits (embedded, no download).

    Per class 20 queries and 100 training images (classes have 174 to 183 images), so about
    200 queries, 1,000 training images and 597 database images. Augmentation: crop, no flip.
    """

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
            DigitsSource(),
            HashingSplits(query_per_class, train_per_class, database_size, val_queries, split_seed),
        )
