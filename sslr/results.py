"""The result rows of an attack suite: the schema of ``robustness.csv``, shared by the evaluation
engine that writes it and ``sslr report`` that reads it.

Standard library only (no torch, no ART): reading results must stay cheap. Files are written
through :mod:`sslr.atomic` (complete or absent), and read strictly: a missing column, a value
that is not a number (such as a file cut mid-row) or a short row is one :class:`ResultsError`
naming the file and line, never a silently accepted value.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sslr.atomic import atomic_write

# The columns every robustness.csv has, in order; ``metric`` says what ``accuracy`` holds
# (classification: accuracy; hashing: mAP or t-mAP); ``ci_low``/``ci_high`` its 95% interval
# (accuracy: Wilson's score interval; mAP and t-mAP: a bootstrap over the queries, see
# :mod:`sslr.stats`). Files written before ``metric`` existed (classification) read with metric
# "accuracy"; files without the interval columns read with no interval.
COLUMNS = (
    "attack",
    "norm",
    "eps",
    "steps",
    "gradient",
    "accuracy",
    "n",
    "metric",
    "ci_low",
    "ci_high",
)
REQUIRED = COLUMNS[:7]

# Display order of the gradient sources (report tables, plots).
GRADIENT_ORDER = ("rule", "exact", "eot", "transfer", "none")


class ResultsError(ValueError):
    """A robustness.csv that cannot be read: the message names the file, line and value."""


@dataclass(frozen=True)
class RobustnessRow:
    """The score of ``n`` images under ``attack`` at ``eps`` (pixel units, in ``norm``) with
    gradients from ``gradient``; ``steps`` is 1 for FGSM, PGD's iterations, Square's queries.
    ``accuracy`` holds the ``metric``: accuracy (classification), mAP (untargeted hashing
    attacks) or t-mAP (targeted)."""

    attack: str
    norm: str
    eps: float
    steps: int
    gradient: str
    accuracy: float
    n: int
    metric: str = "accuracy"
    ci_low: float | None = None  # the 95% interval of ``accuracy`` (None: not measured)
    ci_high: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def interval(self) -> str:
        """``[0.371, 0.452]``, or '' without one."""
        if self.ci_low is None or self.ci_high is None:
            return ""
        return f"[{self.ci_low:.3f}, {self.ci_high:.3f}]"


def accuracies(rows: Sequence[RobustnessRow], **match) -> list[float]:
    """The scores of the rows whose fields equal ``match`` (e.g. ``gradient="exact"``), in row
    order."""
    return [r.accuracy for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def csv_text(rows: Iterable, columns: Sequence[str] = COLUMNS) -> str:
    """The CSV text of ``rows`` (RobustnessRow or objects with ``as_dict``) with ``columns``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_dict() if hasattr(row, "as_dict") else dict(row))
    return out.getvalue()


def write_rows(rows: Iterable, path: str | Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write ``robustness.csv`` atomically (the file is complete or absent)."""
    path = Path(path)
    atomic_write(path, csv_text(rows, columns))
    return path


def _number(text: str | None, kind: type, path: Path, line: int, column: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or (kind is float and not math.isfinite(value) and column == "eps"):
        raise ResultsError(
            f"{path}, line {line}: cannot read {column}={text!r} as a number; the file is "
            "corrupt (rerun the attack to rewrite it)."
        )
    return value


def read_rows(path: str | Path) -> list[RobustnessRow]:
    """The rows of a ``robustness.csv``, strictly (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path} is not a text CSV file ({err.reason})") from err
    if not text.strip():
        raise ResultsError(f"{path} is empty: rerun the attack to rewrite it.")
    if not text.endswith("\n"):
        raise ResultsError(
            f"{path} does not end with a newline: the file is truncated (rerun the attack)."
        )
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ResultsError(
            f"{path} lacks the column(s) {', '.join(missing)}; a robustness.csv needs "
            f"{','.join(REQUIRED)}."
        )
    rows = []
    for line, raw in enumerate(reader, start=2):
        if None in raw or any(raw.get(c) is None for c in REQUIRED):
            raise ResultsError(f"{path}, line {line}: the row has the wrong number of fields.")
        rows.append(
            RobustnessRow(
                attack=raw["attack"],
                norm=raw["norm"],
                eps=_number(raw["eps"], float, path, line, "eps"),
                steps=_number(raw["steps"], int, path, line, "steps"),
                gradient=raw["gradient"],
                accuracy=_number(raw["accuracy"], float, path, line, "accuracy"),
                n=_number(raw["n"], int, path, line, "n"),
                metric=raw.get("metric") or "accuracy",
                ci_low=_optional(raw.get("ci_low"), path, line, "ci_low"),
                ci_high=_optional(raw.get("ci_high"), path, line, "ci_high"),
            )
        )
    return rows


def _optional(text: str | None, path: Path, line: int, column: str) -> float | None:
    return None if text in (None, "") else _number(text, float, path, line, column)


FIELDS = tuple(f.name for f in fields(RobustnessRow))


def eps_label(eps: float, norm: str) -> str:
    """An epsilon as people write it: L-inf in /255 units (``8/255``), L2 as a number."""
    if norm == "linf" and eps > 0:
        scaled = eps * 255
        return f"{scaled:.3g}/255"
    return f"{eps:.4g}"


def format_table(rows: Sequence[RobustnessRow]) -> str:
    """The rows as a plain-text table: one line per attack, norm, gradient source and metric,
    one column per epsilon (what ``sslr attack`` prints when it ends); the ``worst`` lines (the
    per-image worst case over every attack and gradient) first."""
    if not rows:
        return "(no rows)"
    lines: dict[tuple, dict[tuple, str]] = {}
    columns: dict[tuple, str] = {}
    for r in rows:
        cell = f"{r.accuracy:.4f}" + (f" {r.interval}" if r.interval else "")
        lines.setdefault((r.attack, r.norm, r.gradient, r.metric, r.steps), {})[(r.norm, r.eps)] = (
            cell
        )
        columns.setdefault((r.norm, r.eps), eps_label(r.eps, r.norm))
    order = sorted(columns, key=lambda c: (c[0] != "linf", c[0], c[1]))
    # the worst case (the number to quote) first
    lines = dict(sorted(lines.items(), key=lambda item: item[0][0] != "worst"))
    head = ["attack", "norm", "gradient", "metric", "steps", *(columns[c] for c in order)]
    body = [
        [a, nm, g, m, str(s), *(cells.get(c, "") for c in order)]
        for (a, nm, g, m, s), cells in lines.items()
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    text = [
        "  ".join(
            cell.rjust(w) if i >= 4 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [head, *body]
    ]
    said = {INTERVALS.get(r.metric, "") for r in rows if r.interval}
    heading = f"robustness (n = {rows[0].n}"
    if said:
        heading += f"; [95% interval: {', '.join(sorted(said))}]"
    return "\n".join([heading + ")", *text])


# How each metric's interval is made (see sslr.stats).
INTERVALS = {
    "accuracy": "Wilson",
    "mAP": "bootstrap over queries",
    "t-mAP": "bootstrap over queries",
}
