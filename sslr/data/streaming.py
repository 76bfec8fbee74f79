"""DataModules whose images are decoded per item from disk (ImageNet subsets, hashing list files).

The source builds one torch Dataset per split (with its PIL pipeline, :mod:`sslr.data.transforms`)
from the split protocol; every loader is :func:`~sslr.data.loaders.streaming_loader`, whose
training order is a function of (seed, epoch). Images are float [0, 1], not normalized.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from sslr.data.loaders import streaming_loader
from sslr.data.module import SplitDataModule
from sslr.data.protocols import SplitProtocol
from sslr.data.source import DatasetSource


class StreamingSource(DatasetSource):
    """A source too large for memory: it builds a per-image dataset for every split."""

    def datasets(
        self, splits: SplitProtocol, image_size: int, augment: bool, seed: int
    ) -> dict[str, Dataset]:
        """Split name -> dataset of ``(x (3, S, S) float, target)`` items, S = ``image_size``."""
        raise NotImplementedError


class StreamingDataModule(SplitDataModule):
    """A streaming source split by a protocol; ``image_size`` defaults to 224."""

    default_image_size = 224

    def __init__(
        self,
        source: StreamingSource,
        splits: SplitProtocol,
        *,
        image_size: int | None = default_image_size,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            image_size: Side of the square crop the network sees (resize to 256/224 of it first).
        """
        super().__init__(source, splits, image_size=image_size, **kwargs)
        if self.on_device:
            raise ValueError(
                f"{type(self).__name__} streams images from disk, so on_device=True is not "
                "available; it is meant for the in-memory datasets (Digits, FashionMNIST, CIFAR)."
            )
        self._splits: dict[str, Dataset] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the folder or lists and build the split datasets once."""
        if self._splits is None:
            self._splits = self.source.datasets(
                self.splits, self.image_size, self.augment, self.seed
            )

    def split_size(self, name: str) -> int:
        self.setup()
        return len(self._splits[name])

    def split_dataset(self, name: str) -> Dataset:
        """The dataset of one split (after setup)."""
        self.setup()
        return self._splits[name]

    def _loader(self, name: str, train: bool) -> DataLoader:
        self.setup()
        return streaming_loader(
            self._splits[name], train, self.batch_size, self.num_workers, self._pin(), self.seed
        )
