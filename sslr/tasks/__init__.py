"""LightningModules of sslr."""

from sslr.tasks.classification import ClassificationTask
from sslr.tasks.hashing import HashingTask

__all__ = ["ClassificationTask", "HashingTask"]
