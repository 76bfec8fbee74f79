"""Does the data pipeline slow training down? One epoch through a real DataModule vs bare steps.

Trains torchvision's ResNet-18 (10 classes, 32-px stem: 3x3 stride-1 conv1, no max-pool) for one
epoch with Lightning's Trainer on a real in-memory DataModule (CIFAR-10 if present, else
Fashion-MNIST at 32 px, else Digits tiled to the needed size), with ``on_device`` False (DataLoader
workers) and True (data resident on the device), and compares each epoch with the same number of
bare train steps (forward, backward, SGD step) on one batch already on the device, in the same
process. The epoch timed is the second one (the first warms up kernels and workers); it includes
everything the Trainer does between the epoch's start and end hooks: fetching, host-to-device
copy, on-device augmentation and Lightning's own overhead. Target on a GPU: epoch <= 1.1x bare.

    .venv/bin/python benchmarks/epoch_time.py                       # CPU: small subset, ~1 min
    .venv/bin/python benchmarks/epoch_time.py --device cuda --out benchmarks/results/epoch_time_gpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from sslr.data import Digits, FashionMNIST
from sslr.data.base import InMemoryDataModule
from sslr.data.cifar import CIFAR10, cifar_present
from sslr.data.digits import DigitsSource
from sslr.data.fashion_mnist import find_fashion_mnist
from sslr.data.source import Pool


def resnet18_32px(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32-px inputs: 3x3 stride-1 stem, no max-pool (the usual CIFAR variant)."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class Classifier(L.LightningModule):
    """The model the bare loop also trains: normalize, ResNet-18, cross-entropy, SGD."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.net = resnet18_32px()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


class EpochTimer(L.Callback):
    """Wall time of every training epoch, from its start hook to its end hook (device synced)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.times.append(time.perf_counter() - self._start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TiledDigits(Digits):
    """Digits with the training part repeated ``tiles`` times, for epochs longer than 1,295 images."""

    def __init__(self, tiles: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tiles = tiles
        self.source = TiledSource(self.source, tiles)


class TiledSource(DigitsSource):
    """A Digits source whose training part (everything outside its test part) is repeated."""

    def __init__(self, inner: DigitsSource, tiles: int) -> None:
        super().__init__(inner.test_fraction, inner.split_seed)
        self.tiles = tiles

    def load(self) -> Pool:
        pool = super().load()
        train = torch.ones(pool.y.numel(), dtype=torch.bool)
        train[pool.test] = False
        x, y = pool.x[train], pool.y[train]
        reps = (self.tiles, *([1] * (x.dim() - 1)))
        return Pool.from_parts(
            x.repeat(*reps), y.repeat(self.tiles), pool.x[pool.test], pool.y[pool.test]
        )


def pick_dataset(name: str, root: str | None) -> str:
    if name != "auto":
        return name
    if cifar_present("CIFAR-10", root):
        return "cifar10"
    if find_fashion_mnist(root) is not None:
        return "fashion"
    return "digits"


def make_datamodule(
    dataset: str, args, on_device: bool, train_size: int | None
) -> InMemoryDataModule:
    common = dict(
        root=args.root,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        val_fraction=0.1,
        image_size=32,
        on_device=on_device,
        subset=train_size,
    )
    if dataset == "cifar10":
        return CIFAR10(download=False, **common)
    if dataset == "fashion":
        return FashionMNIST(download=False, **common)
    available = 1295  # Digits' training part at the default splits
    tiles = 1 if train_size is None else -(-train_size // available)
    return TiledDigits(tiles=tiles, **common)


def bare_steps(
    model: Classifier, device, steps: int, batch_size: int, precision: str, repeats: int
) -> float:
    """Seconds for ``steps`` train steps on one resident batch (after 3 warm-up steps).

    The fastest of ``repeats`` timed runs.
    """
    model = model.to(device).train()
    opt = model.configure_optimizers()
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def trainer_epoch(
    dm: InMemoryDataModule, device, precision: str, repeats: int
) -> tuple[float, int]:
    """Seconds of the fastest training epoch after the first (warm-up) one, and its step count."""
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=1 + repeats,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(Classifier(dm.mean, dm.std), datamodule=dm)
    return min(timer.times[1:]), len(dm.train_dataloader())


def data_only(dm: InMemoryDataModule, device, repeats: int) -> float:
    """Seconds to iterate one training epoch and make its batches (copy + augmentation), no model.

    The fastest of ``repeats`` passes after a warm-up pass.
    """
    dm.setup()
    loader = dm.train_dataloader()  # the trainer from the timed fit is still attached: same device
    times = []
    for _ in range(1 + repeats):  # the first pass warms workers and caches up
        _sync(device)
        start = time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            x = dm.transform_batch(x, train=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if available)")
    parser.add_argument(
        "--dataset", default="auto", choices=["auto", "cifar10", "fashion", "digits"]
    )
    parser.add_argument("--root", default=None, help="data root (default: each dataset's search)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (cuda), 16 (cpu)")
    parser.add_argument(
        "--steps", type=int, default=None, help="batches per epoch; default: all (cuda), 6 (cpu)"
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs of each measurement; the fastest counts"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads; default 1 on the CPU (on a shared 2-core machine, two threads "
        "per process make every op stall on contention), torch's default on CUDA",
    )
    parser.add_argument("--out", default=None, help="write the markdown table to this file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    on_cpu = device.type == "cpu"
    args.batch_size = args.batch_size or (16 if on_cpu else 128)
    steps = args.steps if args.steps is not None else (6 if on_cpu else None)
    train_size = None if steps is None else steps * args.batch_size
    if args.threads or on_cpu:
        torch.set_num_threads(args.threads or 1)
    if not on_cpu:
        torch.backends.cudnn.benchmark = True
    dataset = pick_dataset(args.dataset, args.root)

    rows: list[tuple[str, float, int]] = []
    n_steps = 0
    for on_device in (False, True):
        L.seed_everything(0, verbose=False)
        dm = make_datamodule(dataset, args, on_device, train_size)
        seconds, n_steps = trainer_epoch(dm, device, args.precision, args.repeats)
        label = "on_device=True" if on_device else f"on_device=False, {args.num_workers} workers"
        rows.append((f"Trainer epoch, {label}", seconds, n_steps))
        rows.append((f"data only, {label}", data_only(dm, device, args.repeats), n_steps))
    L.seed_everything(0, verbose=False)
    bare = bare_steps(
        Classifier(dm.mean, dm.std), device, n_steps, args.batch_size, args.precision, args.repeats
    )
    rows.insert(0, ("bare train steps (batch resident on the device)", bare, n_steps))

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Epoch time: DataModule vs bare train steps",
        "",
        f"- command: `python benchmarks/epoch_time.py {' '.join(argv)}`".rstrip(),
        f"- device: {device.type} ({hardware}); load average at the end: {load:.1f}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, lightning {L.__version__}",
        f"- dataset: {dataset} at 32 px, batch size {args.batch_size}, {n_steps} steps per epoch, "
        f"precision {args.precision}, ResNet-18 (32-px stem), SGD; fastest of {args.repeats} "
        "timed run(s) after a warm-up",
        "",
        "| run | seconds | ms per step | ratio to bare |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds, n in rows:
        lines.append(
            f"| {name} | {seconds:.3f} | {1000 * seconds / n:.1f} | {seconds / bare:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return table


if __name__ == "__main__":
    main()
