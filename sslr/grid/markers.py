"""The grid's stage markers: ``done.json`` (written atomically once a stage has finished, with
the inputs it ran on), ``started.json`` (a fit under way, so an interrupted one resumes from its
``last.ckpt``), and what a marker records (checkpoint hashes, relative paths, times)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from sslr.atomic import atomic_write

DONE, STARTED = "done.json", "started.json"


@contextlib.contextmanager
def keep_metrics(folder: Path, last: Path):
    """Lightning's CSVLogger deletes metrics.csv when it reopens a run folder: put back the rows
    logged before the step the fit resumes from (later ones it logs again)."""
    path = folder / "metrics.csv"
    old = _read_rows(path)
    if old:
        from sslr.checkpoints import load_checkpoint

        step = load_checkpoint(last, "last.ckpt", mmap=True)["global_step"]
        old = [row for row in old if _float(row.get("step")) < step]
    try:
        yield
    finally:
        if old:
            rows = old + _read_rows(path)
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(path, text.getvalue())


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("inf")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    """Atomically: a marker is either absent or complete."""
    atomic_write(path, json.dumps(value, indent=2) + "\n")
