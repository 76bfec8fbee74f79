"""``sslr grid``: the paper's protocol for one dataset and a list of backbones, as one resumable
command.

    sslr grid --config configs/grid/digits_debug.yaml [--out DIR] [--dry-run]

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
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from sslr.atomic import FolderLock
from sslr.errors import UserError
from sslr.grid.markers import keep_metrics as _keep_metrics  # noqa: F401  (a name tests use)
from sslr.grid.spec import Grid, GridError, load_grid
from sslr.grid.stages import GridRun

__all__ = ["Grid", "GridError", "GridRun", "load_grid", "main_grid", "run_grid"]

# Noise when the grid reuses its own folders on purpose (a resumed fit, started.json).
_QUIET = (r"Experiment logs directory .* exists and is not empty", r"Checkpoint directory .*")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise GridError(f"{message} (see sslr grid --help)")


def run_grid(grid: Grid, *, dry_run: bool = False, echo=None) -> GridRun:
    """Run (or show) a loaded grid: every command checked first, then its stages under the grid
    folder's lock, a second grid on the same folder being refused, not merged. Raises GridError
    or UserError; returns the finished runner (its ``ran`` and ``skipped`` counts)."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    os.environ.setdefault("WANDB_SILENT", "true")
    lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            runner = GridRun(grid, dry_run=dry_run, echo=echo)
            runner.commands.check()  # a typo fails here, before the folder is touched
            lock = contextlib.nullcontext() if dry_run else FolderLock(grid.out, "grid folder")
            with lock:
                runner.execute()
    finally:
        lightning_log.setLevel(level)
    return runner


def main_grid(argv: list[str] | None = None) -> int:
    """``sslr grid --config GRID.yaml [--out DIR] [--dry-run]``; returns the exit status."""
    parser = _Parser(
        prog="sslr grid",
        description="The paper's protocol for one dataset and a list of backbones: BP "
        "pretraining, fine-tuning with each rule, the attack suite, the report. Resumable: "
        "finished stages are skipped.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the grid file (YAML)")
    parser.add_argument("--out", type=Path, help="the grid's folder (default: the file's out)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the stages and commands, run nothing"
    )
    began = time.perf_counter()
    try:
        args = parser.parse_args(argv)
        runner = run_grid(load_grid(args.config, out=args.out), dry_run=args.dry_run)
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
