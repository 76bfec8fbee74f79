"""Hamming ranking on the CPU at memory speed: packed codes, XOR + popcount, counting sort.

The retrieval metrics of :mod:`sslr.metrics` rank a database by Hamming distance to each
query, ties broken by database index. A distance takes only K + 1 values, so the ranking is
a counting sort: one pass over the database computes every distance (XOR and popcount of
bit-packed codes, 8 bytes per item at 64 bits), the relevance, the histogram of the K + 1
distances and each relevant item's place among the items at its distance; the rank of a
relevant item is then the number of nearer items plus that place, without ever ordering the
database. Per query that is one pass over a few hundred kilobytes that stay in cache, where
a general sort of the distance matrix reads and writes gigabytes.

NumPy and torch have no fused per-query loop of this kind, so the kernels are compiled with
numba (parallel over queries). Without numba, :func:`available` is False and the metrics use
their torch path (the same values).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np


@functools.cache
def available() -> bool:
    """True when numba imports (the kernels below can run)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def pack_bits(positive: np.ndarray) -> np.ndarray:
    """(N, B) bool -> (N, W) uint64, W = ceil(B / 64): bit b of row n set where positive[n, b]."""
    packed = np.packbits(positive, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad or packed.shape[1] == 0:
        packed = np.pad(packed, ((0, 0), (0, pad or 8)))
    return np.ascontiguousarray(packed).view(np.uint64)


def ranked_hits(
    q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray, multi_hot: bool, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (sum of P@i over relevant ranks i <= depth, number of them).

    ``q``/``db``: packed codes (:func:`pack_bits`); ``ql``/``dl``: packed multi-hot labels
    (``multi_hot``) or (N, 1) int64 class indices.
    """
    psum = np.zeros(q.shape[0], dtype=np.float64)
    hits = np.zeros(q.shape[0], dtype=np.int64)
    if q.shape[0]:
        _kernels().ranked_hits(q, db, ql, dl, multi_hot, depth, psum, hits)
    return psum, hits


def distance_histograms(
    q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray, multi_hot: bool, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query and distance 0..bits: (items at that distance, relevant items among them)."""
    n_all = np.zeros((q.shape[0], bits + 1), dtype=np.int64)
    n_rel = np.zeros_like(n_all)
    if q.shape[0]:
        _kernels().histograms(q, db, ql, dl, multi_hot, n_all, n_rel)
    return n_all, n_rel


@functools.cache
def _kernels():
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def popcount(typingctx, x):  # LLVM's ctpop: one instruction on x86-64 and ARM64
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.int64(types.uint64), codegen

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def relevant(ql, dl, i, j, multi_hot):
        if multi_hot:
            for w in range(ql.shape[1]):
                if ql[i, w] & dl[j, w]:
                    return True
            return False
        return ql[i, 0] == dl[j, 0]

    @jit
    def distance(q, db, i, j):
        d = 0
        for w in range(q.shape[1]):
            d += popcount(q[i, w] ^ db[j, w])
        return d

    @jit
    def first_pass(q, db, ql, dl, multi_hot, i, n_all, n_rel, rel_d, rel_pos, rel_nth):
        # One pass over the database for query i: the histograms of the distances of all
        # items and of the relevant ones, and for each relevant item (in database order) its
        # distance, how many items and how many relevant items came before it at that
        # distance (its place within its tie: ties go by database index). Returns how many
        # relevant items there are.
        m = 0
        for j in range(db.shape[0]):
            d = distance(q, db, i, j)
            p = n_all[d]
            n_all[d] = p + 1
            if relevant(ql, dl, i, j, multi_hot):
                rel_d[m], rel_pos[m], rel_nth[m] = d, p, n_rel[d]
                n_rel[d] += 1
                m += 1
        return m

    @numba.njit(cache=True, nogil=True, parallel=True)
    def ranked_hits(q, db, ql, dl, multi_hot, depth, psum, hits):
        n, bins = db.shape[0], 64 * q.shape[1] + 1
        for i in numba.prange(q.shape[0]):
            n_all = np.zeros(bins, dtype=np.int64)
            n_rel = np.zeros(bins, dtype=np.int64)
            rel_d = np.empty(n, dtype=np.int32)
            rel_pos = np.empty(n, dtype=np.int32)
            rel_nth = np.empty(n, dtype=np.int32)
            m = first_pass(q, db, ql, dl, multi_hot, i, n_all, n_rel, rel_d, rel_pos, rel_nth)
            # Counting sort: the items at distance d come after all those nearer.
            start, rel_start, a, r = np.empty_like(n_all), np.empty_like(n_rel), 0, 0
            for d in range(bins):
                start[d], rel_start[d] = a, r
                a += n_all[d]
                r += n_rel[d]
            total, count = 0.0, 0
            for t in range(m):  # 1-based rank, and rank among the relevant items
                d = rel_d[t]
                rank = start[d] + rel_pos[t] + 1
                if rank <= depth:
                    total += (rel_start[d] + rel_nth[t] + 1) / rank
                    count += 1
            psum[i], hits[i] = total, count

    @numba.njit(cache=True, nogil=True, parallel=True)
    def histograms(q, db, ql, dl, multi_hot, n_all, n_rel):
        n = db.shape[0]
        for i in numba.prange(q.shape[0]):
            rel_d = np.empty(n, dtype=np.int32)
            rel_pos = np.empty(n, dtype=np.int32)
            rel_nth = np.empty(n, dtype=np.int32)
            first_pass(q, db, ql, dl, multi_hot, i, n_all[i], n_rel[i], rel_d, rel_pos, rel_nth)

    return SimpleNamespace(ranked_hits=ranked_hits, histograms=histograms)
