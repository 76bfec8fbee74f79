"""Hashing attacks: moved into the evaluation engine (:mod:`sslr.robustness.hashing`); these
names stay importable from here."""

from sslr.robustness.hashing import (
    CodeLoss,
    CodeNetwork,
    HashAttack,
    HashingTarget,
    anchor_codes,
    as_hashing_target,
    draw_targets,
)

__all__ = [
    "CodeLoss",
    "CodeNetwork",
    "HashAttack",
    "HashingTarget",
    "anchor_codes",
    "as_hashing_target",
    "draw_targets",
]
