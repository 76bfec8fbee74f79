"""Split protocols: which splits a DataModule serves and how they are drawn from a dataset.

- :class:`ClassificationSplits`: "train" (the official training part minus "val", capped at
  ``subset``), "val" (``val_fraction`` of every class of the training part, drawn with ``seed``)
  and "test" (the official test part). Targets: long class indices.
- :class:`HashingSplits`: the deep-hashing retrieval protocol (DPSH, HashNet, DeepHash-pytorch
  "cifar10-1"): pool every image, draw ``query_per_class`` queries and ``train_per_class``
  training images per class with ``split_seed`` (fixed by default, whatever ``seed`` is, so runs
  with different seeds are scored on the same queries and database); the rest is the database.
  Validation must not touch the test queries, and taking it from the training set would shrink
  the protocol's training set, so the validation queries "val_query" are a seeded (``seed``)
  random part of the database and "val_database" is the database without them.
  ``database_size`` caps both databases. Targets: multi-hot float (N, num_classes).

Val and test loaders of a hashing protocol are ``[queries, database]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sslr.data.source import Pool
from sslr.data.splits import DATABASE, VAL_QUERIES, per_class_split, random_subset, stratified_split


class SplitProtocol:
    """Names of the splits behind the val and test loaders (a pair: queries, then database)."""

    val_splits: tuple[str, ...]
    test_splits: tuple[str, ...]

    def split_pool(self, pool: Pool, seed: int, num_classes: int) -> tuple[Tensor, Tensor, dict]:
        """(images, targets, split name -> sorted pool indices) of an in-memory dataset."""
        raise NotImplementedError


class ClassificationSplits(SplitProtocol):
    """Official train/test parts, and a seeded stratified validation split of the training part."""

    val_splits = ("val",)
    test_splits = ("test",)

    def __init__(self, val_fraction: float, subset: int | None) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        if subset is not None and subset < 1:
            raise ValueError(f"subset must be a positive number of training images, got {subset}.")
        self.val_fraction = val_fraction
        self.subset = subset

    def train_val(self, targets: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """(train, val) indices into the training part whose class labels are ``targets``."""
        train, val = stratified_split(targets, self.val_fraction, seed)
        return random_subset(train, self.subset, seed), val

    def split_pool(self, pool: Pool, seed: int, num_classes: int) -> tuple[Tensor, Tensor, dict]:
        """The pool reordered as training part then test part; "test" is the test part."""
        n_all = pool.y.numel()
        test = pool.test
        is_test = torch.zeros(n_all, dtype=torch.bool)
        is_test[test] = True
        order = torch.cat([(~is_test).nonzero().flatten(), test])
        x, y = pool.x, pool.y
        if not torch.equal(order, torch.arange(n_all)):
            x, y = x[order], y[order]
        n = n_all - test.numel()
        train, val = self.train_val(y[:n], seed)
        return x, y.long(), {"train": train, "val": val, "test": torch.arange(n, n_all)}


@dataclass(frozen=True)
class HashingSplits(SplitProtocol):
    """The per-class query/train/database protocol (see the module docstring)."""

    val_splits = ("val_query", "val_database")
    test_splits = ("query", "database")

    query_per_class: int | None
    train_per_class: int | None
    database_size: int | None
    val_queries: int | None
    split_seed: int

    def __post_init__(self) -> None:
        if self.query_per_class is not None and (
            self.query_per_class < 1 or self.train_per_class < 1
        ):
            raise ValueError(
                f"query_per_class and train_per_class must be positive, got "
                f"{self.query_per_class} and {self.train_per_class}."
            )
        if self.database_size is not None and self.database_size < 1:
            raise ValueError(f"database_size must be positive, got {self.database_size}.")
        if self.val_queries is not None and self.val_queries < 0:
            raise ValueError(f"val_queries must be 0 or more, got {self.val_queries}.")

    def validation(
        self, database: Tensor, n_queries: int, seed: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(val_query, val_database) carved out of ``database``, never from ``exclude``."""
        count = default_val_queries(self.val_queries, n_queries, database.numel())
        return carve_val_queries(database, count, seed, exclude)

    def cap(self, database: Tensor) -> Tensor:
        """At most ``database_size`` of ``database``, drawn with ``split_seed``."""
        return random_subset(database, self.database_size, self.split_seed, DATABASE)

    def split_pool(self, pool: Pool, seed: int, num_classes: int) -> tuple[Tensor, Tensor, dict]:
        """The protocol over every image of the pool (its official test part plays no role)."""
        query, train, database = per_class_split(
            pool.y, [self.query_per_class, self.train_per_class], self.split_seed
        )
        val_query, val_database = self.validation(database, query.numel(), seed)
        index = {
            "train": train,
            "query": query,
            "database": self.cap(database),
            "val_query": val_query,
            "val_database": self.cap(val_database),
        }
        labels = F.one_hot(pool.y, num_classes).float()  # (N, C) multi-hot (here one-hot)
        return pool.x, labels, index


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
