"""Seeded, stratified index splits: validation hold-outs, per-class protocol splits, subsets.

All functions return sorted index tensors, so a split is a set (its order carries no randomness)
and the same seed always gives the same split on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslr.data.loaders import mix_seed

# Purposes mixed into the seed so that different splits drawn with one seed are independent.
VAL_SPLIT, SUBSET, TEST_SPLIT, PROTOCOL, VAL_QUERIES, DATABASE = range(6)


def _generator(seed: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, purpose))


def per_class_split(
    targets: Tensor, counts: Sequence[int], seed: int, purpose: int = PROTOCOL
) -> list[Tensor]:
    """Split by class: ``counts[i]`` examples of every class go to part i, the rest to a last part.

    targets: (N,) class indices. Returns ``len(counts) + 1`` sorted index tensors, disjoint, that
    together cover all N examples. Raises ValueError if a class has too few examples.
    """
    g = _generator(seed, purpose)
    need = sum(counts)
    parts: list[list[Tensor]] = [[] for _ in range(len(counts) + 1)]
    for c in torch.unique(targets).tolist():
        members = (targets == c).nonzero().flatten()
        if members.numel() < need:
            raise ValueError(
                f"class {c} has {members.numel()} examples, fewer than the {need} that the split "
                f"asks for ({' + '.join(map(str, counts))}); lower the per-class counts."
            )
        members = members[torch.randperm(members.numel(), generator=g)]
        start = 0
        for i, k in enumerate(counts):
            parts[i].append(members[start : start + k])
            start += k
        parts[-1].append(members[start:])
    return [torch.cat(p).sort().values for p in parts]


def stratified_split(
    targets: Tensor, fraction: float, seed: int, purpose: int = VAL_SPLIT
) -> tuple[Tensor, Tensor]:
    """Hold out ``round(fraction * n_c)`` examples of every class c. Returns (kept, held_out)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}.")
    g = _generator(seed, purpose)
    kept, held = [], []
    for c in torch.unique(targets).tolist():
        members = (targets == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        k = round(fraction * members.numel())
        held.append(members[:k])
        kept.append(members[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def random_subset(indices: Tensor, size: int | None, seed: int, purpose: int = SUBSET) -> Tensor:
    """A seeded random subset of ``indices`` of at most ``size`` elements (all when None)."""
    if size is None or size >= indices.numel():
        return indices
    if size < 1:
        raise ValueError(f"a subset needs at least one example, got {size}.")
    perm = torch.randperm(indices.numel(), generator=_generator(seed, purpose))
    return indices[perm[:size]].sort().values
