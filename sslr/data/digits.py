"""Digits: scikit-learn's 1,797 real 8x8 handwritten digits, the embedded default (no download)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from sslr.data.base import ClassificationDataModule
from sslr.data.source import DatasetSource, Pool
from sslr.data.splits import TEST_SPLIT, stratified_split


@functools.cache
def load_digits_pool() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as uint8 images (1797, 1, 8, 8) in 0..255 and long labels (1797,).

    scikit-learn stores 17 grey levels (0..16); they are scaled to 0..255.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()  # (1797, 8, 8), values 0..16
    x = (images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]  # (1797, 1, 8, 8)
    return x, torch.from_numpy(bunch.target).long()


class DigitsSource(DatasetSource):
    """The 1,797 digits in scikit-learn's order; the test part is ``test_fraction`` of every class,
    drawn with ``split_seed`` (no test part when ``test_fraction`` is None: the hashing protocol
    pools everything). Mirrored 2, 3, 5 or 7 are not the same digit: no flip."""

    name = "Digits"
    num_classes = 10
    # Per-channel statistics of the [0, 1] pixels of all 1,797 digits at 32 px.
    mean = (0.3053, 0.3053, 0.3053)
    std = (0.3235, 0.3235, 0.3235)
    flip = False

    def __init__(self, test_fraction: float | None = None, split_seed: int = 0) -> None:
        if test_fraction is not None and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def load(self) -> Pool:
        x, y = load_digits_pool()
        if self.test_fraction is None:
            return Pool(x, y, None)
        _, test = stratified_split(y, self.test_fraction, self.split_seed, TEST_SPLIT)
        return Pool(x, y, test)


class Embedded:
    """A DataModule over data that ships with a package (the digits, 2 MB in memory): loader
    workers only add start-up time, so ``num_workers`` defaults to 0, and ``root`` is accepted
    for a uniform interface and ignored. Put it before the protocol's DataModule."""

    def __init__(self, source: DatasetSource, *, num_workers: int = 0, **kwargs: Any) -> None:
        """
        Args:
            num_workers: DataLoader worker processes (0: the set is 2 MB in memory).
        """
        super().__init__(source, num_workers=num_workers, **kwargs)


class Digits(Embedded, ClassificationDataModule):
    """scikit-learn's bundled handwritten digits (10 classes), upsampled to ``image_size`` RGB.

    Real data that needs no download: the default dataset of tests, demos and quick runs. The
    8x8 grey images are upsampled once (bilinear) to ``image_size`` (32) and repeated to 3
    channels. The test split is ``test_fraction`` of every class, drawn with ``split_seed``
    (fixed by default, whatever ``seed`` is, so runs with different seeds share one test set);
    validation is ``val_fraction`` of the rest, drawn with ``seed``.

    Augmentation: random crop with zero padding (4 px at 32 px), no flip (a mirrored 2, 3, 5 or
    7 is not the same digit). ``root`` is ignored and ``num_workers`` defaults to 0 (see :class:`Embedded`).
    """

    def __init__(self, *, test_fraction: float = 0.2, split_seed: int = 0, **kwargs: Any) -> None:
        """
        Args:
            test_fraction: Fraction of every class held out as the test split.
            split_seed: Seed of the test split (fixed whatever ``seed`` is).
        """
        super().__init__(DigitsSource(test_fraction, split_seed), **kwargs)
