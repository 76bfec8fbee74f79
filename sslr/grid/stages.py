"""The grid's stages, run in order: BP pretraining once per backbone (or torchvision weights),
fine-tuning with each rule from that checkpoint (once per seed: a seed's fine-tunings, then
their attacks, then the next seed's), the attack suite on every fine-tuned model, then one
report. Each stage is skipped when its marker records the same inputs, and says what
it did on one progress line (``sslr grid: [i/n] label: what; k left, ETA s``).

A fit is done only while its checkpoint is the one its marker records (its sha256, each
checkpoint hashed once per invocation): one missing or replaced makes the fit run again, and
what consumed it (the fine-tunes from a pretrain checkpoint, the attack of a fine-tuned model,
the attacks whose transfer surrogate is bp's, the report) records the hash it consumed, so it
runs again too."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import time
import warnings
from pathlib import Path

from sslr.grid.commands import StageCommands, fingerprint, stage_errors
from sslr.grid.markers import (
    DONE,
    STARTED,
    keep_metrics,
    now,
    read_json,
    relative,
    sha256,
    write_json,
)
from sslr.grid.spec import SURROGATE, Grid, GridError


class GridRun:
    """Runs (or with ``dry_run`` shows) a grid's stages in order; ``echo`` gets progress lines."""

    def __init__(self, grid: Grid, *, dry_run: bool = False, echo=None) -> None:
        self.grid = grid
        self.dry_run = dry_run
        self.echo = echo or say_now
        n_fit = len(grid.rules) * 2 * len(grid.seeds) + (0 if grid.weights else 1)
        self.total = len(grid.backbones) * n_fit + 1
        self.index = 0
        self.ran = 0
        self.skipped = 0
        self.commands = StageCommands(grid)
        self.inputs_configs = [fingerprint(c) for c in grid.configs]
        self.began = time.perf_counter()
        self.hashes: dict[Path, str | None] = {}  # checkpoint -> sha256 (None: missing)
        self.only: str | None = None  # run_one's stage: the others must be done
        self.said: dict[str, str] = {}  # per stage label: what its first line said
        # A job's task (sslr.grid.launch.run_stage): all run the stage's command, rank 0 alone
        # holds its lock and writes its folder and markers.
        self.rank = 0

    # ---- stages -----------------------------------------------------------------------------

    def execute(self) -> None:
        grid = self.grid
        if not self.commands.settings:
            self.commands.check()
        check_layout(grid)
        dry = ", dry run" if self.dry_run else ""
        self.echo(
            f"sslr grid: {grid.name}: {', '.join(grid.backbones)} x {', '.join(grid.rules)}"
            f"{seeds_shown(grid)} -> {grid.out} ({self.total} stages{dry})"
        )
        self._report(self._runs())

    def _runs(self) -> list:
        """Every fit and attack in order (run where not done, or with ``only`` checked done);
        what the report summarizes: backbone, rule, checkpoint sha256, when fit, when attacked
        (and with several seeds the seed)."""
        grid = self.grid
        results = []
        for backbone in grid.backbones:
            start = self._start(backbone)
            for seed in grid.seeds:
                tuned = {r: self._fit("finetune", backbone, r, start, seed) for r in grid.rules}
                for rule in grid.rules:
                    fit = tuned[rule]
                    attacked = self._attack(backbone, rule, fit, tuned.get(SURROGATE), seed)
                    when = [fit.get("finished"), attacked.get("finished")]
                    row = [backbone, rule, fit.get("sha256"), *when]
                    results.append([*row, seed] if grid.several_seeds else row)
        return results

    def _start(self, backbone: str) -> dict:
        if self.grid.weights:
            return {"weights": self.grid.weights}
        return self._fit("pretrain", backbone, "bp")

    def run_one(self, label: str) -> None:
        """Run the one stage ``label`` (a progress line's label: ``pretrain resnet18/bp``,
        ``finetune resnet18/usf``, ``attack resnet18/usf``, with several seeds
        ``finetune resnet18/usf seed 1``, ``report``) unless it is done, as :meth:`execute`
        would: what it consumes must be done (checked as :meth:`execute` checks it, quietly),
        else GridError. What a launcher's job runs (:mod:`sslr.grid.launch`)."""
        if not self.commands.settings:
            self.commands.check()
        self.only, self.total = label, 1
        kind, backbone, rule, seed = parse_label(self.grid, label)
        if kind == "report":
            self._report(self._runs())
            return
        if kind == "pretrain":
            self._fit("pretrain", backbone, "bp")
            return
        start = self._start(backbone)
        tuned = self._fit("finetune", backbone, rule, start, seed)
        if kind == "attack":
            bp = None
            if SURROGATE in self.grid.rules and rule != SURROGATE:
                bp = self._fit("finetune", backbone, SURROGATE, start, seed)
            self._attack(backbone, rule, tuned, bp, seed)

    def probe(self, label: str) -> bool | None:
        """Whether the stage ``label`` is done (True), would run (False), or waits for a stage
        it consumes that is not done (None); quietly, writing nothing."""
        echo, dry_run, index, total = self.echo, self.dry_run, self.index, self.total
        self.echo, self.dry_run = lambda line: None, True
        said = dict(self.said)
        try:
            self.run_one(label)
        except GridError:
            return None
        finally:
            self.echo, self.dry_run, self.index, self.only = echo, dry_run, index, None
            self.total = total
            done = self.said.get(label, "").startswith("skipped")
            self.said = said
        return done

    def forget(self, folder: Path) -> None:
        """Hash again the checkpoints under ``folder`` (another process wrote them)."""
        folder = Path(folder).resolve()
        self.hashes = {p: h for p, h in self.hashes.items() if folder not in p.parents}

    def _must_run(self, label: str) -> None:
        """With ``only`` (one stage): a stage it consumes would have to run first."""
        if self.only is not None and label != self.only:
            raise GridError(f"{label} is not done ({self.only} needs it): run sslr grid")

    @contextlib.contextmanager
    def _lock(self, label: str):
        """The stage's lock, held while it runs (:func:`stage_folder`): one stage never runs
        twice at once, whether inline or in a launcher's jobs (rank 0's, in a job of several
        tasks). Tried for 2 s (``sslr grid --status`` peeks at it a moment), then refused."""
        from sslr.atomic import FolderLock
        from sslr.errors import UserError

        if self.rank != 0:
            yield
            return
        lock = FolderLock(stage_folder(self.grid.out, label), f"stage {label!r} of the grid")
        for attempt in range(20):
            try:
                lock.__enter__()
                break
            except UserError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def _checkpoint(self, marker: dict) -> Path | None:
        return self.grid.out / marker["checkpoint"] if marker.get("checkpoint") else None

    def _hash(self, path: Path, *, fresh: bool = False) -> str | None:
        """The sha256 of a checkpoint on disk (None when it is missing), computed once per
        invocation; ``fresh``: the file was just written, hash it again."""
        path = Path(path).resolve()
        if fresh or path not in self.hashes:
            self.hashes[path] = sha256(path) if path.is_file() else None
        return self.hashes[path]

    def _changed(self, done: dict) -> str | None:
        """Why a finished fit's checkpoint is not the one its marker records (one sentence),
        or None when it is."""
        recorded = done.get("sha256")
        path = self._checkpoint(done)
        current = None if path is None else self._hash(path)
        if recorded and current == recorded:
            return None
        again = "would run the stage again" if self.dry_run else "running the stage again"
        name = done.get("checkpoint") or "checkpoint"
        was = f"sha256 {str(recorded)[:12]} recorded"
        if current is None:
            return f"{name} is missing ({was}): {again}"
        return f"{name} changed since the stage finished ({was}, {current[:12]} now): {again}"

    def _skip(self, label: str, done: dict) -> dict:
        """A stage whose marker records the same inputs: said, counted, its marker returned."""
        if self.only is not None and label != self.only:
            return done  # run_one: a stage it consumes, done, said nothing of
        self.skipped += 1
        self._say(label, f"skipped (done {done.get('finished', '')})", new=True)
        return done

    def _say(self, label: str, what: str, new: bool = False) -> None:
        self.index += new
        if new:
            self.said[label] = what
        if not new and self.index:  # a stage finished: what is left, and when it may end
            elapsed = time.perf_counter() - self.began
            left = self.total - self.index
            what += f"; {left} left, ETA {elapsed / self.index * left:.0f} s" if left else ""
        self.echo(f"sslr grid: [{self.index}/{self.total}] {label}: {what}")

    def _fit(
        self,
        kind: str,
        backbone: str,
        rule: str,
        start: dict | None = None,
        seed: int | None = None,
    ) -> dict:
        """A pretrain or finetune stage (from ``start``, the pretrain marker or the weights;
        ``seed`` the fine-tuning's, default the first); returns its marker: checkpoint
        (relative to out), sha256, test metrics."""
        grid = self.grid
        seed = grid.seed if seed is None or kind == "pretrain" else seed
        pretrain = grid.out / backbone / "pretrain"
        folder = pretrain if kind == "pretrain" else grid.run_dir(backbone, rule, seed)
        label = grid.label(kind, backbone, rule, seed)
        checkpoint = start and self._checkpoint(start)
        args = self.commands.build(kind, backbone, rule, start=checkpoint, seed=seed)
        inputs = {
            "stage": kind,
            "backbone": backbone,
            "rule": rule,
            "configs": self.inputs_configs,
            "epochs": grid.pretrain_epochs if kind == "pretrain" else grid.finetune_epochs,
            "seed": seed,
            "args": list(grid.pretrain_args if kind == "pretrain" else grid.finetune_args),
            "start": None if start is None else start.get("weights") or start.get("sha256"),
        }
        done = read_json(folder / DONE)
        changed = None
        if done is not None and done.get("inputs") == inputs:
            changed = self._changed(done)
            if changed is None:  # its checkpoint is the one recorded: what dependents consume
                return self._skip(label, done)
        last = folder / "checkpoints" / "last.ckpt"
        resume = done is None and read_json(folder / STARTED) == inputs and last.is_file()
        if resume:
            args = [*args, "--ckpt_path", str(last)]
        where = folder.relative_to(grid.out).as_posix()
        layout = {"checkpoint": f"{where}/checkpoints/best.ckpt", "sha256": None}
        self._must_run(label)
        if self.dry_run:
            what = changed or ("would resume from last.ckpt" if resume else "would run")
            self._say(label, what, new=True)
            self.echo("    " + shlex.join(["sslr", *args]))
            return layout
        with self._lock(label):
            return self._run_fit(label, kind, folder, args, inputs, resume, changed, last)

    def _run_fit(self, label, kind, folder, args, inputs, resume, changed, last) -> dict:
        grid = self.grid
        backbone, rule = inputs["backbone"], inputs["rule"]
        self._say(label, changed or ("resuming from last.ckpt" if resume else "running"), new=True)
        if self.rank == 0:
            if not resume and folder.exists():
                shutil.rmtree(folder)  # stale or unfinished without a checkpoint: start clean
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / STARTED, inputs)
        began = time.perf_counter()
        keep = keep_metrics(folder, last) if resume else contextlib.nullcontext()
        with stage_errors(label), keep:
            from sslr.cli import run

            cli = run(args)
            trainer = cli.trainer
            if trainer.interrupted:
                raise GridError(f"{label} was interrupted: run sslr grid again to resume it")
            ckpt = best_checkpoint(trainer, folder)
            # One dict per test loader (hashing tests on [queries, database]): merged.
            tested = trainer.test(
                cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False
            )
            metrics = {k: v for result in tested for k, v in result.items()}
        seconds = time.perf_counter() - began
        marker = {
            "stage": kind,
            "backbone": backbone,
            "rule": rule,
            "checkpoint": relative(ckpt, grid.out),
            "sha256": self._hash(ckpt, fresh=True),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "seconds": round(seconds, 1),
            "finished": now(),
            "inputs": inputs,
        }
        if self.rank == 0:
            write_json(folder / DONE, marker)
        self.ran += 1
        shown = next(
            (f"{k} {v:.3f}" for k, v in marker["metrics"].items() if "acc" in k or "mAP" in k), ""
        )
        verb = "resumed and ran" if resume else "ran"
        self._say(label, f"{verb} in {seconds:.1f} s" + (f" ({shown})" if shown else ""))
        return marker

    def _attack(
        self, backbone: str, rule: str, tuned: dict, bp: dict | None, seed: int | None = None
    ) -> dict:
        """The attack suite on ``tuned`` (a fine-tune's marker, its sha256 that of the file on
        disk), ``transfer`` crafted on ``bp`` (bp's fine-tune of the same seed; none on bp
        itself: not a transfer)."""
        grid = self.grid
        seed = grid.seed if seed is None else seed
        run_dir = grid.run_dir(backbone, rule, seed)
        folder = run_dir / "attack"
        label = grid.label("attack", backbone, rule, seed)
        if rule == SURROGATE:
            bp = None  # no transfer from bp to itself (Grid.attack_suite): no surrogate input
        inputs = {
            "checkpoint": tuned.get("sha256"),
            "surrogate": bp.get("sha256") if bp else None,
            "configs": self.inputs_configs,
            "suite": grid.attack_suite(rule, seed),  # with several seeds, its seed
            "args": [*grid.finetune_args, *grid.attack_args],
        }
        done = read_json(folder / DONE)
        ready = inputs["checkpoint"] and (bp is None or inputs["surrogate"])
        if done is not None and done.get("inputs") == inputs and ready:
            return self._skip(label, done)
        surrogate = self._checkpoint(bp) if bp else None
        args = self.commands.build(
            "attack", backbone, rule, ckpt=self._checkpoint(tuned), surrogate=surrogate, seed=seed
        )
        self._must_run(label)
        if self.dry_run:
            self._say(label, "would run", new=True)
            self.echo("    " + shlex.join(["sslr", *args]))
            return {}
        with self._lock(label):
            return self._run_attack(label, backbone, rule, folder, args, inputs)

    def _run_attack(self, label, backbone, rule, folder, args, inputs) -> dict:
        grid = self.grid
        run_dir = folder.parent
        self._say(label, "running", new=True)
        if self.rank == 0:
            (folder / DONE).unlink(missing_ok=True)
        began = time.perf_counter()
        with stage_errors(label), _engine_progress(self.echo):
            from sslr.cli import run

            run(args)
        seconds = time.perf_counter() - began
        csv_path = run_dir / "robustness.csv"
        rows = max(0, len(csv_path.read_text().splitlines()) - 1) if csv_path.is_file() else 0
        marker = {
            "stage": "attack",
            "backbone": backbone,
            "rule": rule,
            "robustness": relative(csv_path, grid.out),
            "rows": rows,
            "seconds": round(seconds, 1),
            "finished": now(),
            "inputs": inputs,
        }
        if self.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / DONE, marker)
        self.ran += 1
        self._say(label, f"ran in {seconds:.1f} s ({rows} rows in robustness.csv)")
        return marker

    def _report(self, results: list) -> None:
        """The report over the grid's runs (not the pretrain runs: they are bp too); its marker
        is <out>/done.json, so it is rebuilt only when a run it shows changed."""
        grid = self.grid
        out = grid.out / "report.md"
        label = "report"
        done = read_json(grid.out / DONE)
        if done is not None and done.get("inputs") == results and out.is_file():
            self._skip(label, done)
            return
        self._must_run(label)
        if self.dry_run:
            self._say(label, f"would write {out}", new=True)
            return
        self._say(label, "running", new=True)
        from sslr.report import build_report

        dirs = [
            grid.run_dir(b, r, s) for b in grid.backbones for s in grid.seeds for r in grid.rules
        ]
        with self._lock(label), stage_errors(label):
            report = build_report(dirs, out)
        marker = {"stage": "report", "report": out.name, "finished": now(), "inputs": results}
        write_json(grid.out / DONE, marker)
        self.ran += 1
        self._say(label, f"wrote {out}, {report.csv_path.name} and {len(report.figures)} figures")


