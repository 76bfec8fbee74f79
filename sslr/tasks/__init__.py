"""LightningModules of sslr."""

from sslr.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask"]
