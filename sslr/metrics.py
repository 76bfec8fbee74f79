"""Retrieval metrics for binary hash codes: mAP@k, precision@k, the Hamming-radius PR curve.

Conventions (those of DeepHash-pytorch / HashNet, which the deep-hashing literature reports):

- codes are in {-1, +1}; the Hamming distance is (K - q . d) / 2;
- the database is ranked by Hamming distance, ties broken by database index (a stable sort),
  so a result never depends on which sort algorithm ran;
- a database item is relevant to a query when they share at least one label (multi-hot labels)
  or have the same class (class-index labels).

On the CPU (with numba) the ranking is a counting sort over the K + 1 possible distances of
bit-packed codes, one query at a time in cache (:mod:`sslr.hamming_rank`): about 10x the
speed of sorting the distance matrix. On CUDA (and on a CPU without numba) everything runs in
torch on the codes' device, a block of queries at a time to bound memory: the distances in
one matmul, the ranking by a stable sort (NumPy's radix argsort on the CPU). Every path ranks
alike, so every path gives the same numbers (up to the order of floating-point sums).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from . import hamming_rank

__all__ = [
    "MeanAveragePrecision",
    "PrecisionRecallCurve",
    "average_precisions",
    "binarize",
    "hamming_distance",
    "mean_average_precision",
    "precision_at_k",
    "precision_recall_curve",
]

# Elements of one (queries x database) block: bounds the memory of a call (about 0.5 GB).
_BLOCK_ELEMENTS = 1 << 24


def binarize(u: Tensor) -> Tensor:
    """Binary codes from real-valued outputs: +1 where u >= 0, else -1 (sign(0) would be 0)."""
    return torch.where(u >= 0, 1.0, -1.0).to(torch.float32)


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}.")


def _check_codes(query_codes: Any, db_codes: Any) -> tuple[Tensor, Tensor]:
    q = _as_tensor(query_codes, "query_codes")
    db = _as_tensor(db_codes, "db_codes")
    for name, c in (("query_codes", q), ("db_codes", db)):
        if c.dim() != 2 or c.shape[1] == 0:
            raise ValueError(f"{name} must have shape (N, bits), got {tuple(c.shape)}.")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"query_codes have {q.shape[1]} bits but db_codes have {db.shape[1]}; "
            "both must come from the same hash layer."
        )
    if db.shape[0] == 0:
        raise ValueError("db_codes is empty: the database needs at least one item.")
    q = q.to(torch.float32)
    db = db.to(device=q.device, dtype=torch.float32)
    for name, c in (("query_codes", q), ("db_codes", db)):
        if not bool((c.abs() == 1).all()):
            raise ValueError(
                f"{name} must contain only -1 and +1; binarize real outputs with "
                "sslr.metrics.binarize(u) (torch.sign maps 0 to 0)."
            )
    return q, db


def _check_labels(
    query_labels: Any, db_labels: Any, n_query: int, n_db: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    ql = _as_tensor(query_labels, "query_labels").to(device)
    dl = _as_tensor(db_labels, "db_labels").to(device)
    if ql.dim() != dl.dim() or ql.dim() not in (1, 2):
        raise ValueError(
            "labels must be both multi-hot (N, C) or both class indices (N,), got shapes "
            f"{tuple(ql.shape)} and {tuple(dl.shape)}."
        )
    if ql.dim() == 2 and ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query_labels have {ql.shape[1]} classes but db_labels have {dl.shape[1]}."
        )
    if ql.shape[0] != n_query or dl.shape[0] != n_db:
        raise ValueError(
            f"got {ql.shape[0]} query labels for {n_query} query codes and {dl.shape[0]} "
            f"database labels for {n_db} database codes; each code needs one label row."
        )
    if ql.dim() == 2:
        ql, dl = ql.to(torch.float32), dl.to(torch.float32)
    return ql, dl


def _relevance(ql: Tensor, dl: Tensor) -> Tensor:
    """(B, N_db) bool: query b and item j share a label."""
    if ql.dim() == 1:
        return ql[:, None] == dl[None, :]
    with torch.autocast(ql.device.type, enabled=False):  # counts must stay exact
        return (ql @ dl.T) > 0


def _distance_dtype(bits: int) -> torch.dtype:
    # The smallest integer type holding 0..bits: the CPU radix sort is fastest on 8 bits.
    if bits <= 255:
        return torch.uint8
    return torch.int16 if bits <= 32767 else torch.int32


def hamming_distance(query_codes: Tensor, db_codes: Tensor) -> Tensor:
    """Hamming distances (N_q, N_db) between {-1, +1} codes, as integers: (K - q . d) / 2."""
    q, db = _check_codes(query_codes, db_codes)
    return _hamming(q, db)


def _hamming(q: Tensor, db: Tensor) -> Tensor:
    bits = q.shape[1]
    # bits/2 - (q/2) . d in one addmm. Exact in float32 (TF32 too): every product is +-1/2 and
    # every partial sum a multiple of 1/2 below 2**22, so the cast to integers truncates nothing.
    # Autocast is switched off: bf16 could not hold the distances of long codes exactly.
    half = torch.full((1, 1), bits / 2, dtype=q.dtype, device=q.device)
    with torch.autocast(q.device.type, enabled=False):
        return torch.addmm(half, q, db.T, alpha=-0.5).to(_distance_dtype(bits))


def _stable_argsort(dist: Tensor) -> Tensor:
    """Per-row stable argsort of small integers (ties keep database order)."""
    if dist.device.type == "cpu":
        order = np.argsort(dist.numpy(), axis=1, kind="stable")  # radix sort for <= 16 bits
        return torch.from_numpy(order)
    return _torch_stable_argsort(dist)


def _torch_stable_argsort(dist: Tensor) -> Tensor:
    return torch.sort(dist, dim=1, stable=True).indices


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive number of queries, got {batch_size!r}.")


def _blocks(n_query: int, n_db: int, batch_size: int | None) -> Iterator[slice]:
    _check_batch_size(batch_size)
    step = batch_size or max(1, _BLOCK_ELEMENTS // n_db)
    for start in range(0, n_query, step):
        yield slice(start, min(start + step, n_query))


def _ranked_relevance(
    q: Tensor, db: Tensor, ql: Tensor, dl: Tensor, depth: int, batch_size: int | None
) -> Iterator[Tensor]:
    """For each block of queries: (B, depth) bool relevance of the database in ranked order."""
    for block in _blocks(q.shape[0], db.shape[0], batch_size):
        order = _stable_argsort(_hamming(q[block], db))[:, :depth]  # (B, depth)
        yield _relevance(ql[block], dl).gather(1, order.to(q.device))


def _packed(
    q: Tensor, db: Tensor, ql: Tensor, dl: Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool] | None:
    """Bit-packed codes and labels for :mod:`sslr.hamming_rank`, or None for the torch path.

    The torch path runs on CUDA, without numba, for multi-hot labels with negative entries
    (there "relevant" means a positive label product, not a shared label) and for class
    labels stored as floats.
    """
    if q.device.type != "cpu" or not hamming_rank.available():
        return None
    multi_hot = ql.dim() == 2
    if multi_hot:
        if bool((ql < 0).any()) or bool((dl < 0).any()):
            return None
        ql_p, dl_p = (hamming_rank.pack_bits((t > 0).numpy()) for t in (ql, dl))
    elif ql.is_floating_point() or dl.is_floating_point():  # 1.5 == 1.5 but not int(1.5) == 1
        return None
    else:
        ql_p, dl_p = (t.to(torch.int64).reshape(-1, 1).numpy() for t in (ql, dl))
    q_p, db_p = (hamming_rank.pack_bits((t > 0).numpy()) for t in (q, db))
    return q_p, db_p, ql_p, dl_p, multi_hot


def _check_k(k: int | None, name: str) -> int | None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {k!r}.")
    return k


def mean_average_precision(
    query_codes: Tensor | np.ndarray,
    db_codes: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    db_labels: Tensor | np.ndarray,
    topk: int | None = None,
    *,
    batch_size: int | None = None,
) -> float:
    """Mean average precision of Hamming ranking, mAP@topk (DeepHash-pytorch's ``CalcTopMap``).

    For each query the database is ranked by Hamming distance, ties broken by database index
    (``CalcTopMap`` uses NumPy's unstable quicksort, so its value moves a little with ties).
    Over the first ``topk`` items (the whole database when ``topk`` is None):

        AP@k = (1 / R_k) * sum_{i <= k, item i relevant} P@i,    P@i = (relevant in top i) / i

    where R_k is the number of relevant items *retrieved in the top k* (the DeepHash-pytorch /
    HashNet convention; with topk=None it is the number of relevant items in the database). A
    query with no relevant item in its top k scores 0, the usual deep-hashing convention. mAP
    is the mean over all queries.

    Args:
        query_codes: (N_q, K) codes in {-1, +1} (torch or numpy); computed on their device.
        db_codes: (N_db, K) codes in {-1, +1}.
        query_labels: (N_q, C) multi-hot labels, or (N_q,) class indices.
        db_labels: (N_db, C) or (N_db,), of the same kind as ``query_labels``.
        topk: depth of the ranking (clipped to the database size); None means the whole
            database (the CIFAR-10 convention; NUS-WIDE and COCO use 5000, ImageNet-100 1000).
        batch_size: queries per block; by default blocks of about 16M (query, item) pairs.
    """
    total, n = 0.0, 0
    for block in _average_precision_blocks(
        query_codes, db_codes, query_labels, db_labels, topk, batch_size
    ):
        total += float(block.sum()) if isinstance(block, np.ndarray) else block.sum()
        n += block.shape[0]
    return float(total) / n if n else 0.0


def average_precisions(
    query_codes: Tensor | np.ndarray,
    db_codes: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    db_labels: Tensor | np.ndarray,
    topk: int | None = None,
    *,
    batch_size: int | None = None,
) -> Tensor:
    """Each query's AP@topk, (N_q,) float64 on the CPU: the values
    :func:`mean_average_precision` averages (same ranking, ties and conventions). For a
    per-query worst case over attacks."""
    blocks = [
        torch.from_numpy(block) if isinstance(block, np.ndarray) else block.cpu()
        for block in _average_precision_blocks(
            query_codes, db_codes, query_labels, db_labels, topk, batch_size
        )
    ]
    return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)


def _average_precision_blocks(query_codes, db_codes, query_labels, db_labels, topk, batch_size):
    """Per-query APs in blocks of queries: one NumPy array on the counting path, torch
    float64 blocks otherwise."""
    q, db = _check_codes(query_codes, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, q.shape[0], db.shape[0], q.device)
    depth = min(_check_k(topk, "topk") or db.shape[0], db.shape[0])
    if q.shape[0] == 0:
        return
    _check_batch_size(batch_size)  # the counting path needs no blocks (it needs no memory)
    packed = _packed(q, db, ql, dl)
    if packed is not None:
        psum, hits = hamming_rank.ranked_hits(*packed, depth)
        yield np.where(hits > 0, psum / np.maximum(hits, 1), 0.0)
        return
    for rel in _ranked_relevance(q, db, ql, dl, depth, batch_size):
        precision_sum, retrieved = _precision_sums(rel)
        yield torch.where(retrieved > 0, precision_sum / retrieved.clamp(min=1), 0.0)


def _precision_sums(rel: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of a ranked relevance block (B, k): sum of P@i over relevant i, and their count.

    Works on the relevant entries only (one in ten for CIFAR-10), in float64, deterministically
    (a cumulative sum, no atomics): about twice as fast as the dense cumsum on the CPU.
    """
    rows, cols = rel.nonzero(as_tuple=True)  # row-major: each row's hits in rank order
    row_ids = torch.arange(rel.shape[0], device=rel.device)
    starts = torch.searchsorted(rows, row_ids)
    ends = torch.searchsorted(rows, row_ids, right=True)
    # The n-th hit of a row (1-based) at 0-based rank c contributes P@(c+1) = n / (c + 1).
    nth = torch.arange(1, rows.numel() + 1, dtype=torch.float64, device=rel.device)
    csum = ((nth - starts[rows]) / (cols + 1)).cumsum(0)
    # Row sums as differences of the running sum; rows without a hit (ends == starts) get 0.
    if csum.numel() == 0:
        return torch.zeros(rel.shape[0], dtype=torch.float64, device=rel.device), ends - starts
    before = torch.where(starts > 0, csum[(starts - 1).clamp(min=0)], 0.0)
    through = torch.where(ends > starts, csum[(ends - 1).clamp(min=0)], before)
    return through - before, ends - starts


def precision_at_k(
    query_codes: Tensor | np.ndarray,
    db_codes: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    db_labels: Tensor | np.ndarray,
    k: int,
    *,
    batch_size: int | None = None,
) -> float:
    """Mean over queries of the fraction of relevant items among the first k of the ranking.

    Same ranking and relevance as :func:`mean_average_precision`; k larger than the database
    is clipped to its size.
    """
    q, db = _check_codes(query_codes, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, q.shape[0], db.shape[0], q.device)
    if k is None:
        raise ValueError("k must be a positive integer, got None.")
    depth = min(_check_k(k, "k"), db.shape[0])
    if q.shape[0] == 0:
        return 0.0
    _check_batch_size(batch_size)
    packed = _packed(q, db, ql, dl)
    if packed is not None:
        return float(hamming_rank.ranked_hits(*packed, depth)[1].sum()) / (depth * q.shape[0])
    hits = sum(
        rel.sum(dtype=torch.int64) for rel in _ranked_relevance(q, db, ql, dl, depth, batch_size)
    )
    return float(hits) / (depth * q.shape[0])


class PrecisionRecallCurve(NamedTuple):
    """Precision and recall of Hamming-ball retrieval at each radius 0..K (float64, CPU)."""

    radius: Tensor
    precision: Tensor
    recall: Tensor


def precision_recall_curve(
    query_codes: Tensor | np.ndarray,
    db_codes: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    db_labels: Tensor | np.ndarray,
    *,
    batch_size: int | None = None,
) -> PrecisionRecallCurve:
    """Precision and recall of retrieving every item within Hamming radius r, r = 0..K.

    Per query: precision = relevant retrieved / retrieved, recall = relevant retrieved /
    relevant in the database; both averaged over queries. A query that retrieves nothing at
    radius r has precision 0 there, and one with no relevant item in the database has recall 0
    (DCH's convention for "precision within Hamming radius 2": an empty answer is a failure).
    """
    q, db = _check_codes(query_codes, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, q.shape[0], db.shape[0], q.device)
    bits = q.shape[1]
    precision = torch.zeros(bits + 1, dtype=torch.float64, device=q.device)
    recall = torch.zeros_like(precision)
    packed = _packed(q, db, ql, dl)
    for block in _blocks(q.shape[0], db.shape[0], batch_size):
        n_all, n_rel = _radius_counts(q, db, ql, dl, packed, block)
        n_all, n_rel = n_all.cumsum(1), n_rel.cumsum(1)  # (B, K+1) retrieved within radius r
        n_all, n_rel = n_all.to(precision), n_rel.to(precision)  # int / int would be float32
        precision += torch.where(n_all > 0, n_rel / n_all.clamp(min=1), 0.0).sum(0)
        total_rel = n_rel[:, -1:]
        recall += torch.where(total_rel > 0, n_rel / total_rel.clamp(min=1), 0.0).sum(0)
    n = max(q.shape[0], 1)
    radius = torch.arange(bits + 1)
    return PrecisionRecallCurve(radius, (precision / n).cpu(), (recall / n).cpu())


def _radius_counts(q, db, ql, dl, packed, block: slice) -> tuple[Tensor, Tensor]:
    """(B, K+1) numbers of all and of relevant items at each distance, for a query block."""
    bits = q.shape[1]
    if packed is not None:
        q_p, db_p, ql_p, dl_p, multi_hot = packed
        n_all, n_rel = hamming_rank.distance_histograms(
            q_p[block], db_p, ql_p[block], dl_p, multi_hot, bits
        )
        return torch.from_numpy(n_all), torch.from_numpy(n_rel)
    dist = _hamming(q[block], db).long()  # (B, N_db)
    rel = _relevance(ql[block], dl)
    shape = (dist.shape[0], bits + 1)
    n_all = torch.zeros(shape, dtype=torch.int64, device=q.device)
    n_all.scatter_add_(1, dist, torch.ones_like(dist))
    n_rel = torch.zeros(shape, dtype=torch.int64, device=q.device)
    n_rel.scatter_add_(1, dist, rel.long())
    return n_all, n_rel


class MeanAveragePrecision(Metric):
    """torchmetrics wrapper of :func:`mean_average_precision` for validation and test.

    Feed both sets, in any order and any number of batches, then ``compute()``::

        metric = MeanAveragePrecision(topk=None)
        metric.update(u_query, labels_query, is_query=True)   # dataloader 0
        metric.update(u_db, labels_db, is_query=False)        # dataloader 1
        metric.compute()  # tensor(mAP)

    ``codes`` may be real-valued network outputs: they are binarized with u >= 0 -> +1 (see
    :func:`binarize`) and stored as int8. Labels are multi-hot (N, C) or class indices (N,).
    States are lists reduced by concatenation, so it works under DDP; note that a
    DistributedSampler pads the last batch with repeated samples, and that ties are broken by
    database position after the gather, so a DDP value can differ slightly from a one-process
    value on the same data. ``forward`` only accumulates (a per-batch mAP means nothing) and
    returns None. With Lightning, call ``compute()`` (then ``reset()``) in
    ``on_validation_epoch_end`` rather than passing the metric to ``self.log`` in
    ``validation_step``, where each of the two dataloaders would get its own key.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, topk: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topk = _check_k(topk, "topk")
        for name in ("query_codes", "query_labels", "db_codes", "db_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, codes: Tensor, labels: Tensor, *, is_query: bool) -> None:
        """Add a batch of query (``is_query=True``) or database (``is_query=False``) items."""
        if codes.dim() != 2 or labels.shape[0] != codes.shape[0]:
            raise ValueError(
                f"codes must be (N, bits) with one label row each, got codes "
                f"{tuple(codes.shape)} and labels {tuple(labels.shape)}."
            )
        codes = binarize(codes.detach()).to(torch.int8)
        role = "query" if is_query else "db"
        getattr(self, f"{role}_codes").append(codes)
        getattr(self, f"{role}_labels").append(labels.detach())

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate like :meth:`update`; a per-batch value is not defined for retrieval."""
        self.update(*args, **kwargs)

    def compute(self) -> Tensor:
        """mAP@topk of all queries seen against all database items seen."""
        # Lists before a DDP sync, concatenated tensors after it.
        if not all(len(state) for state in (self.query_codes, self.db_codes)):
            raise ValueError(
                "MeanAveragePrecision needs both query and database codes before compute(): "
                "call update(..., is_query=True) and update(..., is_query=False)."
            )
        value = mean_average_precision(
            dim_zero_cat(self.query_codes),
            dim_zero_cat(self.db_codes),
            dim_zero_cat(self.query_labels),
            dim_zero_cat(self.db_labels),
            topk=self.topk,
        )
        return torch.tensor(value, dtype=torch.float32, device=self.device)
