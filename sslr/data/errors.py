"""Errors a user can cause through the data options: each carries one sentence that says what to do.

The CLI prints the message of any :class:`DataError` without a traceback, so messages are written
for the person at the terminal: what was looked for, where, and how to supply it.
"""

from __future__ import annotations

from sslr.errors import DataError  # defined on the bottom floor, so sslr.errors needs no torch

__all__ = ["DataError", "DatasetNotFoundError", "ListFileError"]


class DatasetNotFoundError(DataError):
    """The dataset (or some of its files) is not where the DataModule looked and cannot be downloaded."""


class ListFileError(DataError):
    """A hashing list file is malformed (wrong number of labels, non-binary labels, empty file)."""
