"""Time mAP at the CIFAR-10 protocol size: 1,000 queries x 54,000 database items x 64 bits.

    .venv/bin/python benchmarks/map_time.py            # about 30 s on 2 CPU cores
    .venv/bin/python benchmarks/map_time.py --out -    # print only

Compares ``sslr.metrics.mean_average_precision`` (CPU, and CUDA when present) with per-query
NumPy loops run in the same process, on random {-1, +1} codes and one-hot labels of 10 classes.
On the CPU, "counting" is the default path (bit-packed codes, XOR + popcount, a counting sort
over the K + 1 distances: sslr.hamming_rank) and "torch path" the blocked matmul + sort path
that was the CPU default before it (still the CUDA path); targets: counting at least 13x the
stable loop on the CPU (10x the torch path), CUDA at least 100x the loop.

- "numpy loop, stable": integer distances and a stable argsort per query, the same ranking
  convention as sslr (ties by database index): the values must agree to 1e-9. It is the
  baseline of the speed-up column.
- "numpy loop, CalcTopMap": DeepHash-pytorch's loop as published (float distances, default
  quicksort): unstable, so on tied distances its value differs a little; shown for scale.

The loops run with NumPy's BLAS on one thread (threadpoolctl): with torch's thread pool in
the same process, multithreaded OpenBLAS matrix-vector products ran 20x slower here, which
would flatter sslr.

Writes the table to benchmarks/results/map_time_cpu.md (map_time_cuda.md when CUDA ran).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sslr.atomic import atomic_write

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # scikit-learn's dependency; without it the loops keep their BLAS threads
    threadpool_limits = None

import sslr.metrics
from sslr.metrics import mean_average_precision

RESULTS = Path(__file__).parent / "results"


def loop_stable(q, db, ql, dl) -> float:
    bits, total = q.shape[1], 0.0
    for i in range(len(q)):
        rel = (dl @ ql[i]) > 0
        ham = ((bits - db @ q[i]) // 2).astype(np.uint8)
        hits = rel[np.argsort(ham, kind="stable")]
        n = hits.sum()
        if n:
            positions = np.flatnonzero(hits) + 1.0
            total += np.mean(np.arange(1, n + 1) / positions)
    return total / len(q)


def loop_calc_top_map(q, db, ql, dl) -> float:
    """DeepHash-pytorch's CalcTopMap with topk = the whole database."""
    bits, total = q.shape[1], 0.0
    for i in range(len(q)):
        gnd = (np.dot(ql[i, :], dl.transpose()) > 0).astype(np.float32)
        ham = 0.5 * (bits - np.dot(q[i, :], db.transpose()))
        gnd = gnd[np.argsort(ham)]
        tsum = int(np.sum(gnd))
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        total += np.mean(count / tindex)
    return total / len(q)


def torch_path(*args) -> float:
    """mean_average_precision without the counting kernels (the CPU default before them)."""
    packed = sslr.metrics._packed
    sslr.metrics._packed = lambda *a: None
    try:
        return mean_average_precision(*args)
    finally:
        sslr.metrics._packed = packed


def _one_blas_thread():
    return threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=54000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="markdown file, or - for none")
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 2, (args.queries, args.bits), generator=g).float() * 2 - 1
    db = torch.randint(0, 2, (args.database, args.bits), generator=g).float() * 2 - 1
    eye = torch.eye(args.classes)
    ql = eye[torch.randint(0, args.classes, (args.queries,), generator=g)]
    dl = eye[torch.randint(0, args.classes, (args.database,), generator=g)]
    arrays = [t.numpy() for t in (q, db, ql, dl)]

    # (method, device, fn); the first is the reference for speed and values.
    methods: list[tuple[str, str, Callable[[], float]]] = [
        ("numpy loop, stable", "cpu", lambda: loop_stable(*arrays)),
        ("numpy loop, CalcTopMap", "cpu", lambda: loop_calc_top_map(*arrays)),
        ("sslr torch path (before)", "cpu", lambda: torch_path(q, db, ql, dl)),
        (
            "sslr mean_average_precision (counting)",
            "cpu",
            lambda: mean_average_precision(q, db, ql, dl),
        ),
    ]
    if torch.cuda.is_available():
        cuda = [t.cuda() for t in (q, db, ql, dl)]
        methods.append(
            ("sslr mean_average_precision", "cuda", lambda: mean_average_precision(*cuda))
        )
        mean_average_precision(*cuda)  # warm-up: CUDA context, kernels, allocator
        torch.cuda.synchronize()
    mean_average_precision(q, db, ql, dl)  # warm-up: thread pools, numba's compilation

    # Rounds run every method once, in turn, so a busy machine slows them alike.
    times: list[list[float]] = [[] for _ in methods]
    values = [float("nan")] * len(methods)
    for _ in range(args.repeats):
        for i, (_, device, fn) in enumerate(methods):
            with _one_blas_thread() if device == "cpu" and i < 2 else contextlib.nullcontext():
                start = time.perf_counter()
                values[i] = fn()  # returns a Python float: CUDA work is finished
                times[i].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    lines = [
        f"mAP (whole database) of {args.queries:,} queries x {args.database:,} items x "
        f"{args.bits} bits, {args.classes} classes, random codes; median of {args.repeats} "
        "interleaved rounds.",
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} CPU "
        f"threads ({platform.machine()}), {device_name}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs slow every row alike).",
        "",
        "| method | device | median s | speed-up vs stable loop | mAP | diff vs stable loop |",
        "|---|---|---|---|---|---|",
    ]
    for (name, device, _), seconds, value in zip(methods, medians, values, strict=True):
        lines.append(
            f"| {name} | {device} | {seconds:.4f} | {medians[0] / seconds:.1f}x | "
            f"{value:.6f} | {value - values[0]:+.1e} |"
        )
    for (name, device, _), seconds in zip(methods, medians, strict=True):
        if "counting" in name or device == "cuda":
            target = 100.0 if device == "cuda" else 13.0
            speedup = medians[0] / seconds
            verdict = "pass" if speedup >= target else "miss"
            lines.append(
                f"\nTarget on {device}: at least {target:.0f}x the stable loop: "
                f"{speedup:.1f}x, {verdict}."
            )
    table = "\n".join(lines)
    print(table)
    for (name, device, _), value in zip(methods, values, strict=True):
        if name.startswith("sslr") and abs(value - values[0]) > 1e-9:
            raise SystemExit(f"{name} on {device} disagrees with the stable loop: {value}")
    if args.out != "-":
        default = "map_time_cuda.md" if torch.cuda.is_available() else "map_time_cpu.md"
        out = Path(args.out) if args.out else RESULTS / default
        out.parent.mkdir(parents=True, exist_ok=True)
        command = ".venv/bin/python benchmarks/map_time.py"
        atomic_write(out, f"# mAP timing\n\n{table}\n\nCommand: `{command}`\n")
        print(f"\nwritten to {out}")
    return table


if __name__ == "__main__":
    main()
