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
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sslr.atomic import atomic_write
from sslr.errors import UserError

__all__ = ["RunCSVLogger", "child_name", "resolve_ckpt_path", "run_folder_of"]


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
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, out.getvalue())
        self.metrics_keys = keys


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")
