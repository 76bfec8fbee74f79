"""Wall time of a tiny grid: ``sslr grid`` inline vs ``--launcher local --max-parallel 2``.

    .venv/bin/python benchmarks/grid_launchers.py              # about 10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/grid_launchers.py --runs 1 --out -   # one run each, print only

The grid is configs/grid/digits_debug.yaml with two rules (bp, usf): one pretraining, two
fine-tunings, two attacks, the report (6 stages; Digits, resnet18, a few batches each). Every
run is ``python -m sslr grid`` in a fresh folder (its whole wall time: the process, every job's
start and imports), the launchers taking turns run after run (the order reversed every other
round) so a busy machine slows them alike; the table has the median of the runs.

- inline: stage after stage in one process (the default).
- local: each stage its own process through submitit's LocalExecutor, the two fine-tunings
  and then the two attacks at once; each job keeps torch's default thread count (one per
  core), as inline does, so the numbers are inline's to the bit.
- local, OMP_NUM_THREADS=cores/2: the same, the cores split between the two jobs at once
  (other numbers than inline's: a different summation order).

On a GPU machine the jobs at once each get their own GPU; this measures the CPU case, where
the stages at once share the cores and each job pays its own start (python, torch, Lightning:
seconds). Writes the table to benchmarks/results/grid_launchers.md.
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

import yaml

from sslr.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEBUG_GRID = ROOT / "configs" / "grid" / "digits_debug.yaml"
RESULTS = Path(__file__).parent / "results"


def two_rule_grid(folder: Path) -> Path:
    spec = yaml.safe_load(DEBUG_GRID.read_text())
    here = DEBUG_GRID.parent
    spec["base_config"] = str((here / spec["base_config"]).resolve())
    spec["overlays"] = [
        str((here / o).resolve()) if isinstance(o, str) else o for o in spec["overlays"]
    ]
    spec["rules"] = ["bp", "usf"]
    path = folder / "two_rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def variants() -> dict[str, tuple[list[str], dict]]:
    half = str(max(1, (os.cpu_count() or 2) // 2))
    local = ["--launcher", "local", "--max-parallel", "2"]
    return {
        "inline": ([], {}),
        "local --max-parallel 2": (local, {}),
        f"local --max-parallel 2, OMP_NUM_THREADS={half}": (local, {"OMP_NUM_THREADS": half}),
    }


def run_once(grid_file: Path, folder: Path, args: list[str], env: dict) -> float:
    out = folder / "grid"
    command = [sys.executable, "-m", "sslr", "grid", "--config", str(grid_file), "--out", str(out)]
    # This checkout's sslr, in the command and its jobs, whatever the folder would import.
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    began = time.perf_counter()
    done = subprocess.run(
        [*command, *args],
        cwd=folder,
        env={**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(
            f"sslr grid {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each launcher (median)")
    parser.add_argument("--out", help="the table's file; - prints only")
    args = parser.parse_args()
    cases = variants()
    times: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        grid_file = two_rule_grid(Path(tmp))
        for round_ in range(args.runs):
            order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
            for name in order:
                folder = Path(tempfile.mkdtemp(dir=tmp))
                seconds = run_once(grid_file, folder, *cases[name])
                times[name].append(seconds)
                print(f"round {round_ + 1}/{args.runs} {name}: {seconds:.1f} s", flush=True)
    inline = statistics.median(times["inline"])
    what = f"median of {args.runs} runs" if args.runs > 1 else "1 run (no median)"
    lines = [
        "# Grid launchers: inline vs local",
        "",
        "Wall time of `sslr grid` on configs/grid/digits_debug.yaml with rules bp and usf (6 "
        f"stages: pretrain, 2 fine-tunes, 2 attacks, report), each run in a fresh folder; {what}, "
        "the launchers taking turns.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no "
        f"GPU (a 2-core CPU VM, shared: other jobs' load moves single runs a lot); Python "
        f"{platform.python_version()}; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "| launcher | wall s (median) | runs (s) | x inline |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {median:.1f} | {runs} | {median / inline:.2f}x |")
    ratio = statistics.median(times["local --max-parallel 2"]) / inline
    verdict = (
        "slower: on a CPU machine the stages at once share the cores inline already uses, and "
        "each job pays its own process start and imports; the gain is where each job has its "
        "own GPU"
        if ratio > 1
        else "faster: the stages at once use what one stage leaves idle"
    )
    lines += [
        "",
        f"Ratio local / inline: {ratio:.2f} ({verdict}).",
        "",
        f"Command: `python benchmarks/grid_launchers.py --runs {args.runs}`",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out != "-":
        out = Path(args.out) if args.out else RESULTS / "grid_launchers.md"
        atomic_write(out, table)


if __name__ == "__main__":
    main()
