"""What every sslr DataModule is made of: a dataset source, a split protocol and the loader options.

A public DataModule (``Digits``, ``HashingCIFAR10``, ``ImageFolderData``, ...) is a storage mode
(:class:`~sslr.data.base.InMemoryDataModule` or :class:`~sslr.data.streaming.StreamingDataModule`)
given a source (:mod:`sslr.data.source`: where the images come from, their statistics, how to
fetch them) and a split protocol (:mod:`sslr.data.protocols`: classification train/val/test or
hashing query/train/database). The loader options every DataModule shares (``root``,
``batch_size``, ``num_workers``, ``pin_memory``, ``seed``, ``augment``, ``image_size``,
``on_device``) are declared once, typed, by :class:`SplitDataModule`; a protocol's options once
by its mixin here (:class:`WithClassificationSplits`, :class:`WithHashingSplits`); a source
family's by its mixin (``Downloadable``: ``root``, ``download``; ``Embedded``: ``num_workers=0``).
A public constructor declares only its own options (and a default that differs, such as
HashingDigits' 20 queries per class) and passes the rest on as ``**kwargs``. The CLI (jsonargparse) follows
``**kwargs`` into the parent constructors, so ``--data.help Digits`` lists every typed option
with the class's own defaults.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sslr.data.protocols import ClassificationSplits, HashingSplits, SplitProtocol
from sslr.data.source import DatasetSource


class SplitDataModule(L.LightningDataModule):
    """A source split by a protocol: attributes known before any I/O, loaders named by the protocol.

    ``num_classes``, ``mean``, ``std`` (for the task's normalization, linked by the CLI) and
    ``flip`` come from the source; the protocol names the splits each loader serves. Storage
    modes implement :meth:`setup`, :meth:`split_size` and :meth:`_loader`.
    """

    default_image_size: int  # each storage mode's, also its image_size default
    # Options a subclass fixes itself (passes as constants up the chain): not recorded, since
    # its constructor does not take them.
    fixed_options: tuple[str, ...] = ()

    def __init__(
        self,
        source: DatasetSource,
        splits: SplitProtocol,
        *,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = True,
        seed: int = 0,
        augment: bool = True,
        image_size: int | None = None,
        on_device: bool = False,
    ) -> None:
        """The loader options of every DataModule.

        Args:
            root: Folder of the dataset (None: $SSLR_DATA, else ./data; ignored by the embedded Digits).
            batch_size: Examples per batch (per process under DDP).
            num_workers: DataLoader worker processes.
            pin_memory: Pin host batches (only when the trainer runs on a GPU).
            seed: Seed of the validation split, the training order and the augmentation.
            augment: Random crop with padding, and a horizontal flip where it keeps the label.
            image_size: Side of the square images the network sees (None: the storage's default).
            on_device: Hold the whole dataset on the trainer's device, no workers (in-memory
                datasets only: a streaming one refuses True).
        """
        super().__init__()
        # Collects the arguments of the public constructor that called this one and of every
        # constructor between (Lightning walks the __init__ frames of the class hierarchy, with
        # their **kwargs), so checkpoints keep them all.
        self.save_hyperparameters(ignore=["source", "splits", *self.fixed_options])
        # Not merged into the loggers' hyperparameters: Lightning refuses a key the task and
        # the data share with different values, and both have a ``seed`` (the feedback's, the
        # splits' and order's), so `--model.seed 1` alone failed. The whole resolved config is
        # in the run's config.yaml and W&B's config; checkpoints still keep these hparams.
        self._log_hyperparams = False
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
        self.source = source
        self.splits = splits
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.augment = augment
        self.image_size: int = image_size or self.default_image_size
        self.on_device = on_device
        self.num_classes: int = source.num_classes
        self.mean = source.mean
        self.std = source.std
        self.flip: bool = source.flip
        for key, value in self.hparams.items():  # every constructor argument stays an attribute
            if not hasattr(self, key):
                setattr(self, key, value)

    def prepare_data(self) -> None:
        """Find the dataset, or download it where the source can (once, on one process)."""
        self.source.prepare()

    # ---- what storage modes provide ------------------------------------------------------------

    def split_size(self, name: str) -> int:
        """Number of examples in the split ``name`` (after setup)."""
        raise NotImplementedError

    def _loader(self, name: str, train: bool) -> Any:
        raise NotImplementedError

    def _device(self) -> torch.device:
        """Where the trainer runs (the CPU without one)."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _pin(self) -> bool:
        """Pinned host memory only helps copies to a GPU."""
        return self.pin_memory and self._device().type == "cuda"

    # ---- loaders, as the protocol names them ---------------------------------------------------

    def _stage(self, names: tuple[str, ...]) -> Any:
        """One loader for one split; ``[queries, database]`` for a pair (none if no queries)."""
        if len(names) == 1:
            return self._loader(names[0], train=False)
        self.setup()
        if self.split_size(names[0]) == 0:
            return []
        return [self._loader(name, train=False) for name in names]

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._stage(self.splits.val_splits)

    def test_dataloader(self):
        return self._stage(self.splits.test_splits)

    def predict_dataloader(self):
        return self._stage(self.splits.test_splits)


# ---- split protocols, as constructor options ---------------------------------------------------
# Mixins placed before the storage mode (``class CIFAR10(..., WithClassificationSplits,
# InMemoryDataModule)``): each declares its protocol's typed options once, builds the protocol,
# and passes the source and the loader options on.


class WithClassificationSplits:
    """Classification splits (:class:`~sslr.data.protocols.ClassificationSplits`) for a storage mode."""

    def __init__(
        self,
        source: DatasetSource,
        *,
        val_fraction: float = 0.1,
        subset: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            val_fraction: Fraction of every class of the training part held out for validation.
            subset: Keep only this many training examples (None: all), for quick runs.
        """
        super().__init__(source, ClassificationSplits(val_fraction, subset), **kwargs)


class WithHashingSplits:
    """The hashing retrieval protocol (:class:`~sslr.data.protocols.HashingSplits`) for a storage
    mode. List files fix the query and training sets themselves: HashingListData passes None
    for the per-class counts (and the CLI does not offer them there)."""

    def __init__(
        self,
        source: DatasetSource,
        *,
        query_per_class: int = 100,
        train_per_class: int = 500,
        database_size: int | None = None,
        val_queries: int | None = None,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            query_per_class: Test queries drawn from every class.
            train_per_class: Training images drawn from every class; the rest is the database.
            database_size: Cap both databases at this many images (None: no cap), for quick runs.
            val_queries: Validation queries carved out of the database (None: as many as the test queries).
            split_seed: Seed of the query/train/database draw and of the cap (fixed whatever ``seed`` is).
        """
        splits = HashingSplits(
            query_per_class, train_per_class, database_size, val_queries, split_seed
        )
        super().__init__(source, splits, **kwargs)
