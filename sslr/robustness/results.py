"""A result of the suite: one row of ``robustness.csv`` (the schema lives in the torch-free
:mod:`sslr.results`, which ``sslr report`` reads without loading torch)."""

from sslr.results import COLUMNS, RobustnessRow, accuracies

__all__ = ["COLUMNS", "RobustnessRow", "accuracies"]
