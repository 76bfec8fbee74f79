"""HyP2 (Xu et al., ACM MM 2022, "HyP2 Loss: Beyond Hypersphere Metric Space for Multi-label
Image Retrieval", arXiv 2208.06866): learnable class proxies plus a pair term on irrelevant data.

The loss and its threshold follow the authors' code (github.com/JerryXu0129/HyP2-Loss, model.py
``HyP.forward`` and config.py): the threshold zeta is read there from ``codetable.xlsx``, a table
of the best known minimum Hamming distance d of a binary code of length K with 2^m words;
:data:`_BEST_DISTANCE` holds that table for K <= 128 and m <= 12 as distances (the spreadsheet
stores 1 - 2d/K), so no spreadsheet reader is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslr.hashing.losses import HashingLoss, register_loss

__all__ = ["HyP2Loss", "hyp2_threshold"]

# Row K: d(K, m) for m = 1 .. min(K, 12): the largest minimum Hamming distance known for 2^m
# binary words of length K (codetable.xlsx of the authors' code, converted from cosines).
_BEST_DISTANCE = """
  1: 1
  2: 2 1
  3: 3 2 1
  4: 4 2 2 1
  5: 5 3 2 2 1
  6: 6 4 3 2 2 1
  7: 7 4 4 3 2 2 1
  8: 8 5 4 4 2 2 2 1
  9: 9 6 4 4 3 2 2 2 1
 10: 10 6 5 4 4 3 2 2 2 1
 11: 11 7 6 5 4 4 3 2 2 2 1
 12: 12 8 6 6 4 4 4 3 2 2 2 1
 13: 13 8 7 6 5 4 4 4 3 2 2 2
 14: 14 9 8 7 6 5 4 4 4 3 2 2
 15: 15 10 8 8 7 6 5 4 4 4 3 2
 16: 16 10 8 8 8 6 6 5 4 4 4 2
 17: 17 11 9 8 8 7 6 6 5 4 4 3
 18: 18 12 10 8 8 8 7 6 6 4 4 4
 19: 19 12 10 9 8 8 8 7 6 5 4 4
 20: 20 13 11 10 9 8 8 8 7 6 5 4
 21: 21 14 12 10 10 8 8 8 8 7 6 5
 22: 22 14 12 11 10 9 8 8 8 8 7 6
 23: 23 15 12 12 11 10 9 8 8 8 8 7
 24: 24 16 13 12 12 10 10 8 8 8 8 8
 25: 25 16 14 12 12 11 10 9 8 8 8 8
 26: 26 17 14 13 12 12 11 10 9 8 8 8
 27: 27 18 15 14 13 12 12 10 10 9 8 8
 28: 28 18 16 14 14 12 12 11 10 10 8 8
 29: 29 19 16 15 14 13 12 12 11 10 9 8
 30: 30 20 16 16 15 14 12 12 12 11 10 9
 31: 31 20 17 16 16 15 13 12 12 12 11 10
 32: 32 21 18 16 16 16 14 13 12 12 12 10
 33: 33 22 18 16 16 16 14 14 12 12 12 11
 34: 34 22 19 17 16 16 15 14 13 12 12 12
 35: 35 23 20 18 16 16 16 15 14 12 12 12
 36: 36 24 20 18 17 16 16 16 14 14 12 12
 37: 37 24 20 19 18 17 16 16 15 14 14 12
 38: 38 25 21 20 18 18 16 16 16 14 14 14
 39: 39 26 22 20 19 18 17 16 16 15 14 14
 40: 40 26 22 20 20 18 18 16 16 16 15 14
 41: 41 27 23 21 20 19 18 17 16 16 16 14
 42: 42 28 24 22 20 20 19 18 17 16 16 16
 43: 43 28 24 22 21 20 20 18 18 16 16 16
 44: 44 29 24 23 22 21 20 19 18 18 16 16
 45: 45 30 25 24 22 22 20 20 19 18 17 16
 46: 46 30 26 24 23 22 21 20 20 18 18 16
 47: 47 31 26 24 24 23 22 21 20 20 18 17
 48: 48 32 27 24 24 24 22 22 20 20 18 18
 49: 49 32 28 25 24 24 23 22 20 20 20 18
 50: 50 33 28 26 24 24 24 23 21 20 20 19
 51: 51 34 28 26 25 24 24 24 22 20 20 20
 52: 52 34 29 27 26 25 24 24 22 22 20 20
 53: 53 35 30 28 26 26 24 24 23 22 21 20
 54: 54 36 30 28 27 26 24 24 24 22 22 21
 55: 55 36 31 28 28 27 25 24 24 24 22 22
 56: 56 37 32 29 28 28 26 24 24 24 23 22
 57: 57 38 32 30 28 28 26 25 24 24 24 22
 58: 58 38 32 30 29 28 27 26 25 24 24 24
 59: 59 39 33 31 30 29 28 26 26 24 24 24
 60: 60 40 34 32 30 30 28 27 26 26 24 24
 61: 61 40 34 32 31 30 29 28 27 26 24 24
 62: 62 41 35 32 32 31 30 28 28 26 26 24
 63: 63 42 36 32 32 32 31 28 28 28 26 25
 64: 64 42 36 33 32 32 32 29 28 28 26 26
 65: 65 43 36 34 32 32 32 30 28 28 28 26
 66: 66 44 37 34 32 32 32 30 30 28 28 27
 67: 67 44 38 35 33 32 32 31 30 29 28 28
 68: 68 45 38 36 34 32 32 32 30 30 28 28
 69: 69 46 39 36 34 33 32 32 31 30 30 28
 70: 70 46 40 36 35 34 33 32 32 31 30 29
 71: 71 47 40 37 36 34 34 32 32 32 31 30
 72: 72 48 40 38 36 35 34 32 32 32 32 30
 73: 73 48 41 38 36 36 34 33 32 32 32 31
 74: 74 49 42 39 37 36 35 34 32 32 32 32
 75: 75 50 42 40 38 36 36 34 34 32 32 32
 76: 76 50 43 40 38 37 36 35 34 33 32 32
 77: 77 51 44 40 39 38 36 36 34 34 32 32
 78: 78 52 44 40 40 38 37 36 36 34 33 32
 79: 79 52 44 41 40 39 38 36 36 35 34 33
 80: 80 53 45 42 40 40 38 37 36 36 34 33
 81: 81 54 46 42 40 40 39 38 36 36 35 34
 82: 82 54 46 43 41 40 40 38 38 36 36 34
 83: 83 55 47 44 42 40 40 39 38 37 36 35
 84: 84 56 48 44 42 41 40 40 38 38 36 36
 85: 85 56 48 44 43 42 40 40 40 38 37 36
 86: 86 57 48 45 44 42 41 40 40 39 38 37
 87: 87 58 49 46 44 43 42 40 40 40 38 37
 88: 88 58 50 46 44 44 42 41 40 40 39 38
 89: 89 59 50 47 45 44 43 42 40 40 40 38
 90: 90 60 51 48 46 44 44 42 41 40 40 40
 91: 91 60 52 48 46 45 44 43 42 40 40 40
 92: 92 61 52 48 47 46 45 44 42 42 40 40
 93: 93 62 52 48 48 46 46 44 43 42 41 40
 94: 94 62 53 49 48 47 46 44 44 42 41 41
 95: 95 63 54 50 48 48 47 45 44 44 42 41
 96: 96 64 54 50 48 48 48 46 44 44 42 41
 97: 97 64 55 51 48 48 48 46 44 44 43 42
 98: 98 65 56 52 49 48 48 47 46 44 44 42
 99: 99 66 56 52 50 48 48 48 46 45 44 43
