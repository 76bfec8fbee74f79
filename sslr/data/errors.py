"""Errors a user can cause through the data options: each carries one sentence that says what to do.

The CLI prints the message of any :class:`DataError` without a traceback, so messages are written
for the person at the terminal: what was looked for, where, and how to supply it.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class of the data errors a user can cause; catch this one to report them all."""


class DatasetNotFoundError(DataError):
    """The dataset (or some of its files) is not where the DataModule looked and cannot be downloaded."""


class ListFileError(DataError):
    """A hashing list file is malformed (wrong number of labels, non-binary labels, empty file)."""
