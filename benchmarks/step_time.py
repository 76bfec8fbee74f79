"""Train-step time of each feedback rule against BP, measured in the same run.

A rule's extra work over BP is elementwise work on the weights (building B), nothing per
activation, so each rule should cost close to BP. For every (model, image size, precision,
mode) this builds one model per rule from the same weights, then interleaves timed train
steps (forward, backward, SGD step, synchronize) of BP and every rule, and reports each
rule's median and its ratio to BP's median.

    python benchmarks/step_time.py                  # CPU: resnet18 at 32 px, small; CUDA: all
    python benchmarks/step_time.py --models resnet18 --sizes 32 --modes eager compile
    python benchmarks/step_time.py --out benchmarks/results/step_time_cpu.md
    python benchmarks/step_time.py --modes eager compile --rules usf brsf   # compiled brsf
    python benchmarks/step_time.py --modes compile --compile-mode max-autotune-no-cudagraphs

Precisions: fp32, and bf16 autocast with channels_last. Modes: eager, and ``compile``
(``torch.compile`` of BP against ``torch.compile`` of the rule; ``--compile-mode
reduce-overhead`` adds CUDA graphs).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torchvision
from torch import nn

from sslr.feedback import FeedbackLearning, convert_model, feedback_layers, list_rules

CUDA_BATCH = {32: 128, 224: 64}
CPU_BATCH = 8


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--models", nargs="+", default=None, help="torchvision model names")
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="image sizes (px)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: by size)")
    p.add_argument("--rules", nargs="+", default=[r for r in list_rules() if r != "bp"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile"])
    p.add_argument("--compile-mode", default="default", help="torch.compile mode")
    p.add_argument("--scale", default="xavier")
    p.add_argument(
        "--classes", type=int, default=10, help="outputs of the head (dfa's B projects them)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model")
    p.add_argument("--reps", type=int, default=None, help="timed steps per model")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if args.models is None:  # the paper's backbones on a GPU; a small one on the CPU
        args.models = ["alexnet", "vgg16", "resnet18"] if on_cuda else ["resnet18"]
    if args.sizes is None:
        args.sizes = [32, 224] if on_cuda else [32]
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 2)
    args.reps = args.reps if args.reps is not None else (20 if on_cuda else 6)
    return args


def configurations(args):
    """(model, size) pairs: AlexNet needs >= 63 px, so it runs at 224 px only."""
    for name in args.models:
        for size in args.sizes:
            if name == "alexnet" and size < 63:
                continue
            yield name, size


class Trainer:
    """One model, its optimizer and a fixed batch; ``step()`` is one timed train step."""

    def __init__(self, model, x, y, device, precision, compiled, compile_mode):
        self.model, self.x, self.y, self.device = model, x, y, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        # kp and wm update B after each optimizer step, as the tasks do (their cost counts)
        if any(layer._rule.learns for _, layer in feedback_layers(model)):
            FeedbackLearning(model, self.optimizer)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )
        self.forward = torch.compile(model, mode=compile_mode) if compiled else model

    def step(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with self.autocast:
            loss = nn.functional.cross_entropy(self.forward(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, size, precision, mode, args) -> dict:
    device = torch.device(args.device)
    batch = args.batch or (CUDA_BATCH.get(size, 64) if device.type == "cuda" else CPU_BATCH)
    torch.manual_seed(0)
    base = torchvision.models.get_model(name, weights=None, num_classes=args.classes)
    memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, args.classes, (batch,), device=device)
    trainers = {}
    for rule in ["bp", *args.rules]:
        model = convert_model(copy.deepcopy(base), rule, scale=args.scale, seed=0)
        model = model.to(device, memory_format=memory_format).train()
        trainers[rule] = Trainer(
            model, x, y, device, precision, mode == "compile", args.compile_mode
        )
    del base
    for trainer in trainers.values():  # warm-up (and compilation)
        for _ in range(args.warmup + (2 if mode == "compile" else 0)):
            trainer.step()
    times = {rule: [] for rule in trainers}
    for rep in range(args.reps):  # interleaved: drifts (clocks, load) hit every rule alike
        order = list(trainers) if rep % 2 == 0 else list(reversed(trainers))
        for rule in order:
            times[rule].append(trainers[rule].step())
    medians = {rule: statistics.median(t) * 1e3 for rule, t in times.items()}
    del trainers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(model=name, size=size, batch=batch, precision=precision, mode=mode, ms=medians)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(rows, rules) -> str:
    head = ["model", "px", "batch", "precision", "mode", "bp ms"] + [f"{r} (x bp)" for r in rules]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ms = row["ms"]
        cells = [row["model"], str(row["size"]), str(row["batch"]), row["precision"], row["mode"]]
        cells.append(f"{ms['bp']:.2f}")
        cells += [f"{ms[r]:.2f} ({ms[r] / ms['bp']:.3f}x)" for r in rules]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:  # on a busy CPU, OpenMP threads spin-waiting on each other dominate
        torch.set_num_threads(args.threads)
    header = (
        f"Train-step time (forward, backward, SGD step; median of {args.reps} interleaved "
        f"steps after {args.warmup} warm-up) on {device_name(args.device)}, torch "
        f"{torch.__version__}, scale {args.scale}, {args.classes} classes; bf16 = autocast + channels_last; "
        f"compile mode {args.compile_mode!r}."
    )
    print(header, flush=True)
    rows = []
    for mode in args.modes:
        for name, size in configurations(args):
            for precision in args.precisions:
                row = measure(name, size, precision, mode, args)
                rows.append(row)
                ratios = ", ".join(f"{r} {row['ms'][r] / row['ms']['bp']:.3f}x" for r in args.rules)
                print(
                    f"{name} {size}px {precision} {mode}: bp {row['ms']['bp']:.2f} ms; {ratios}",
                    flush=True,
                )
                if args.out:  # rewrite after every row: a cut-off run keeps what it measured
                    with open(args.out, "w") as f:
                        f.write(header + "\n\n" + table(rows, args.rules) + "\n")
    print()
    print(table(rows, args.rules))


if __name__ == "__main__":
    main()