# Noise when the grid reuses its own folders on purpose (a resumed fit, started.json).
_QUIET = (r"Experiment logs directory .* exists and is not empty", r"Checkpoint directory .*")


@contextlib.contextmanager
def grid_context():
    """How stages run (inline or in a launcher's job): Lightning's info off, the warnings of a
    grid reusing its own folders on purpose off, W&B quiet."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    os.environ.setdefault("WANDB_SILENT", "true")
    lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.setLevel(level)


# Per stage, under the grid folder: its lock, and a launcher's job files (logs, job.json).
STAGES_DIR = ".grid"


def stage_folder(out: Path, label: str) -> Path:
    """``<out>/.grid/<label as a name>``: ``finetune resnet18/usf`` -> ``finetune-resnet18-usf``."""
    return Path(out) / STAGES_DIR / re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-")


_LABEL = re.compile(r"(?P<kind>\w+) (?P<backbone>[^/\s]+)/(?P<rule>\S+)(?: seed (?P<seed>\d+))?")


def parse_label(grid: Grid, label: str) -> tuple[str, str, str, int | None]:
    """A stage's label as (kind, backbone, rule, seed): ``finetune resnet18/usf seed 1`` ->
    ("finetune", "resnet18", "usf", 1), the first seed where the label has none,
    ("report", "", "", None) for the report. GridError for a label the grid has no stage of."""
    if label == "report":
        return "report", "", "", None
    match = _LABEL.fullmatch(label)
    if match is None or match["kind"] not in ("pretrain", "finetune", "attack"):
        raise GridError(f"no stage {label!r} in the grid")
    kind, backbone, rule = match["kind"], match["backbone"], match["rule"]
    seed = grid.seed if match["seed"] is None else int(match["seed"])
    if seed not in grid.seeds or grid.label(kind, backbone, rule, seed) != label:
        raise GridError(f"no stage {label!r} in the grid")
    return kind, backbone, rule, seed


def marker_path(grid: Grid, label: str) -> Path:
    """Where the stage ``label`` writes its done.json."""
    kind, backbone, rule, seed = parse_label(grid, label)
    if kind == "report":
        return grid.out / DONE
    if kind == "pretrain":
        return grid.out / backbone / "pretrain" / DONE
    folder = grid.run_dir(backbone, rule, seed)
    return (folder / "attack" if kind == "attack" else folder) / DONE


def seeds_shown(grid: Grid) -> str:
    """`` x seeds 0, 1`` for a grid of several seeds (its first progress line), else nothing."""
    return f" x seeds {', '.join(map(str, grid.seeds))}" if grid.several_seeds else ""


def check_layout(grid: Grid) -> None:
    """Refuse a grid folder holding the other seed layout's runs: a run of one seed in
    ``<backbone>/<rule>/`` under the folders ``seed<k>/`` of several would make them part of it
    (to ``sslr report``), and replacing it would delete them. GridError, before any stage."""
    for backbone in grid.backbones:
        for rule in grid.rules:
            folder = grid.out / backbone / rule
            if not folder.is_dir():
                continue
            seeded = sorted(
                f"{p.name}/" for p in folder.iterdir() if re.fullmatch(r"seed\d+", p.name)
            )
            if grid.several_seeds and any(
                (folder / name).exists() for name in (DONE, STARTED, "config.yaml", "checkpoints")
            ):
                raise GridError(
                    f"{folder} holds the run of a grid with one seed, and with several seeds the "
                    "runs go to its seed<k>/ folders: give another --out, or move it away"
                )
            if not grid.several_seeds and seeded:
                raise GridError(
                    f"{folder} holds runs of a grid with several seeds ({', '.join(seeded)}), "
                    "and with one seed the run goes to that folder itself: give another --out, "
                    "or move them away"
                )


def best_checkpoint(trainer, folder: Path) -> Path:
    callback = trainer.checkpoint_callback
    found = callback and (callback.best_model_path or callback.last_model_path)
    path = Path(found) if found else folder / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise GridError(f"the fit in {folder} wrote no checkpoint (is checkpointing disabled?)")
    return path


# The engine's lines: "attack 3/12 pgd linf rule eps=...: accuracy 0.41 (9 left, ETA 30s)" and
# its heartbeat inside a cell; `sslr attack` hands them to Lightning's rank_zero_info.
_ENGINE_LINE = re.compile(r"^attack \d+/\d+ ")


class _Echo(logging.Handler):
    """The engine's lines to ``echo``; warnings and errors on to the parent's handlers as
    before; other info (the attack's own table, which the report shows) dropped."""

    def __init__(self, echo) -> None:
        super().__init__(logging.INFO)
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.getMessage())
        if _ENGINE_LINE.match(message):
            self.echo(f"    {message}")
        elif record.levelno >= logging.WARNING and record.name != "sslr.robustness":
            logging.getLogger(record.name).parent.handle(record)


@contextlib.contextmanager
def _engine_progress(echo):
    """The evaluation engine's progress (a line per cell, a heartbeat at least every 10 s
    inside a long one) on the grid's output while an attack stage runs: no long silence."""
    from lightning_utilities.core import rank_zero  # its logger is Lightning's, once imported

    handler = _Echo(echo)
    loggers = [logging.getLogger("sslr.robustness"), rank_zero.log]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = logger is loggers[0]
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def say_now(line: str) -> None:
    """A progress line, flushed at once (stdout is block-buffered when it is not a terminal)."""
    print(line, flush=True)
