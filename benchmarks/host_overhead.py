"""Host overhead of the feedback rules: microseconds per feedback layer and train step over BP.

A network whose weights are tiny (20 conv-BN-ReLU blocks of 8 channels and a linear head,
batch 2 at 8 px) on one CPU thread spends almost all of a train step in the host: Python,
the dispatcher and autograd. The difference between a rule's step and BP's (plain
nn.Conv2d / nn.Linear) divided by the number of feedback layers is what a rule costs per
layer and step on the host, the overhead that shows on a GPU wherever a step is short.

    python benchmarks/host_overhead.py                    # about a minute on a quiet core
    python benchmarks/host_overhead.py --rounds 400 --out -   # print only
    python benchmarks/host_overhead.py --compile          # add torch.compile rows (slower)

Every rule is timed against BP in the same run, one step of each in turn per round (the
order reversed every other round), and each reports the median over rounds of its step time
minus BP's step time in the same round, so a busy machine slows every row alike. Times are
the process's CPU time (one thread does all the work), not wall time: on a shared machine
wall time also counts the other jobs' turns on the core.
Target: at most 25 microseconds per feedback layer and step, for every rule. The last row is
a reference, not a rule: layers that are a minimal ``torch.autograd.Function`` (conv2d forward,
one convolution_backward with a fixed B), the floor of any eager Python feedback layer.
Writes the table to benchmarks/results/host_overhead_cpu.md (with ``--compile``:
host_overhead_compile_cpu.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sslr.atomic import atomic_write
from sslr.feedback import FeedbackLearning, convert_model, feedback_layers, list_rules

RESULTS = Path(__file__).parent / "results"
TARGET_US = 25.0


def tiny_network(blocks: int = 20, channels: int = 8, classes: int = 10) -> nn.Sequential:
    """``blocks`` conv-BN-ReLU blocks of ``channels`` channels, pooling and a linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
    layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    for _ in range(blocks - 1):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


_conv_backward = torch.ops.aten.convolution_backward.default


class _MinimalConv(torch.autograd.Function):
    """The least a Python feedback layer can do: conv2d forward, and one
    convolution_backward with a fixed B in the weight slot (no rule, no checks, no state)."""

    @staticmethod
    def forward(ctx, x, weight, b):
        ctx.save_for_backward(x, b)
        return nn.functional.conv2d(x, weight, None, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        gx, gw, _ = _conv_backward(grad, x, b, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, need)
        return gx, gw, None


class _MinimalLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, b):
        ctx.save_for_backward(x, b)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        return grad.mm(b), grad.t().mm(x), grad.sum(0), None


class MinimalConv(nn.Conv2d):
    def forward(self, x):
        return _MinimalConv.apply(x, self.weight, self.b)


class MinimalLinear(nn.Linear):
    def forward(self, x):
        return _MinimalLinear.apply(x, self.weight, self.bias, self.b)


def minimal_network(base: nn.Module) -> nn.Sequential:
    """``base`` with every Conv2d / Linear a minimal Function layer (B a fixed random buffer):
    the floor of any eager Python feedback layer on this machine."""
    model = copy.deepcopy(base)
    for module in model.modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            module.__class__ = MinimalConv if isinstance(module, nn.Conv2d) else MinimalLinear
            module.register_buffer("b", torch.randn_like(module.weight) * 0.1)
    return model


class Step:
    """One model, its optimizer and a fixed batch; calling it runs one train step."""

    def __init__(self, model: nn.Module, x, y, compiled: bool) -> None:
        self.model = model.train()
        self.x, self.y = x, y
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        # kp and wm update B after each optimizer step, as the tasks do (their cost counts)
        if any(layer._rule.learns for _, layer in feedback_layers(model)):
            FeedbackLearning(model, self.optimizer)
        self.forward = torch.compile(model) if compiled else model

    def __call__(self) -> float:
        start = time.process_time()
        loss = nn.functional.cross_entropy(self.forward(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.process_time() - start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="+", default=[r for r in list_rules() if r != "bp"])
    parser.add_argument("--rounds", type=int, default=600, help="timed steps per rule")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per rule")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--out", default=None, help="markdown file, or - for none")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = tiny_network()
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    steps: dict[str, Step] = {}
    for rule in ["bp", *args.rules]:
        model = convert_model(tiny_network(), rule, seed=0)
        model.load_state_dict(base.state_dict(), strict=False)
        steps[rule] = Step(model, x, y, args.compile)
    n_layers = len(list(feedback_layers(steps[args.rules[0]].model)))
    floor = "floor (minimal Function)"
    if not args.compile:  # reference row: the least any eager Python layer costs here
        steps[floor] = Step(minimal_network(base), x, y, False)

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {rule: [] for rule in steps}
    for i in range(args.rounds):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for rule in order:
            times[rule].append(steps[rule]())
    bp = times["bp"]
    bp_us = statistics.median(bp) * 1e6

    mode = "torch.compile (inductor)" if args.compile else "eager"
    lines = [
        f"Host overhead of the feedback rules over BP, {mode}: {n_layers} feedback layers "
        f"(20 conv-BN-ReLU blocks of 8 channels + a linear head), batch 2 at 8 px, SGD; "
        f"median of {args.rounds} interleaved rounds after {args.warmup} warm-up steps; "
        "CPU time of the process.",
        f"torch {torch.__version__}, 1 CPU thread ({platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f} at the end.",
        f"BP (plain nn.Conv2d / nn.Linear): {bp_us:.0f} us per step.",
        "",
        f"| rule | step us | x bp | us per feedback layer and step over bp | target <= "
        f"{TARGET_US:.0f} us |",
        "|---|---|---|---|---|",
    ]
    for rule in [*args.rules, *([floor] if floor in steps else [])]:
        t = times[rule]
        over = statistics.median(a - b for a, b in zip(t, bp, strict=True)) * 1e6 / n_layers
        step_us = statistics.median(t) * 1e6
        verdict = "pass" if over <= TARGET_US else "miss"
        lines.append(
            f"| {rule} | {step_us:.0f} | {step_us / bp_us:.3f}x | {over:.1f} | {verdict} |"
        )
    if floor in steps:
        lines += [
            "",
            f"{floor}: every Conv2d/Linear an autograd.Function that does nothing but conv2d "
            "forward and one convolution_backward with a fixed B (no rule, checks or state), "
            "in the same rounds: what any eager Python feedback layer costs at the least here.",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out != "-":
        name = "host_overhead_compile_cpu.md" if args.compile else "host_overhead_cpu.md"
        out = Path(args.out) if args.out else RESULTS / name
        flags = " --compile" if args.compile else ""
        command = f"python benchmarks/host_overhead.py --rounds {args.rounds}{flags}"
        atomic_write(out, f"# Feedback-layer host overhead\n\n{table}\n\nCommand: `{command}`\n")
        print(f"\nwritten to {out}")
    return table


if __name__ == "__main__":
    main()
