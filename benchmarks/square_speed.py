"""Square attack speed: sslr's torch Square (``sslr.attacks.square``) against ART's NumPy
``SquareAttack`` (``sslr.attacks.square_art``) at equal queries on the same model and images:
images per second and success rate, with the ratio, as a Markdown table.

The model is a small CNN trained here on scikit-learn's Digits (16 px, 3 channels; no
download), as in the attack tests. Both attacks get the same images, the same eps and the same
number of iterations (``--queries``); the success rate is the share of images the model
misclassifies on the returned examples.

    python benchmarks/square_speed.py --out benchmarks/results/square_speed_cpu.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslr.atomic import atomic_write  # noqa: E402
from sslr.attacks import square, square_art  # noqa: E402

MEAN, STD = 0.3, 0.4


class PixelCNN(nn.Module):
    """Normalization, conv-BN-ReLU-pool, conv-ReLU-pool, linear: takes [0, 1] pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - MEAN) / STD).flatten(1))


def digits(device: torch.device):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1297], order[1297:]
    return (x[train].to(device), y[train].to(device)), (x[test].to(device), y[test].to(device))


def trained_model(x, y) -> nn.Module:
    torch.manual_seed(0)
    model = PixelCNN().to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def timed(fn, reps: int):
    times, result = [], None
    for rep in range(reps):
        start = time.perf_counter()
        result = fn(rep)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cases",
        default="linf:0.0314,linf:0.1255,l2:1.0,l2:3.0",
        help="norm:eps pairs, comma-separated",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    (x_train, y_train), (x_test, y_test) = digits(device)
    model = trained_model(x_train, y_train)
    x, y = x_test[: args.images], y_test[: args.images]
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
    rows = []
    for case in args.cases.split(","):
        norm, eps = case.split(":")
        eps = float(eps)
        ours_s, ours = timed(
            lambda rep, norm=norm, eps=eps: square(
                model, x, y, eps=eps, norm=norm, queries=args.queries, seed=rep
            ),
            args.reps,
        )
        art_s, art = timed(
            lambda rep, norm=norm, eps=eps: square_art(
                model, x, y, eps=eps, norm=norm, queries=args.queries, seed=rep, batch_size=128
            ),
            args.reps,
        )
        n = len(y)
        ours_ok, art_ok = ours.success.float().mean().item(), art.success.float().mean().item()
        p = (ours_ok + art_ok) / 2
        se = math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
        rows.append(
            f"| {norm} | {eps:.4g} | {n / ours_s:.2f} | {n / art_s:.2f} | "
            f"{art_s / ours_s:.1f}x | {ours_ok:.3f} | {art_ok:.3f} | {ours_ok - art_ok:+.3f} "
            f"(2 SE {2 * se:.3f}) | {ours.queries.float().mean().item():.0f} |"
        )
        print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Square attack: sslr (torch) vs ART (NumPy), equal queries",
        "",
        f"- model: small CNN trained on Digits (16 px), clean accuracy {clean:.3f} on the "
        f"{len(y)} images; {args.queries} iterations (queries) each, p_init 0.8, one restart",
        f"- device: {device} ({platform.machine()}, {os.cpu_count()} cores, {args.threads} "
        f"thread(s)); torch {torch.__version__}; load average {load:.1f} at the end",
        f"- median of {args.reps} runs (seeds 0..{args.reps - 1}); the success rate is of the "
        "last run; queries: sslr's mean forward passes per image (ART forwards every image of "
        "the batch once per iteration, plus the robust ones twice)",
        f"- command: `python benchmarks/square_speed.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| norm | eps | sslr images/s | ART images/s | ratio | sslr success | ART success | "
        "difference | sslr queries/image |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, text)


if __name__ == "__main__":
    main()