100: 100 66 56 52 50 49 48 48 46 46 44 43
101: 101 67 57 53 51 50 49 48 48 46 45 44
102: 102 68 58 54 52 50 50 48 48 47 46 45
103: 103 68 58 54 52 51 50 48 48 48 46 45
104: 104 69 59 55 52 52 51 49 48 48 46 45
105: 105 70 60 56 53 52 52 50 48 48 48 46
106: 106 70 60 56 54 52 52 50 49 48 48 47
107: 107 71 60 56 54 53 52 51 50 48 48 47
108: 108 72 61 56 55 54 53 52 50 50 48 48
109: 109 72 62 57 56 54 54 52 51 50 49 48
110: 110 73 62 58 56 55 54 52 52 50 49 48
111: 111 74 63 58 56 56 55 53 52 52 49 49
112: 112 74 64 59 56 56 56 54 52 52 50 49
113: 113 75 64 60 57 56 56 54 52 52 51 50
114: 114 76 64 60 58 56 56 55 54 52 51 50
115: 115 76 65 60 58 57 56 56 54 54 52 50
116: 116 77 66 61 59 58 57 56 54 54 52 51
117: 117 78 66 62 60 58 58 56 56 54 53 52
118: 118 78 67 62 60 59 58 56 56 56 54 52
119: 119 79 68 63 60 60 59 57 56 56 54 53
120: 120 80 68 64 61 60 60 58 56 56 55 53
121: 121 80 68 64 62 60 60 58 56 56 56 54
122: 122 81 69 64 62 61 60 58 58 56 56 55
123: 123 82 70 64 63 62 61 59 58 57 56 55
124: 124 82 70 65 64 62 62 60 58 58 56 56
125: 125 83 71 66 64 63 62 61 60 58 57 56
126: 126 84 72 66 64 64 63 62 60 58 57 56
127: 127 84 72 67 64 64 64 63 60 60 58 57
128: 128 85 72 68 64 64 64 64 60 60 58 57
"""

_TABLE: dict[int, list[int]] = {
    int(k): [int(d) for d in row.split()]
    for k, row in (line.split(":") for line in _BEST_DISTANCE.strip().splitlines())
}


def hyp2_threshold(bits: int, num_classes: int) -> float:
    """HyP2's zeta for K = ``bits`` and C = ``num_classes``: the cosine of the closest two
    words of the best known binary code with 2^m >= C words of length K.

    zeta = 1 - 2 d(K, m) / K with m = ceil(log2 C) (at least 1) and d(K, m) the best known
    minimum distance of 2^m binary words of length K: C class codes cannot be expected to lie
    further apart than that, so the loss only pushes the cosines of irrelevant codes and
    proxies below zeta, not towards -1 (the authors' config.py:
    ``sheet.row(num_bits)[ceil(log(num_classes, 2))]``).
    """
    m = max(1, math.ceil(math.log2(num_classes)))
    if m > bits:
        raise ValueError(
            f"{num_classes} classes need at least {m} bits for distinct class codes, got "
            f"{bits}; use more bits."
        )
    if bits not in _TABLE or m > len(_TABLE[bits]):
        raise ValueError(
            f"HyP2 has no tabulated threshold for {bits} bits and {num_classes} classes (the "
            f"table stops at {max(_TABLE)} bits and {2**12} classes); pass loss option threshold."
        )
    return 1.0 - 2.0 * _TABLE[bits][m - 1] / bits


@register_loss("hyp2")
class HyP2Loss(HashingLoss):
    """HyP2: multi-label proxy loss plus a pair loss on irrelevant multi-label pairs.

        cos_ic = cos(u_i, p_c)                 (p_c: learnable proxy of class c, (C, K))
        L_proxy = mean_{(i, c): y_ic = 1} (1 - cos_ic)
                + mean_{(i, c): y_ic = 0} relu(cos_ic - zeta)
        L_pair = mean_{(i, j) in M x M: y_i . y_j = 0} relu(cos(u_i, u_j) - zeta)
        L = L_proxy + pair_weight * L_pair

    Each code is pulled to the proxies of all its labels and pushed below cosine zeta from the
    others; a code with several labels sits between its proxies, where it can be close to an
    irrelevant code also sitting between proxies, which L_pair separates. As in the authors'
    code, the pairs are the ordered pairs of M, the samples with more than one label (single-
    label data is placed by the proxies alone, so L_pair is 0 for it), and each mean is over
    its own set (an empty set contributes 0).

    Defaults are the authors': pair_weight (their beta) 0.5; threshold zeta from
    :func:`hyp2_threshold` unless given; proxies initialized by kaiming_normal_ (fan_out) from
    ``seed``. The proxies are an ``nn.Parameter`` of the loss (``self.proxies``): the model
    that owns the loss must give them to its optimizer (HashingTask puts them in their own
    group at the hash layer's learning rate) and save them with its checkpoint. The authors
    apply the loss to the hash layer's raw output z; sslr passes u = tanh(z), as for every
    loss: the cosines are those of z where |z| is small and tend to those of the binary codes
    sign(z) where tanh saturates.
    """

    def __init__(
        self,
        bits: int,
        num_classes: int,
        pair_weight: float = 0.5,
        threshold: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, num_classes)
        if pair_weight < 0:
            raise ValueError(f"pair_weight must be >= 0, got {pair_weight}.")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}.")
        self.pair_weight = pair_weight
        self.threshold = hyp2_threshold(bits, num_classes) if threshold is None else threshold
        generator = torch.Generator().manual_seed(seed)
        proxies = torch.empty(num_classes, bits)
        nn.init.kaiming_normal_(proxies, mode="fan_out", generator=generator)
        self.proxies = nn.Parameter(proxies)

    def extra_repr(self) -> str:
        options = f"threshold={self.threshold:.4g}, pair_weight={self.pair_weight}"
        return f"{super().extra_repr()}, {options}"

    @staticmethod
    def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
        # sum / count keeps the graph (and gives 0) when the mask is empty.
        return (values * mask).sum() / mask.sum().clamp(min=1)

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        zeta = self.threshold
        unit = F.normalize(u, dim=1)
        cos = unit @ F.normalize(self.proxies.to(u.dtype), dim=1).T  # (N, C)
        positive = labels > 0
        proxy = self._masked_mean(1 - cos, positive) + self._masked_mean(
            F.relu(cos - zeta), ~positive
        )
        multi = labels.sum(dim=1) > 1
        unit_m, labels_m = unit[multi], labels[multi]
        irrelevant = (labels_m @ labels_m.T) == 0  # (M, M); never on the diagonal
        pair = self._masked_mean(F.relu(unit_m @ unit_m.T - zeta), irrelevant)
        return proxy + self.pair_weight * pair
