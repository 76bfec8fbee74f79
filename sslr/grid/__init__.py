"""``sslr grid``: the paper's protocol for one dataset and a list of backbones, as one resumable
command.

    sslr grid --config configs/grid/digits_debug.yaml [--out DIR] [--dry-run]
              [--launcher inline|local|slurm] [--max-parallel N] [--status]

For every backbone: BP pretraining once (or torchvision weights instead), fine-tuning with each
rule from that same checkpoint with the same seed and budget, the attack suite on every
fine-tuned model (the ``transfer`` surrogate is the bp fine-tuned model of the same backbone, so
bp's own attack runs no ``transfer``: it would be its own white-box examples, and its report
cell shows "–"), then one report over all of them. Each stage runs the CLI users run
(``sslr fit``, ``sslr attack``, in-process) into a fixed layout that ``sslr report`` reads::

    <out>/<backbone>/pretrain/       config.yaml, metrics.csv, checkpoints/, done.json
    <out>/<backbone>/<rule>/         the same, plus robustness.csv and .png from the attack
    <out>/<backbone>/<rule>/attack/  the attack's logs and its done.json
    <out>/report.md                  with report.csv, the PNGs and its done.json beside it

With ``seeds: [0, 1, 2]`` instead of ``seed: 0`` every fine-tuning (and its attack) runs once
per seed, into ``<out>/<backbone>/<rule>/seed<k>/`` (its ``attack/`` inside), as the stages
``finetune resnet18/usf seed 1`` and ``attack resnet18/usf seed 1``: ``--seed_everything``,
``--model.seed``, ``--data.seed`` (validation split, order, augmentation; not the test split)
and the attack's ``--suite.seed`` are the seed, the pretraining runs once with the first; an attack's transfer surrogate is bp's
fine-tuning of the same seed. With one seed the layout is the one above.

Resumable: a stage is skipped when its ``done.json`` (written atomically once the stage has
finished) records the same inputs: the configs' contents, epochs, args, seed, and the sha256 of
the checkpoint it starts from or attacks (and of the transfer surrogate); a fit, moreover, only
while its own checkpoint is still the file it recorded (each checkpoint is hashed once per
invocation). An interrupted fit resumes from its ``last.ckpt``; an interrupted attack runs
again; a stage whose inputs changed, or a fit whose checkpoint is missing or was replaced, runs
again from scratch (its folder is replaced), and so does whatever depended on a checkpoint
that changed.

The grid file's schema is in :mod:`sslr.grid.spec`, the stages and their progress lines in
:mod:`sslr.grid.stages`, their markers in :mod:`sslr.grid.markers` and the commands they run
(through :func:`sslr.cli.run`, checked first with :func:`sslr.cli.parse`) in
:mod:`sslr.grid.commands`. A cosine schedule's ``T_max`` follows the stage's epochs. Every
command is parsed before any stage runs, so a typo fails at once.

``--launcher local`` and ``--launcher slurm`` run each stage as its own submitit job, the
independent ones at once, and ``--status`` says where each stage is: :mod:`sslr.grid.launch`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from sslr.atomic import FolderLock
from sslr.errors import UserError
from sslr.grid.markers import keep_metrics as _keep_metrics  # noqa: F401  (a name tests use)
from sslr.grid.spec import Grid, GridError, load_grid
from sslr.grid.stages import GridRun, grid_context, say_now

__all__ = ["Grid", "GridError", "GridRun", "grid_context", "load_grid", "main_grid", "run_grid"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise GridError(f"{message} (see sslr grid --help)")


def run_grid(
    grid: Grid,
    *,
    dry_run: bool = False,
    echo=None,
    launcher: str = "inline",
    max_parallel: int | None = None,
    config: Path | None = None,
):
    """Run (or show) a loaded grid: every command checked first, then its stages under the grid
    folder's lock, a second grid on the same folder being refused, not merged; ``launcher``
    local or slurm: each stage a job (:mod:`sslr.grid.launch`; ``config``, the grid file, is
    what the jobs read). Raises GridError or UserError; returns the finished runner (its
    ``ran`` and ``skipped`` counts)."""
    with grid_context():
        if launcher == "inline":
            runner = GridRun(grid, dry_run=dry_run, echo=echo)
            runner.commands.check()  # a typo fails here, before the folder is touched
        else:
            from sslr.grid.launch import Driver

            if config is None:
                raise GridError(f"--launcher {launcher} needs the grid file its jobs read")
            runner = Driver(grid, config, launcher, max_parallel, echo or say_now, dry_run)
            runner.runner.commands.check()
        lock = contextlib.nullcontext() if dry_run else FolderLock(grid.out, "grid folder")
        with lock:
            if launcher == "inline":
                runner.execute()
            elif dry_run:
                runner.dry_run()
            else:
                runner.run()
    return runner


def _check_options(args) -> None:
    from sslr.grid.launch import LAUNCHERS

    if args.launcher not in LAUNCHERS:
        raise GridError(
            f"unknown launcher {args.launcher!r}; known launchers: {', '.join(LAUNCHERS)}"
        )
    if args.max_parallel is not None:
        if args.max_parallel < 1:
            raise GridError(f"--max-parallel must be at least 1, got {args.max_parallel}")
        if args.launcher != "local":
            raise GridError("--max-parallel is for --launcher local (slurm: array_parallelism)")
    if args.status and args.dry_run:
        raise GridError("--status and --dry-run: give one")


def main_grid(argv: list[str] | None = None) -> int:
    """``sslr grid --config GRID.yaml [--out DIR] [--dry-run] [--launcher L] [--max-parallel N]
    [--status]``; returns the exit status."""
    parser = _Parser(
        prog="sslr grid",
        description="The paper's protocol for one dataset and a list of backbones: BP "
        "pretraining, fine-tuning with each rule, the attack suite, the report. Resumable: "
        "finished stages are skipped.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the grid file (YAML)")
    parser.add_argument("--out", type=Path, help="the grid's folder (default: the file's out)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the stages, their commands and (with a launcher) the jobs; run nothing",
    )
    parser.add_argument(
        "--launcher",
        default="inline",
        help="inline (default: stage after stage in this process), local (each stage a "
        "process, independent ones at once) or slurm (each stage a job; the grid file's "
        "slurm: section)",
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        help="--launcher local: jobs at once (default: one per visible GPU, each on its own; "
        "1 without GPUs: CPU jobs at once share the cores, set OMP_NUM_THREADS to split them)",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="say each stage's state (done, running, queued, failed with its log) and exit",
    )
    began = time.perf_counter()
    try:
        args = parser.parse_args(argv)
        _check_options(args)
        grid = load_grid(args.config, out=args.out)
        if args.launcher == "slurm" and grid.slurm is None:
            raise GridError(
                f"--launcher slurm needs a slurm: section in {args.config} (partition, "
                "account, per stage kind gpus, cpus, mem, time; slurm: {} takes the cluster's "
                "defaults)"
            )
        if args.status:
            from sslr.grid.launch import grid_status

            with grid_context():
                grid_status(grid, say_now)
            return 0
        runner = run_grid(
            grid,
            dry_run=args.dry_run,
            launcher=args.launcher,
            max_parallel=args.max_parallel,
            config=args.config,
        )
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except (GridError, UserError) as err:
        print(f"sslr grid: error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        print(
            f"sslr grid: done in {time.perf_counter() - began:.0f} s ({runner.ran} stages ran, "
            f"{runner.skipped} skipped): {runner.grid.out / 'report.md'}"
        )
    return 0
