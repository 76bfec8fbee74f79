"""What every sslr DataModule is made of: a dataset source, a split protocol and the loader options.

A public DataModule (``Digits``, ``HashingCIFAR10``, ``ImageFolderData``, ...) is a storage mode
(:class:`~sslr.data.base.InMemoryDataModule` or :class:`~sslr.data.streaming.StreamingDataModule`)
given a source (:mod:`sslr.data.source`: where the images come from, their statistics, how to
fetch them) and a split protocol (:mod:`sslr.data.protocols`: classification train/val/test or
hashing query/train/database). Its constructor keeps its typed arguments for the CLI and only
builds those two objects; the loader options it declares (``root``, ``batch_size``,
``num_workers``, ``pin_memory``, ``seed``, ``augment``, ``image_size``, ``on_device``) are read
here from its saved hyperparameters, so no constructor forwards them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sslr.data.protocols import SplitProtocol
from sslr.data.source import DatasetSource


class SplitDataModule(L.LightningDataModule):
    """A source split by a protocol: attributes known before any I/O, loaders named by the protocol.

    ``num_classes``, ``mean``, ``std`` (for the task's normalization, linked by the CLI) and
    ``flip`` come from the source; the protocol names the splits each loader serves. Storage
    modes implement :meth:`setup`, :meth:`split_size` and :meth:`_loader`.
    """

    default_image_size = 32

    def __init__(self, source: DatasetSource, splits: SplitProtocol) -> None:
        super().__init__()
        # Collects the arguments of the public constructor that called this one (Lightning walks
        # the __init__ frames of the class hierarchy), so checkpoints keep them as before.
        self.save_hyperparameters(ignore=["source", "splits"])
        options = dict(self.hparams)
        batch_size, num_workers = options["batch_size"], options["num_workers"]
        image_size = options.get("image_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
        self.source = source
        self.splits = splits
        self.root: str | None = options.get("root")
        self.batch_size: int = batch_size
        self.num_workers: int = num_workers
        self.pin_memory: bool = options.get("pin_memory", True)
        self.seed: int = options.get("seed", 0)
        self.augment: bool = options.get("augment", True)
        self.image_size: int = image_size or self.default_image_size
        self.on_device: bool = options.get("on_device", False)
        self.num_classes: int = source.num_classes
        self.mean = source.mean
        self.std = source.std
        self.flip: bool = source.flip
        for key, value in options.items():  # every constructor argument stays an attribute
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
