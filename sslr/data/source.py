"""Dataset sources: where a dataset's images come from, what it is, and how to fetch it.

A source knows, before any I/O, the number of classes, the per-channel ``mean``/``std`` of its
[0, 1] training pixels (for the task's normalization) and whether a horizontal flip keeps the
label. ``prepare`` finds the data or downloads it (Lightning's ``prepare_data``, once per node);
in-memory sources ``load`` a :class:`Pool`, streaming sources build per-image datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sslr.atomic import first_missing, remove_empty_folders
from sslr.data.errors import DatasetNotFoundError

Stats = tuple[float, float, float]


def default_root() -> str:
    """Where datasets are looked for and downloaded when ``root`` is None: $SSLR_DATA, else ./data."""
    return os.environ.get("SSLR_DATA") or "data"


@dataclass(frozen=True)
class Pool:
    """A whole in-memory dataset: uint8 images (N, C, h, w), long labels (N,), and the sorted
    indices of its official test part (None when the dataset has none)."""

    x: Tensor
    y: Tensor
    test: Tensor | None

    @classmethod
    def from_parts(cls, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> Pool:
        """The official training part followed by the official test part."""
        n = y_train.numel()
        test = torch.arange(n, n + y_test.numel())
        return cls(torch.cat([x_train, x_test]), torch.cat([y_train, y_test]), test)


class DatasetSource:
    """Base of the sources; subclasses set the class attributes and override what they need."""

    name: str
    num_classes: int
    mean: Stats
    std: Stats
    flip: bool = True

    def prepare(self) -> None:
        """Make the data available locally or fail with one clear message; nothing by default."""

    def load(self) -> Pool:
        """Read the whole dataset into memory (in-memory sources)."""
        raise NotImplementedError(f"{type(self).__name__} is not an in-memory source.")


class DownloadableSource(DatasetSource):
    """A dataset torchvision can download: used where found, else fetched when ``download``.

    Subclasses implement :meth:`present`, :meth:`fetch` and :meth:`not_found`. A failed download
    leaves no empty folder behind (torchvision creates the target folder before it fails).
    """

    def __init__(self, root: str | None, download: bool) -> None:
        self.root = root
        self.download = download

    def target(self) -> Path:
        """The folder downloads go to: ``root``, else the default data folder."""
        return Path(self.root or default_root()).expanduser()

    def present(self) -> bool:
        raise NotImplementedError

    def fetch(self, target: Path) -> None:
        """Download into ``target``; raise OSError or RuntimeError when that fails."""
        raise NotImplementedError

    def not_found(self, reason: str | None = None) -> DatasetNotFoundError:
        """The one-sentence error: where it looked, how to supply the data, why a download failed."""
        raise NotImplementedError

    def prepare(self) -> None:
        if self.present():
            return
        if not self.download:
            raise self.not_found()
        target = self.target()
        created = first_missing(target)
        try:
            self.fetch(target)
        except (OSError, RuntimeError) as err:
            if created is not None:
                remove_empty_folders(created)
            reason = " ".join(str(err).split()) or type(err).__name__  # one line
            raise self.not_found(reason=reason) from err
