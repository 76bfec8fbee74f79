"""One run, one folder: where a command on an existing run writes.

A run is the folder ``sslr fit`` made (``runs/<data>/<run>/version_<k>``, holding config.yaml,
metrics.csv and checkpoints/). Commands given one of its checkpoints write into it, never into a
sibling ``version_<k+1>``:

- ``sslr fit --ckpt_path <run>/checkpoints/last.ckpt`` (a resume) continues the run's own
  metrics.csv: rows logged after the checkpoint's step (by the interrupted process) are dropped,
  the resumed process logs them again.
- ``sslr validate|test|predict|attack --ckpt_path <run>/checkpoints/<name>.ckpt`` logs into the
  child ``<run>/<subcommand>-<name>/`` (metrics.csv and the config it ran with): test metrics of
  the best checkpoint are in ``<run>/test-best/metrics.csv``.

``--ckpt_path last`` (or ``best``) with ``--config <run>/config.yaml`` names that run's
checkpoint; without a run to name it stops with one line instead of starting from scratch.

A fit that ends marks its run finished (``fit.done``). Rerunning the command of a run that was
stopped before that (``kill -9``, a lost machine) resumes it from its last.ckpt in the same folder
(:func:`unfinished_run`), after removing the temporary files its interrupted writes left
(:func:`remove_leftover_temp_files`).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sslr.atomic import atomic_write
from sslr.errors import UserError

__all__ = [
    "DONE_MARKER",
    "RunCSVLogger",
    "child_name",
    "latest_version",
    "mark_finished",
    "remove_leftover_temp_files",
    "resolve_ckpt_path",
    "run_folder_of",
    "same_config",
]

DONE_MARKER = "fit.done"
"""Written (atomically) into the run folder when ``sslr fit`` ends without being interrupted."""


def run_folder_of(ckpt_path: str | os.PathLike) -> Path | None:
    """The run folder of a checkpoint in ``<run>/checkpoints/``, or None for a loose file."""
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


def resolve_ckpt_path(value: str | None, config_files: list) -> str | None:
    """``last``/``best`` as the checkpoint of the run whose config.yaml was given."""
    if value not in ("last", "best"):
        return value
    runs = [Path(str(c)).parent for c in config_files or () if Path(str(c)).name == "config.yaml"]
    runs = [run for run in runs if (run / "checkpoints").is_dir()]
    if not runs:
        raise UserError(
            f"Checkpoint {value!r} (--ckpt_path {value}): no run folder to take it from; give the run's own config "
            f"(--config runs/<name>/version_<k>/config.yaml) or the checkpoint's path"
        )
    ckpt = runs[-1] / "checkpoints" / f"{value}.ckpt"
    if not ckpt.is_file():
        raise UserError(
            f"Checkpoint {value!r} (--ckpt_path {value}): the run {runs[-1]} has no {ckpt.name} (it never finished an "
            "epoch): start it again without --ckpt_path"
        )
    return str(ckpt)


def latest_version(parent: str | os.PathLike) -> Path | None:
    """The ``version_<k>`` folder with the highest k in ``parent`` (what a new fit would follow)."""
    folder = Path(parent)
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    return max(found)[1] if found else None


def mark_finished(run: str | os.PathLike, epoch: int, step: int) -> None:
    """Mark the run finished: rerunning its command starts a new run instead of resuming it."""
    atomic_write(Path(run) / DONE_MARKER, f"finished at epoch {epoch}, step {step}\n")


_IGNORED_KEYS = ("ckpt_path", "config", "__path__")


def same_config(saved: dict, new: dict, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a run's saved config.yaml and a new command's config describe the same run.

    ``ckpt_path`` (a resume writes it into config.yaml) and the config file names are ignored,
    and any key in ``ignore`` (a seed Lightning drew at random).
    """
    skip = (*_IGNORED_KEYS, *ignore)

    def strip(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in skip}

    return strip(saved) == strip(new)


# The temporary names of sslr.atomic: ".<name>.<8 random characters>.tmp" (atomic_open) and
# ".<stem>.<8 random characters><suffix>" (atomic_write_with, e.g. a checkpoint or a plot).
_TEMP_NAME = re.compile(r"\.(?P<base>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)")


def remove_leftover_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove what writes interrupted by ``kill -9`` left in ``folder`` and its subfolders.

    Only hidden files named as sslr.atomic names its temporary files; call it while no other
    process writes the folder (a resumed run, holding its lock, before training starts).
    Returns what it removed.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*")):
        match = _TEMP_NAME.fullmatch(path.name)
        if not path.is_file() or match is None:
            continue
        removed.append(path)
        path.unlink(missing_ok=True)
    return removed


def child_name(subcommand: str, ckpt_path: str | os.PathLike) -> str:
    """The folder, inside the run, of one evaluation: ``test-best``, ``attack-last``."""
    return f"{subcommand}-{Path(ckpt_path).stem}"


class RunCSVLogger(CSVLogger):
    """A CSVLogger writing to the folder ``folder`` itself (no name/version_<k> below it).

    ``keep_before_step``: a resume; metrics.csv keeps its rows logged before that step instead
    of being deleted, as Lightning's CSVLogger does when it reopens a folder.
    """

    def __init__(self, folder: str | os.PathLike, keep_before_step: int | None = None, **kwargs):
        folder = Path(folder)
        super().__init__(save_dir=str(folder.parent), name="", version=folder.name, **kwargs)
        self._keep_before_step = keep_before_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._keep_before_step)
        return self._experiment


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._keep_before_step is None or not path.is_file():
            if path.is_file():  # an evaluation repeated: its previous rows are replaced
                path.unlink()
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < self._keep_before_step]
        out = io.StringIO()
        # csv.DictWriter's own line ending, as Lightning's ExperimentWriter (which appends
        # to this file) writes it: one ending throughout the file.
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, out.getvalue())
        self.metrics_keys = keys


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")
