"""Uncertainty of the numbers sslr reports: intervals for one score, paired tests for two.

Every score of an attack suite is measured on a fixed, seeded subset of images (queries, for
hashing), and every comparison sslr makes is between models attacked on the **same** subset, so
two kinds of statistics are needed:

- **one score**: an accuracy is a binomial proportion k / n: its 95% interval is Wilson's score
  interval (:func:`wilson`), which keeps its coverage near 95% at small n and near 0 or 1,
  where the normal (Wald) interval does not. A hashing mAP is a mean of per-query APs, not a
  proportion: its interval is a percentile bootstrap over the queries (:func:`bootstrap_mean`).
- **two scores on the same images**: the difference of two accuracies, with a 95% interval from
  a paired bootstrap over the images and the exact McNemar p-value (:func:`mcnemar`), which uses
  only the discordant images (broken in one model and not the other), the images that carry the
  difference; hashing: the same paired bootstrap on per-query APs and the Wilcoxon signed-rank
  p-value. Pairing is far stronger than comparing two independent proportions when both
  models fail on mostly the same images.

NumPy only (and SciPy's Wilcoxon test, both dependencies of scikit-learn): ``sslr report`` uses
this module without torch. Bootstrap draws come from a generator seeded by the caller, so the
same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
BOOTSTRAP = 2000  # resamples of a bootstrap interval
LEVEL = 0.95


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion ``successes / n`` (95% by default);
    (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At k = 0 or k = n the exact bound is 0 or 1; keep it exact rather than 1e-17 off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_mean(
    values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean of ``values`` (resampled with
    replacement, ``resamples`` times, from a generator seeded with ``seed``)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def interval(metric: str, values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """The 95% interval of a score from its per-image values: Wilson's for an accuracy
    (``values`` are 0/1 outcomes), a bootstrap over queries for mAP and t-mAP (per-query APs)."""
    if metric == "accuracy":
        return wilson(int(round(sum(values))), len(values))
    return bootstrap_mean(values, seed)


def mcnemar(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value for ``b`` images correct under the first model only
    and ``c`` under the second only: twice the smaller binomial(b + c, 1/2) tail, at most 1;
    1 when there is no discordant image (all ties)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar needs counts >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Two scores on the same images: ``difference`` = first - second with its 95% interval
    (paired bootstrap), the p-value (``test``: exact McNemar for accuracies, Wilcoxon signed-rank
    for per-query APs), the number of images and, for accuracies, the discordant counts."""

    first: float
    second: float
    difference: float
    low: float
    high: float
    p_value: float
    test: str
    n: int
    only_first: int | None = None  # accuracy: correct under the first model only
    only_second: int | None = None


def paired(
    first: Sequence[float], second: Sequence[float], metric: str = "accuracy", seed: int = 0
) -> Paired:
    """Compare two scores measured on the same images, image by image (``first[i]`` and
    ``second[i]`` belong to the same image): accuracies from 0/1 outcomes, mAP / t-mAP from
    per-query APs. ValueError when the lengths differ."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired comparison needs the same images on both sides, got {a.size} and {b.size}"
        )
    n = int(a.size)
    diff = a - b
    low, high = bootstrap_mean(diff, seed) if n else (0.0, 0.0)  # images resampled in pairs
    if metric == "accuracy":
        only_first, only_second = (
            int(((a > 0.5) & (b < 0.5)).sum()),
            int(((a < 0.5) & (b > 0.5)).sum()),
        )
        p, test = mcnemar(only_first, only_second), "exact McNemar"
    else:
        only_first = only_second = None
        p, test = wilcoxon(diff), "Wilcoxon signed-rank"
    mean = float(diff.mean()) if n else 0.0
    return Paired(
        first=float(a.mean()) if n else 0.0, second=float(b.mean()) if n else 0.0,
        difference=mean, low=low, high=high, p_value=p, test=test, n=n,
        only_first=only_first, only_second=only_second,
    )  # fmt: skip


def wilcoxon(differences) -> float:
    """The two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped); 1 when
    every difference is zero."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    from scipy.stats import wilcoxon as scipy_wilcoxon

    return float(scipy_wilcoxon(d).pvalue)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value) of per-seed scores."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_and_spread needs at least one value")
    mean = sum(data) / len(data)
    if len(data) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in data) / (len(data) - 1))
