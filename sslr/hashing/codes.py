"""Hash centers for CSQ: one {-1, +1} target code per class, far apart in Hamming distance.

Yuan et al. 2020 ("Central Similarity Quantization for Efficient Image and Video Retrieval")
take the rows of [H; -H] for a K x K Hadamard matrix H: any two of these 2K codes are at Hamming
distance K/2 or K. Beyond 2K classes (or when no Hadamard matrix of order K is built here) the
remaining centers are random balanced codes (K/2 bits at -1), each chosen as the candidate
farthest from the centers already chosen. No binary code of more than 2K words keeps every
distance >= K/2 (the Plotkin bound), so the random centers are only "far on average".
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hadamard", "hash_centers", "multilabel_centers"]


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(n**0.5) + 1))


def _paley(q: int) -> Tensor:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    squares = torch.zeros(q, dtype=torch.bool)
    squares[(torch.arange(1, q) ** 2) % q] = True
    chi = torch.where(squares, 1, -1)  # Legendre symbol of 1..q-1 (index 0 fixed below)
    chi[0] = 0
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]  # Q_ij = chi(j - i), antisymmetric
    s = torch.zeros(q + 1, q + 1, dtype=torch.long)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.long)


def hadamard(n: int) -> Tensor:
    """A Hadamard matrix of order n (entries +-1, H H^T = n I), as float32.

    Built by Sylvester doubling from 1 or from a Paley matrix of order q + 1 (q a prime = 3 mod
    4), which covers the usual code lengths: 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, ...
    Raises ValueError for an order that neither construction reaches.
    """
    if n < 1:
        raise ValueError(f"a Hadamard matrix needs a positive order, got {n}.")
    # Powers of two first, so those orders match scipy.linalg.hadamard (and CSQ's centers).
    m, doublings = n, 0
    while m > 1 and m % 2 == 0 and (m & (m - 1)) == 0:
        m, doublings = m // 2, doublings + 1
    while m > 1 and not (m % 4 == 0 and _is_prime(m - 1)):
        if m % 2:
            raise ValueError(
                f"no Hadamard matrix of order {n} is constructed here (Sylvester doubling of "
                "1 or of Paley's order q + 1 for a prime q = 3 mod 4)."
            )
        m, doublings = m // 2, doublings + 1
    h = torch.ones(1, 1, dtype=torch.long) if m == 1 else _paley(m - 1)
    for _ in range(doublings):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.float()


def hash_centers(num_classes: int, bits: int, *, seed: int = 0, candidates: int = 64) -> Tensor:
    """(num_classes, bits) float {-1, +1} CSQ centers: rows of [H; -H], then far random codes.

    Deterministic given ``seed``. Hadamard rows are used while they last (2 * bits of them);
    each further center is, among ``candidates`` random balanced codes, the one whose minimum
    Hamming distance to the centers chosen so far is largest.
    """
    if bits < 1:
        raise ValueError(f"bits must be a positive integer, got {bits}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
    try:
        h = hadamard(bits)
        centers = torch.cat([h, -h])[:num_classes]
    except ValueError:
        centers = torch.empty(0, bits)
    generator = torch.Generator().manual_seed(seed)
    rows = [centers]
    chosen = centers
    for _ in range(num_classes - centers.shape[0]):
        # Balanced candidates: a random half of the bits at -1, as in CSQ's reference code.
        order = torch.rand(candidates, bits, generator=generator).argsort(1)
        cand = torch.where(order < bits // 2, -1.0, 1.0)
        if chosen.shape[0]:
            distance = (bits - cand @ chosen.T) / 2  # (candidates, chosen)
            best = cand[distance.min(1).values.argmax()]
        else:
            best = cand[0]
        rows.append(best[None])
        chosen = torch.cat([chosen, best[None]])
    return torch.cat(rows)


def multilabel_centers(labels: Tensor, centers: Tensor, tie_break: Tensor) -> Tensor:
    """Per-sample target codes: the sign of the sum of the sample's label centers.

    ``labels`` (N, C) multi-hot, ``centers`` (C, K), ``tie_break`` (K,) in {-1, +1}: a fixed
    code used for the bits where the sum is 0 (CSQ's reference code does the same). A
    single-label sample gets its class center exactly; a sample with no label gets
    ``tie_break``.
    """
    total = labels.to(centers.dtype) @ centers  # (N, K)
    return torch.where(total == 0, tie_break, total.sign())
