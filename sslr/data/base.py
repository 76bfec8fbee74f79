"""Shared logic of the in-memory DataModules (Digits, Fashion-MNIST, CIFAR and their hashing splits).

A dataset that fits in memory is held as one uint8 *pool* of images (N, C, H, W), C in {1, 3},
resized to ``image_size`` once at setup, plus one index tensor per split ("train", "val", "test",
"query", ...). Exception: when upsampling would make the pool larger than 2 GiB (CIFAR at 224 px:
9 GB), the pool stays at native resolution and each batch is upsampled where it lives, after
augmentation (so the crop's padding is the same fraction of the image).
Loaders slice whole batches out of the pool:

- ``on_device=False``: a DataLoader whose workers fetch a batch with one ``index_select``;
- ``on_device=True``: the pool is copied to the trainer's device once, and a :class:`DeviceLoader`
  slices batches there (no workers, no host-to-device traffic during the epoch).

Training batches travel as uint8 and become float [0, 1] RGB in ``on_after_batch_transfer``, where
the light augmentation (random crop with zero padding, horizontal flip where it keeps the label)
runs on the whole batch on the accelerator. Evaluation loaders yield float32 (N, 3, H, W) already,
so code outside Lightning can iterate them as they are. Images are never normalized here: the
task normalizes, so attack epsilons stay in pixel units.

Determinism: the training order of epoch e is a function of (seed, e) (see :mod:`sslr.data.loaders`)
and so is the augmentation's random stream, so a run resumed at an epoch boundary sees the same data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from sslr.data.augment import (
    crop_padding,
    pool_size,
    random_crop,
    random_hflip,
    resize_uint8,
    to_float_rgb,
)
from sslr.data.loaders import (
    DeviceLoader,
    EpochBatchSampler,
    TensorBatches,
    identity_collate,
    mix_seed,
)
from sslr.data.module import SplitDataModule, WithClassificationSplits, WithHashingSplits
from sslr.data.protocols import SplitProtocol
from sslr.data.source import DatasetSource, DownloadableSource, default_root

_AUGMENT = 101  # purpose mixed into the augmentation seed

__all__ = [
    "ClassificationDataModule",
    "Downloadable",
    "DownloadableDataModule",
    "HashingDataModule",
    "InMemoryDataModule",
    "default_root",
]


class InMemoryDataModule(SplitDataModule):
    """A source whose whole dataset is one uint8 tensor, split by a protocol (see the module docstring).

    The pool and its split indices come from ``splits.split_pool(source.load(), seed, ...)``.
    """

    default_image_size = 32

    def __init__(
        self,
        source: DatasetSource,
        splits: SplitProtocol,
        *,
        image_size: int | None = default_image_size,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            image_size: Side of the square images the network sees (the pool is resized once).
        """
        super().__init__(source, splits, image_size=image_size, **kwargs)
        self._x: Tensor | None = None  # (N, C, s, s) uint8 pool, s = image_size (or native)
        self._y: Tensor | None = None  # (N,) long or (N, K) float
        self._index: dict[str, Tensor] = {}
        self._resident: tuple[torch.device, Tensor, Tensor, dict[str, Tensor]] | None = None
        self._aug_key: tuple[torch.device, int] | None = None
        self._aug_gen: torch.Generator | None = None

    def _load(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Read the data: (images uint8 (N, C, h, w), targets (N,) or (N, K), split -> indices)."""
        return self.splits.split_pool(self.source.load(), self.seed, self.num_classes)

    # ---- setup ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load the data and build the splits once; resize the whole pool to ``image_size``.
        The start of a fit (``stage="fit"``, once per ``trainer.fit``) restarts the augmentation
        stream, so a second fit with this object sees the same augmented batches as the first;
        loaders built during a fit (they call ``setup()``) leave it running."""
        if stage == "fit":
            self._aug_key = None
        if self._x is not None:
            return
        x, y, index = self._load()
        size = pool_size(x.shape[0], x.shape[1], max(x.shape[-2:]), self.image_size)
        self._x = resize_uint8(x, size)
        self._y = y
        self._index = index

    def split_names(self) -> list[str]:
        """Names of the splits built by :meth:`setup`."""
        self._need_setup()
        return list(self._index)

    def split_indices(self, name: str) -> Tensor:
        """Indices into the pool of one split (sorted; for checks and analysis)."""
        self._need_setup()
        return self._index[name].clone()

    def split_size(self, name: str) -> int:
        self._need_setup()
        return self._index[name].numel()

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """A whole split as tensors: x float32 (N, 3, S, S) in [0, 1], and its targets."""
        self._need_setup()
        idx = self._index[name]
        x = to_float_rgb(self._x.index_select(0, idx), self.image_size)
        return x, self._y.index_select(0, idx)

    def _need_setup(self) -> None:
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before reading the splits.")

    # ---- loaders -------------------------------------------------------------------------------

    def _loader(self, name: str, train: bool) -> DataLoader | DeviceLoader:
        self.setup()
        n = self._index[name].numel()
        as_float = not train
        if self.on_device:
            # Under DDP each process shards training *and* evaluation data itself (Lightning
            # only shards DataLoaders); single-device runs see everything.
            sampler = self._sampler(n, shuffle=train)
            x, y, index = self._on_device(self._device())
            return DeviceLoader(x, y, index[name], sampler, as_float, self.image_size)
        dataset = TensorBatches(self._x, self._y, self._index[name], as_float, self.image_size)
        common: dict[str, Any] = dict(
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            persistent_workers=self.num_workers > 0,
            collate_fn=identity_collate,
        )
        if train:
            # batch_size=None: the sampler yields whole batches, the dataset slices them at once.
            sampler = self._sampler(n, shuffle=True)
            return DataLoader(dataset, batch_size=None, sampler=sampler, **common)
        # Evaluation: a plain DataLoader, which Lightning shards itself under DDP.
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **common)

    def _sampler(self, n: int, shuffle: bool) -> EpochBatchSampler:
        """Batches of this process's share (all of it on a single device)."""
        trainer = self.trainer
        replicas, rank = 1, 0
        if trainer is not None and trainer.world_size > 1:
            replicas, rank = trainer.world_size, trainer.global_rank
        return EpochBatchSampler(n, self.batch_size, self.seed, shuffle, replicas, rank)

    def _on_device(self, device: torch.device) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The pool and split indices on ``device``, copied there once."""
        if self._resident is None or self._resident[0] != device:
            self._resident = None  # free the old copy first
            index = {k: v.to(device) for k, v in self._index.items()}
            self._resident = (device, self._x.to(device), self._y.to(device), index)
        return self._resident[1], self._resident[2], self._resident[3]

    # ---- batches on the accelerator ------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 -> float [0, 1] RGB; augment whole training batches where they now live."""
        x, y = batch
        trainer = self.trainer
        train = trainer is not None and trainer.training
        return self.transform_batch(x, train=train), y

    def transform_batch(self, x: Tensor, train: bool) -> Tensor:
        """x uint8/float (N, C, s, s) -> float32 (N, 3, S, S) in [0, 1], S = ``image_size``.

        Augmentation (when ``train`` and ``augment``): random crop with zero padding (4 px at
        32 px, the same fraction at other sizes), then a horizontal flip with probability 1/2 if
        the dataset's ``flip`` allows it; then upsampling to S if the pool is kept smaller.
        """
        x = to_float_rgb(x)
        if train and self.augment:
            g = self._augment_generator(x.device)
            x = random_crop(x, crop_padding(x.shape[-1]), g)
            if self.flip:
                x = random_hflip(x, g)
        return to_float_rgb(x, self.image_size)

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` reseeded from (seed, epoch, rank) whenever the epoch changes."""
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0  # DDP: a stream per process
        key = (device, epoch)
        if self._aug_key != key:
            self._aug_gen = torch.Generator(device=device).manual_seed(
                mix_seed(self.seed, _AUGMENT, epoch, rank)
            )
            self._aug_key = key
        return self._aug_gen


class ClassificationDataModule(WithClassificationSplits, InMemoryDataModule):
    """An in-memory DataModule with classification splits (:class:`~sslr.data.protocols.ClassificationSplits`):
    Digits, FashionMNIST, CIFAR10 and CIFAR100."""


class HashingDataModule(WithHashingSplits, InMemoryDataModule):
    """An in-memory DataModule with the hashing protocol (:class:`~sslr.data.protocols.HashingSplits`):
    HashingDigits, HashingFashionMNIST and HashingCIFAR10."""


class Downloadable:
    """A DataModule over a set torchvision can download (CIFAR, Fashion-MNIST): its source is
    ``source_class(root, download)``, fetched in ``prepare_data`` only when no local copy is
    found. Put it before the protocol's DataModule: ``class CIFAR10(Downloadable,
    ClassificationDataModule)``; its constructor passes the source and the rest on."""

    source_class: type[DownloadableSource]

    def __init__(self, root: str | None = None, *, download: bool = True, **kwargs: Any) -> None:
        """
        Args:
            root: Folder of the dataset (None: $SSLR_DATA, else ./data).
            download: Download the dataset when no local copy is found (only with a network).
        """
        super().__init__(self.source_class(root, download), root=root, **kwargs)


class DownloadableDataModule(Downloadable, ClassificationDataModule):
    """Classification on a set torchvision can download: CIFAR10, CIFAR100, FashionMNIST."""
