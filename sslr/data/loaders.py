"""Batch iteration over in-memory tensors: seeded per-epoch order, with or without a DataLoader.

Both paths use the same :class:`EpochBatchSampler`, so a given ``seed`` and epoch yield the same
batches whether the data sits in host memory (DataLoader workers slice it) or on the accelerator
(:class:`DeviceLoader` slices it there). The order of epoch ``e`` is a function of ``(seed, e)``
only, which is what makes a resumed run see the same data order. Lightning calls ``set_epoch`` on
``loader.sampler`` at the start of every epoch. Under DDP every process draws the same epoch
permutation and keeps its own share of it (``rank::num_replicas``), as DistributedSampler does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from sslr.data.augment import to_float_rgb

_MASK63 = (1 << 63) - 1
_WORKER_SEEDS = 202  # purpose mixed into the seed of DataLoader worker streams


def mix_seed(seed: int, *values: int) -> int:
    """A 63-bit seed derived from ``seed`` and further integers (epoch, purpose), deterministically."""
    h = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK63
    for v in values:
        h = ((h ^ (v + 0x94D049BB133111EB)) * 0xBF58476D1CE4E5B9) & _MASK63
    return h


class SeededPermutation(Sampler[int]):
    """Indices 0..n-1 in an order fixed by ``(seed, epoch)``; in order when ``shuffle`` is False."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> Tensor:
        """The current epoch's order as a CPU long tensor (n,)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch; a last batch of a single example joins the one before it.

    A batch of one breaks BatchNorm in training mode, so ``n = k * batch_size + 1`` gives k batches
    (the last one batch_size + 1 long) instead of k + 1. Every example still appears exactly once.
    """
    if n == 0:
        return []
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    return list(zip(starts, ends, strict=True))


class EpochBatchSampler(DistributedSampler):
    """Batches (lists of indices) of this process's share of a ``(seed, epoch)`` permutation.

    Every example appears once per epoch across the ``num_replicas`` processes (the permutation
    is padded by wrapping around to a multiple of ``num_replicas`` so that every process gets as
    many batches, as DistributedSampler does). ``shuffle=False`` keeps the natural order.

    It yields whole batches and is used as the DataLoader's ``sampler`` with ``batch_size=None``;
    it subclasses DistributedSampler because it does the sharding itself: Lightning then leaves it
    in place under DDP instead of wrapping another sampler around it. No process group is needed.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # DistributedSampler.__init__ is not called: it wants a dataset and a process group.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = False
        self.epoch = 0
        self.num_samples = -(-n // num_replicas)  # this process's share
        self.total_size = self.num_samples * num_replicas
        self.bounds = batch_bounds(self.num_samples, batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        """This process's indices for the current epoch, in batch order: long tensor (num_samples,)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.total_size > self.n:  # pad by wrapping around (DDP: equal shares)
            order = order.repeat(-(-self.total_size // max(self.n, 1)))[: self.total_size]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        # Lists, not tensors: they travel to DataLoader workers by plain pickling.
        indices = self.indices()
        for start, end in self.bounds:
            yield indices[start:end].tolist()

    def __len__(self) -> int:
        return len(self.bounds)


def identity_collate(batch):
    """The dataset already returns whole batches: nothing to collate."""
    return batch


class TensorBatches(Dataset):
    """One split of an image pool, fetched a whole batch at a time.

    ``dataset[list_of_indices]`` (a DataLoader with ``batch_size=None`` over a batch sampler) and
    ``__getitems__`` (a DataLoader with a batch size) both return a whole batch in one slice.

    x: (N, C, H, W) uint8 pool; y: (N,) or (N, K) targets; index: (n,) the split's pool indices.
    ``as_float`` makes batches float32 (n, 3, S, S) in [0, 1] already in the loader, upsampled to
    ``size`` if given (the contract for evaluation loaders, which anyone may iterate); training
    batches stay uint8 (4x less to copy) and become float on the accelerator in the DataModule's
    ``on_after_batch_transfer``.
    """

    def __init__(
        self, x: Tensor, y: Tensor, index: Tensor, as_float: bool, size: int | None = None
    ) -> None:
        self.x = x
        self.y = y
        self.index = index
        self.as_float = as_float
        self.size = size

    def __len__(self) -> int:
        return self.index.numel()

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = self.index[torch.as_tensor(indices, dtype=torch.long)]
        x = self.x.index_select(0, idx)
        return (to_float_rgb(x, self.size) if self.as_float else x), self.y.index_select(0, idx)

    def __getitem__(self, i: int | list[int]) -> tuple[Tensor, Tensor]:
        if isinstance(i, list):
            return self.__getitems__(i)
        x, y = self.__getitems__([i])
        return x[0], y[0]


class DeviceLoader:
    """A DataLoader stand-in for tensors already on the accelerator: slices batches in place.

    x, y: the pool on the device; index: the split's pool indices on the same device. No workers,
    no host-to-device copies: each batch is one ``index_select`` into the resident tensors.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        sampler: EpochBatchSampler,
        as_float: bool,
        size: int | None = None,
    ) -> None:
        self.x = x
        self.y = y
        self.index = index
        self.sampler = sampler  # Lightning calls loader.sampler.set_epoch(epoch)
        self.batch_sampler = None  # as a DataLoader whose sampler yields whole batches
        self.as_float = as_float
        self.size = size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.index[self.sampler.indices().to(self.index.device)]
        for start, end in self.sampler.bounds:
            idx = order[start:end]
            x = self.x.index_select(0, idx)
            yield (to_float_rgb(x, self.size) if self.as_float else x), self.y.index_select(0, idx)


def streaming_loader(
    dataset: Dataset,
    train: bool,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader over images decoded per item (ImageFolder, list files).

    Training order is a function of (seed, epoch) (:class:`SeededPermutation`); the workers'
    random augmentation streams follow a generator seeded from ``seed``.
    """
    kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
    if train:
        sampler = SeededPermutation(len(dataset), seed=seed, shuffle=True)
        generator = torch.Generator().manual_seed(mix_seed(seed, _WORKER_SEEDS))
        return DataLoader(dataset, sampler=sampler, generator=generator, **kwargs)
    return DataLoader(dataset, shuffle=False, **kwargs)
