"""Is sslr's attack path as fast as a plain PyTorch loop? FGSM and PGD-10 images per second.

The model is torchvision's ResNet-18 with the 32-px stem (3x3 stride-1 conv1, no max-pool), 10
classes, converted to ``--rule`` (feedback layers in the path; bp by default), in eval mode, on
random [0, 1] images resident on the device. Each attack is timed three ways in the same
process, on the same images, alternating repetitions so that drift hits all alike:

- sslr: ``sslr.robustness.robust_accuracy`` (gradient source ``rule``): ART's
  ``PyTorchClassifier.loss_gradient`` per step, sslr's loop, the runtime eps-ball check and the
  evaluation forward; its state guard (snapshot and restore of the model) included.
- plain: the loop anyone would write: normalize, forward, ``torch.autograd.grad`` w.r.t. the
  input, sign step, projection, clamp; then the evaluation forward.
- ART: ``ProjectedGradientDescentPyTorch.generate`` (sslr's ``backend="art"``), for reference.

The figure is images per second of a full attack pass (median of ``--reps``). Target on a GPU:
sslr >= 0.9x plain for both attacks.

    .venv/bin/python benchmarks/attack_throughput.py --threads 1     # CPU, small sizes, ~2 min
    .venv/bin/python benchmarks/attack_throughput.py --device cuda --out benchmarks/results/attack_throughput_gpu.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sslr.feedback import convert_model
from sslr.robustness import AttackTarget, SuiteConfig, robust_accuracy

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
EPS = 8 / 255


def resnet18_32px(num_classes: int = 10) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def plain_attack(net, x, y, *, steps: int, step: float, random_start: bool, batch_size: int) -> int:
    """The plain PyTorch FGSM/PGD (L-inf) loop: correct predictions after the attack."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    gen = torch.Generator(device=x.device).manual_seed(0)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        x0, yb = x[i : i + batch_size], y[i : i + batch_size]
        if random_start:
            noise = torch.rand(x0.shape, generator=gen, device=x.device)
            adv = (x0 + (2 * noise - 1) * EPS).clamp(0, 1)
        else:
            adv = x0.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(net((adv - mean) / std), yb)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = (adv.detach() + step * grad.sign()).clamp(0, 1)
            adv = (x0 + (adv - x0).clamp(-EPS, EPS)).clamp(0, 1)
        with torch.no_grad():
            correct += (net((adv - mean) / std).argmax(1) == yb).sum()
    return int(correct)


def _fmt(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (cuda), 8 (cpu)")
    parser.add_argument("--batches", type=int, default=None, help="default 8 (cuda), 1 (cpu)")
    parser.add_argument("--reps", type=int, default=None, help="default 5 (cuda), 3 (cpu)")
    parser.add_argument("--rule", default="bp", help="feedback rule of the converted model")
    parser.add_argument("--no-art", action="store_true", help="skip ART's generate (slow on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the markdown table to this file")
    args = parser.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (256 if cuda else 8)
    batches = args.batches or (8 if cuda else 1)
    reps = args.reps or (5 if cuda else 3)
    n = batch_size * batches
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    net = convert_model(resnet18_32px(), args.rule, seed=0).to(device).eval()
    target = AttackTarget(net, MEAN, STD, 10)
    x = torch.rand(n, 3, 32, 32, device=device)  # (N, 3, 32, 32) in [0, 1]
    y = torch.randint(0, 10, (n,), device=device)

    attacks = {"FGSM": ("fgsm", 1, EPS, False), "PGD-10": ("pgd", 10, 2.5 * EPS / 10, True)}
    lines = [
        f"Attack throughput: ResNet-18 (32-px stem, rule {args.rule}), {n} images of 3x32x32 "
        f"in batches of {batch_size}, L-inf eps 8/255, median of {reps} (images/s)",
        "",
        f"device: {torch.cuda.get_device_name(device) if cuda else platform.processor() or 'cpu'}"
        f"; torch {torch.__version__}; threads {torch.get_num_threads()}",
        "",
        "| attack | sslr | plain loop | sslr / plain | ART generate | ART / plain |",
        "|---|---|---|---|---|---|",
    ]
    for label, (attack, steps, step, random_start) in attacks.items():
        config = SuiteConfig(attacks=[attack], steps=steps, batch_size=batch_size)
        art_config = SuiteConfig(
            attacks=[attack], steps=steps, batch_size=batch_size, backend="art"
        )
        runs = {
            "sslr": lambda c=config, a=attack: robust_accuracy(
                target, x, y, attack=a, norm="linf", eps=EPS, gradient="rule", config=c
            ),
            "plain": lambda s=steps, st=step, r=random_start: plain_attack(
                net, x, y, steps=s, step=st, random_start=r, batch_size=batch_size
            ),
        }
        if not args.no_art:
            runs["art"] = lambda c=art_config, a=attack: robust_accuracy(
                target, x, y, attack=a, norm="linf", eps=EPS, gradient="rule", config=c
            )
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up (kernels, cudnn autotuning)
            fn()
        for _ in range(reps):
            for name, fn in runs.items():
                times[name].append(_timed(fn, device))
        rate = {name: n / statistics.median(t) for name, t in times.items()}
        art = (
            f"{_fmt(rate['art'])} | {rate['art'] / rate['plain']:.2f}x"
            if "art" in rate
            else "- | -"
        )
        lines.append(
            f"| {label} | {_fmt(rate['sslr'])} | {_fmt(rate['plain'])} | "
            f"{rate['sslr'] / rate['plain']:.2f}x | {art} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return table


if __name__ == "__main__":
    main()
