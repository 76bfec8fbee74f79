"""LightningDataModules for classification and deep-hashing retrieval.

Every DataModule yields images as float tensors in [0, 1], shape (N, 3, H, W), not normalized
(the task normalizes with the DataModule's ``mean``/``std``), and knows ``num_classes``,
``mean``, ``std`` and ``image_size`` right after ``__init__``, before any I/O.

Classification, batches ``(x, y)`` with long class indices:
    Digits (scikit-learn's bundled digits, no download), FashionMNIST, CIFAR10, CIFAR100,
    ImageFolderData (ImageNet subsets).
Hashing, batches ``(x, labels)`` with multi-hot float labels; val/test loaders are
``[queries, database]``:
    HashingCIFAR10, HashingFashionMNIST, HashingDigits, HashingListData (NUS-WIDE, MS-COCO,
    ImageNet-100 list files).
Each is a storage mode (in memory: :mod:`sslr.data.base`; streamed from disk:
:mod:`sslr.data.streaming`) given a dataset source (:mod:`sslr.data.source`) and a split protocol
(:mod:`sslr.data.protocols`), combined as mixins; see :mod:`sslr.data.module`.
Errors a user can cause derive from DataError; their message is one sentence saying what to do.
"""

from sslr.data.base import ClassificationDataModule, InMemoryDataModule, default_root
from sslr.data.cifar import CIFAR10, CIFAR100
from sslr.data.digits import Digits
from sslr.data.errors import DataError, DatasetNotFoundError, ListFileError
from sslr.data.fashion_mnist import FashionMNIST
from sslr.data.hashing import HashingCIFAR10, HashingDigits, HashingFashionMNIST
from sslr.data.imagefolder import ImageFolderData
from sslr.data.listfile import LIST_DATASETS, HashingListData

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "ClassificationDataModule",
    "DataError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "HashingCIFAR10",
    "HashingDigits",
    "HashingFashionMNIST",
    "HashingListData",
    "ImageFolderData",
    "InMemoryDataModule",
    "LIST_DATASETS",
    "ListFileError",
    "default_root",
]
