"""A result of the suite: one row of ``robustness.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

COLUMNS = ("attack", "norm", "eps", "steps", "gradient", "accuracy", "n")


@dataclass(frozen=True)
class RobustnessRow:
    """The accuracy of ``n`` images under ``attack`` at ``eps`` (pixel units, in ``norm``) with
    gradients from ``gradient``; ``steps`` is 1 for FGSM, PGD's iterations, Square's queries."""

    attack: str
    norm: str
    eps: float
    steps: int
    gradient: str
    accuracy: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def accuracies(rows: Sequence[RobustnessRow], **match) -> list[float]:
    """The accuracies of the rows whose fields equal ``match`` (e.g. ``gradient="exact"``), in
    row order."""
    return [r.accuracy for r in rows if all(getattr(r, k) == v for k, v in match.items())]
