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

from typing import Any

from sslr.data.base import Downloadable, HashingDataModule
from sslr.data.cifar import CIFAR10Source
from sslr.data.digits import DigitsSource, Embedded
from sslr.data.fashion_mnist import FashionMNISTSource
from sslr.data.protocols import carve_val_queries, default_val_queries

__all__ = [
    "HashingCIFAR10",
    "HashingDigits",
    "HashingFashionMNIST",
    "carve_val_queries",
    "default_val_queries",
]


class _DownloadableHashing(Downloadable, HashingDataModule):
    """The hashing protocol over a set torchvision can download: HashingCIFAR10, HashingFashionMNIST."""


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


class HashingDigits(Embedded, HashingDataModule):
    """The CIFAR-10 protocol scaled to scikit-learn's 1,797 digits (embedded, no download).

    Per class 20 queries and 100 training images (classes have 174 to 183 images), so about
    200 queries, 1,000 training images and 597 database images. Augmentation: crop, no flip.
    ``num_workers`` defaults to 0 (see :class:`~sslr.data.digits.Embedded`).
    """

    def __init__(
        self, *, query_per_class: int = 20, train_per_class: int = 100, **kwargs: Any
    ) -> None:
        """
        Args:
            query_per_class: Test queries drawn from every class.
            train_per_class: Training images drawn from every class; the rest is the database.
        """
        super().__init__(
            DigitsSource(),
            query_per_class=query_per_class,
            train_per_class=train_per_class,
            **kwargs,
        )
