"""Attack throughput against the number of processes: ``sslr attack`` with ``--trainer.devices N
--trainer.strategy ddp`` (gloo CPU processes here, one GPU each on a GPU machine), the same suite
and checkpoint for every N, and whether the files are the same bytes.

The checkpoint is an untrained resnet18 on Digits (throughput does not depend on training), made
once in a temporary folder; the suite is PGD-10 under ``rule`` and ``exact`` on ``--images``
test digits in batches of ``--batch`` (so every process has batches). Each N runs ``--reps``
times, alternating with the others; the figure is images attacked per second of the whole
command (process start, data, model included: what a user waits for), median over the
repetitions, and its ratio to one process measured in the same run.

    .venv/bin/python benchmarks/attack_processes.py                 # CPU: 1 and 2 processes, ~5 min
    .venv/bin/python benchmarks/attack_processes.py --accelerator gpu --processes 1 2 4 \\
        --images 1000 --out benchmarks/results/attack_processes_gpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path) -> Path:
    import lightning
    import torch

    from sslr.tasks import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(num_classes=10, small_input=True)
    hparams = {**dict(task.hparams), "_class_path": "sslr.ClassificationTask"}
    path = folder / "model.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__,
            "global_step": 0,
        },
        path,
    )
    return path


def attack(ckpt: Path, out: Path, processes: int, args) -> float:
    cmd = [
        sys.executable,
        "-m",
        "sslr",
        "attack",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
    ]
    cmd += ["--model.small_input", "true", "--ckpt_path", str(ckpt), "--out_dir", str(out)]
    cmd += ["--suite.attacks", "[pgd]", "--suite.gradients", "[rule, exact]", "--suite.steps", "10"]
    cmd += ["--suite.n_samples", str(args.images), "--suite.batch_size", str(args.batch)]
    cmd += ["--suite.eps", "[0, 0.03137]", "--trainer.accelerator", args.accelerator]
    cmd += ["--trainer.devices", str(processes), "--trainer.enable_progress_bar", "false"]
    if processes > 1:
        cmd += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    if args.accelerator == "cpu":  # the machine's cores shared among the processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"sslr attack with {processes} processes failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "attack_processes_cpu.md")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = make_checkpoint(folder)
        times: dict[int, list[float]] = {n: [] for n in args.processes}
        for rep in range(args.reps):
            for n in args.processes:
                times[n].append(attack(ckpt, folder / f"p{n}_r{rep}", n, args))
                print(f"rep {rep + 1}/{args.reps}, {n} processes: {times[n][-1]:.1f} s", flush=True)
        files = {n: (folder / f"p{n}_r0" / "robustness.csv").read_bytes() for n in args.processes}
        same = all(files[n] == files[args.processes[0]] for n in args.processes)
    cells = 2  # PGD under rule and exact at one eps > 0
    base = statistics.median(times[args.processes[0]])
    lines = [
        "# Attack throughput against the number of processes",
        "",
        f"`python benchmarks/attack_processes.py {' '.join(sys.argv[1:])}`".replace(
            "` ", "`"
        ).strip(),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"accelerator {args.accelerator}. resnet18 (32 px stem), PGD-10 under rule and exact, "
        f"{args.images} images in batches of {args.batch}; {args.reps} repetitions, alternating. "
        "Wall time of the whole `sslr attack` command (start-up included).",
        "",
        "| processes | median s | images x cells / s | vs 1 process |",
        "|---|---|---|---|",
    ]
    for n in args.processes:
        median = statistics.median(times[n])
        rate = args.images * cells / median
        lines.append(f"| {n} | {median:.1f} | {rate:.1f} | {base / median:.2f}x |")
    lines += ["", f"robustness.csv the same bytes for every process count: {same}", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
