"""Run folders -> one comparison of the learning rules: markdown tables, a long-form CSV, plots.

`sslr report RUN_DIR... --out report.md` reads only what training and attacks leave in run
folders (docs/ARCHITECTURE.md, "Run folders"): `config.yaml` says what was run, `metrics.csv`
gives the clean accuracy (or mAP), `robustness.csv` the accuracy (or mAP) under attack. Each
(task, dataset, backbone[, bits]) becomes one table whose rows are the rules and whose cells
carry the difference to bp, the control. It works offline; logging to W&B is opt-in.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import yaml

RULE_ORDER = ("bp", "fa", "usf", "frsf", "brsf")
GRADIENT_ORDER = ("rule", "exact", "eot", "transfer", "none")
ROBUSTNESS_COLUMNS = ("attack", "norm", "eps", "steps", "gradient", "accuracy", "n")
CSV_COLUMNS = (
    *("task", "dataset", "backbone", "bits", "rule", "attack", "norm", "eps", "steps"),
    *("gradient", "metric", "value", "delta_vs_bp", "n", "run_dir"),
)
TASKS = {"ClassificationTask": "classification", "HashingTask": "hashing"}
# The clean metric per task, and the metrics.csv columns it is read from (test split first).
CLEAN_METRIC = {"classification": "acc", "hashing": "mAP"}
CLEAN_COLUMNS = {"classification": ("test/acc", "val/acc"), "hashing": ("test/mAP", "val/mAP")}
CLEAN = "clean"  # the `attack` of the clean measurement (eps 0) in records and report.csv
# Attacks report eps 0 too: clean accuracy on the attack's subset, the same number for every
# attack and gradient. The table shows it once, in this column, instead of once per attack.
SUBSET = "clean-subset"
MISSING = "–"
# Never run folders; W&B writes a config.yaml of its own under wandb/.
_SKIP_DIRS = {"wandb", "checkpoints", "__pycache__"}
_NORMS = {"inf": "Linf", "linf": "Linf", "l_inf": "Linf", "np.inf": "Linf", "infinity": "Linf"}
_NORMS |= {"2": "L2", "2.0": "L2", "l2": "L2", "1": "L1", "1.0": "L1", "l1": "L1"}


class ReportError(ValueError):
    """A problem with the run folders a user gave; the CLI prints it as one sentence, exit code 2."""


@dataclass(frozen=True)
class Measurement:
    """One number a run reports: its clean metric (attack "clean", eps 0) or one attack setting."""

    attack: str
    norm: str
    eps: float
    steps: int | None
    gradient: str
    metric: str
    value: float
    n: int | None = None

    @property
    def column(self) -> tuple:
        """What identifies this measurement's table column (every field but the value)."""
        return (self.attack, self.norm, self.metric, self.steps, self.eps, self.gradient)


@dataclass(frozen=True)
class Run:
    """One run folder, read: what was run (from config.yaml) and what it measured."""

    path: Path  # as found under the RUN_DIR given (relative when that was relative)
    task: str  # "classification" or "hashing"
    dataset: str  # the DataModule's class name, e.g. "Digits"
    backbone: str
    bits: int | None  # hashing code length; None for classification
    rule: str
    measurements: tuple[Measurement, ...]
    clean_source: str | None  # the metrics.csv column the clean value came from
    mtime: float  # newest of metrics.csv / robustness.csv (config.yaml when neither exists)
    has_results: bool  # metrics.csv or robustness.csv exists
    settings: dict  # flattened seed and model/data init_args, to explain duplicates
    wandb: tuple[str | None, str | None] = (None, None)  # its WandbLogger's (project, group)

    @property
    def group(self) -> tuple:
        """The table this run belongs to: (task, dataset, backbone, bits)."""
        return (self.task, self.dataset, self.backbone, self.bits)

    @property
    def key(self) -> tuple:
        """Runs with the same key are duplicates: the newest one is reported."""
        return (*self.group, self.rule)


@dataclass(frozen=True)
class Record:
    """One row of the long-form report.csv: one measurement of one rule, with its delta to bp."""

    task: str
    dataset: str
    backbone: str
    bits: int | None
    rule: str
    attack: str
    norm: str
    eps: float
    steps: int | None
    gradient: str
    metric: str
    value: float
    delta_vs_bp: float | None  # None when the table has no bp value for this column
    n: int | None
    run_dir: str

    @property
    def column(self) -> tuple:
        """The table column this record fills (as Measurement.column)."""
        return (self.attack, self.norm, self.metric, self.steps, self.eps, self.gradient)

    def as_row(self) -> list:
        """The record's fields in CSV_COLUMNS order (None for empty)."""
        return [getattr(self, name) for name in CSV_COLUMNS]


@dataclass(frozen=True)
class Table:
    """One comparison table: the rules of one (task, dataset, backbone[, bits]) side by side."""

    title: str
    header: list[str]
    rows: list[list[str]]  # formatted cells, first cell the rule
    run_dirs: dict[str, str]  # rule -> run folder
    figures: list[Path]


@dataclass(frozen=True)
class Report:
    """What `build_report` read and wrote."""

    runs: list[Run]  # the runs compared (the newest per task, dataset, backbone, bits, rule)
    records: list[Record]
    tables: list[Table]
    notes: list[str]  # duplicates resolved, skipped folders, clean values taken from val/
    markdown: str
    markdown_path: Path
    csv_path: Path
    figures: list[Path]


# --------------------------------------------------------------------------- formatting


def format_eps(eps: float) -> str:
    """Epsilon as people write it: `8/255` when it is a multiple of 1/255 below 1, else `0.5`."""
    if eps == 0:
        return "0"
    k = eps * 255
    if 0 < eps < 1 and abs(k - round(k)) < 1e-3:
        return f"{round(k)}/255"
    return f"{eps:g}"


def format_cell(value: float | None, delta: float | None) -> str:
    """`0.412 (+0.031)`; `0.412` when there is no delta; `–` when not measured."""
    if value is None:
        return MISSING
    if delta is None:
        return f"{value:.3f}"
    shown = f"{delta:+.3f}"
    return f"{value:.3f} ({'+0.000' if shown == '-0.000' else shown})"


def attack_label(attack: str, steps: int | None) -> str:
    """`pgd-10` for an iterative attack, `fgsm` for a one-step one."""
    return f"{attack}-{steps}" if steps is not None and steps > 1 else attack


def column_title(column: tuple, task: str) -> str:
    """A table header, e.g. `pgd-10 Linf ε=8/255 rule` (hashing adds the metric)."""
    attack, norm, metric, steps, eps, gradient = column
    if attack == CLEAN:
        return f"clean {metric}"
    if attack == SUBSET:
        return f"clean {metric} (attack subset)"
    title = f"{attack_label(attack, steps)} {norm} ε={format_eps(eps)} {gradient}"
    return f"{title} {metric}" if task == "hashing" else title


def group_title(group: tuple) -> str:
    task, dataset, backbone, bits = group
    parts = [task, dataset, backbone]
    if task == "hashing":
        parts.append(f"{'?' if bits is None else bits} bits")
    return " · ".join(parts)


def order_key(name: str, order: Sequence[str]) -> tuple:
    return (order.index(name), "") if name in order else (len(order), name)


def _column_order(column: tuple) -> tuple:
    attack, norm, metric, steps, eps, gradient = column
    return (
        0 if attack == CLEAN else 1 if attack == SUBSET else 2,
        attack,
        norm,
        metric,
        steps or 0,
        eps,
        order_key(gradient, GRADIENT_ORDER),
    )


def _group_order(group: tuple) -> tuple:
    task, dataset, backbone, bits = group
    return (task, dataset, backbone, -1 if bits is None else bits)


# --------------------------------------------------------------------------- reading run folders


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders holding a config.yaml at or below each path, in a stable order, each once."""
    found: dict[Path, Path] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise ReportError(
                f"{root} does not exist; give run folders or folders that contain them."
            )
        if not root.is_dir():
            raise ReportError(f"{root} is not a folder; give run folders or folders above them.")
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            if "config.yaml" in files:
                found.setdefault(Path(folder).resolve(), Path(folder))
    return list(found.values())


def _dig(mapping: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _flatten(value: object, prefix: str) -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat |= _flatten(item, f"{prefix}.{key}")
        return flat
    return {prefix: value}


def read_config(folder: Path) -> tuple[dict | None, str | None]:
    """The run's identity from config.yaml, or (None, why) when it is not an sslr run config."""
    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f" (line {mark.line + 1}: {problem})" if mark and problem else ""
        raise ReportError(f"{path} is not valid YAML{where}.") from None
    class_path = _dig(config, "model", "class_path")
    if not isinstance(class_path, str):
        return None, "its config.yaml has no model.class_path (not a LightningCLI run config)"
    task = TASKS.get(class_path.rsplit(".", 1)[-1])
    if task is None:
        return None, f"its model {class_path} is neither a ClassificationTask nor a HashingTask"
    init = _dig(config, "model", "init_args") or {}
    if not init.get("rule"):
        return None, "its config.yaml has no model.init_args.rule"
    loggers = _dig(config, "trainer", "logger")
    wandb = next(
        (
            (_dig(lg, "init_args", "project"), _dig(lg, "init_args", "group"))
            for lg in (loggers if isinstance(loggers, list) else [loggers])
            if str(_dig(lg, "class_path")).endswith("WandbLogger")
        ),
        (None, None),
    )
    data_class = _dig(config, "data", "class_path")
    bits = init.get("bits") if task == "hashing" else None
    identity = {
        "task": task,
        "dataset": data_class.rsplit(".", 1)[-1] if isinstance(data_class, str) else "unknown",
        "backbone": str(init.get("backbone", "unknown")),
        "bits": int(bits) if bits is not None else None,
        "rule": str(init["rule"]).lower(),
        "wandb": wandb,
        "settings": {
            "seed_everything": config.get("seed_everything"),
            **_flatten(init, "model.init_args"),
            **_flatten(_dig(config, "data", "init_args") or {}, "data.init_args"),
        },
    }
    return identity, None


def _number(text: str | None, kind: type, path: Path, line: int, column: str):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return kind(float(text)) if kind is int else kind(text)
    except (ValueError, OverflowError):
        raise ReportError(
            f"{path}, line {line}: cannot read {column}={text!r} as a number."
        ) from None


def read_clean(path: Path, task: str) -> tuple[float | None, str | None]:
    """The last logged test metric in a CSVLogger metrics.csv, else the last validation one."""
    if not path.is_file():
        return None, None
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    for column in CLEAN_COLUMNS[task]:
        if column not in (reader.fieldnames or []):
            continue
        last = None
        for line, row in enumerate(rows, start=2):
            value = _number(row.get(column), float, path, line, column)
            last = value if value is not None else last
        if last is not None:
            return last, column
    return None, None


def read_robustness(path: Path, task: str) -> list[Measurement]:
    """Measurements from robustness.csv; a setting measured twice keeps its last row."""
    if not path.is_file():
        return []
    required = (*ROBUSTNESS_COLUMNS, "metric") if task == "hashing" else ROBUSTNESS_COLUMNS
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ReportError(
                f"{path} lacks the column(s) {', '.join(missing)}; a {task} robustness.csv "
                f"needs {','.join(required)}."
            )
        found: dict[tuple, Measurement] = {}
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            line = reader.line_num
            norm = (row["norm"] or "").strip()
            measurement = Measurement(
                attack=(row["attack"] or "").strip().lower(),
                norm=_NORMS.get(norm.lower(), norm),
                eps=_number(row["eps"], float, path, line, "eps"),
                steps=_number(row["steps"], int, path, line, "steps"),
                gradient=(row["gradient"] or "").strip().lower(),
                metric=(row.get("metric") or "").strip() or CLEAN_METRIC[task],
                value=_number(row["accuracy"], float, path, line, "accuracy"),
                n=_number(row["n"], int, path, line, "n"),
            )
            if measurement.eps is None or measurement.value is None:
                raise ReportError(f"{path}, line {line}: eps and accuracy must not be empty.")
            found[measurement.column] = measurement
    return list(found.values())


def read_run(folder: Path) -> tuple[Run | None, str | None]:
    """One run folder, or (None, why it is not an sslr run)."""
    identity, why = read_config(folder)
    if identity is None:
        return None, why
    task = identity["task"]
    clean, source = read_clean(folder / "metrics.csv", task)
    measurements = []
    if clean is not None:
        measurements.append(Measurement(CLEAN, "", 0.0, None, "", CLEAN_METRIC[task], clean))
    measurements += read_robustness(folder / "robustness.csv", task)
    results = [p for p in (folder / "metrics.csv", folder / "robustness.csv") if p.is_file()]
    stamped = results or [folder / "config.yaml"]
    run = Run(
        path=folder,
        measurements=tuple(measurements),
        clean_source=source,
        mtime=max(p.stat().st_mtime for p in stamped),
        has_results=bool(results),
        **identity,
    )
    return run, None


def select_newest(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """One run per (task, dataset, backbone, bits, rule): the newest results; notes say which."""
    by_key: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    chosen, notes = [], []
    for same in by_key.values():
        same.sort(key=lambda r: (r.has_results, r.mtime, str(r.path)), reverse=True)
        newest = same[0]
        chosen.append(newest)
        if len(same) == 1:
            continue
        when = datetime.fromtimestamp(newest.mtime).strftime("%Y-%m-%d %H:%M:%S")
        ignored = ", ".join(f"`{r.path}`" for r in same[1:])
        differ = sorted(
            {
                k
                for r in same[1:]
                for k in newest.settings.keys() | r.settings.keys()
                if newest.settings.get(k) != r.settings.get(k)
            }
        )
        note = (
            f"{group_title(newest.group)} · {newest.rule}: {len(same)} run folders; using the "
            f"newest, `{newest.path}` (results of {when}), and ignoring {ignored}."
        )
        if differ:
            shown = ", ".join(differ[:6]) + (", …" if len(differ) > 6 else "")
            note += f" Their configs differ in {shown}."
        notes.append(note)
    return chosen, notes


# --------------------------------------------------------------------------- comparing


def build_records(runs: Sequence[Run]) -> list[Record]:
    """Every measurement of every run, with its difference to bp's value in the same column."""
    bp = {
        (run.group, m.column): m.value for run in runs if run.rule == "bp" for m in run.measurements
    }
    records = []
    for run in runs:
        for m in run.measurements:
            reference = bp.get((run.group, m.column))
            records.append(
                Record(
                    task=run.task,
                    dataset=run.dataset,
                    backbone=run.backbone,
                    bits=run.bits,
                    rule=run.rule,
                    delta_vs_bp=None if reference is None else m.value - reference,
                    run_dir=str(run.path),
                    **asdict(m),
                )
            )
    records.sort(
        key=lambda r: (
            _group_order((r.task, r.dataset, r.backbone, r.bits)),
            order_key(r.rule, RULE_ORDER),
            _column_order(r.column),
        )
    )
    return records


def _table_column(record: Record) -> tuple:
    """The record's column, with every attack's eps-0 row folded into one SUBSET column."""
    if record.attack != CLEAN and record.eps == 0:
        return (SUBSET, "", record.metric, None, 0.0, "")
    return record.column


def build_table(
    group: tuple, records: Sequence[Record], figures: list[Path]
) -> tuple[Table, list[str]]:
    """Rows: rules (bp, fa, usf, frsf, brsf, others); columns: clean, then each attack setting.

    Returns the table and notes: a rule whose eps-0 (attack subset) values disagree between
    attacks or gradient sources shows the first, and a note gives the range.
    """
    task = group[0]
    cells: dict[str, dict[tuple, list[Record]]] = defaultdict(lambda: defaultdict(list))
    run_dirs = {}
    for r in sorted(records, key=lambda r: _column_order(r.column)):
        cells[r.rule][_table_column(r)].append(r)
        run_dirs[r.rule] = r.run_dir
    columns = sorted({c for by_column in cells.values() for c in by_column}, key=_column_order)
    if not any(c[0] == CLEAN for c in columns):
        columns.insert(0, (CLEAN, "", CLEAN_METRIC[task], None, 0.0, ""))
    bp = {c: found[0].value for c, found in cells.get("bp", {}).items()}
    rows, notes = [], []
    for rule in sorted(cells, key=lambda name: order_key(name, RULE_ORDER)):
        row = [rule]
        for column in columns:
            found = cells[rule].get(column)
            if not found:
                row.append(MISSING)
                continue
            value = found[0].value
            delta = None if rule == "bp" or column not in bp else value - bp[column]
            row.append(format_cell(value, delta))
            low, high = min(r.value for r in found), max(r.value for r in found)
            if high - low > 1e-9:
                first = found[0]
                notes.append(
                    f"{group_title(group)} · {rule}: the clean {column[2]} on the attack subset "
                    f"(eps 0) differs between attacks or gradient sources ({low:.3f} to "
                    f"{high:.3f}); the table shows {attack_label(first.attack, first.steps)} "
                    f"{first.norm} {first.gradient}'s."
                )
        rows.append(row)
    header = ["rule", *(column_title(c, task) for c in columns)]
    return Table(group_title(group), header, rows, run_dirs, figures), notes


# --------------------------------------------------------------------------- writing

_LEGEND = (
    "Cells: {metric} (difference to bp, the control); {missing} not measured. Gradient sources: "
    "`rule` the model's own (pseudo-)gradient, `exact` the true gradient of the same weights, "
    "`eot` the rule's gradient averaged over brsf draws, `transfer` examples made on a BP "
    "surrogate, `none` a query-based attack."
)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(tables: Sequence[Table], notes: Sequence[str], runs: int, out: Path) -> str:
    """The report: a legend, notes, then per table its rows, run folders and figure links."""
    lines = [
        "# sslr report",
        "",
        f"{runs} run{'s' if runs != 1 else ''} compared. "
        + _LEGEND.format(metric="accuracy or mAP", missing=MISSING),
        "",
    ]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    for table in tables:
        lines += [f"## {table.title}", "", _md_row(table.header)]
        lines += [_md_row(["---", *["---:"] * (len(table.header) - 1)])]
        lines += [_md_row(row) for row in table.rows]
        lines += ["", "Run folders: " + ", ".join(f"{r} `{d}`" for r, d in table.run_dirs.items())]
        for figure in table.figures:
            link = os.path.relpath(figure, out.parent).replace(os.sep, "/")
            lines += ["", f"![{figure.stem}]({link})"]
        lines.append("")
    return "\n".join(lines)


def write_csv(records: Sequence[Record], path: Path) -> Path:
    """report.csv: one row per measurement (CSV_COLUMNS), empty where a field does not apply."""

    def text(value: object) -> str:
        if value is None:
            return ""
        return f"{value:.10g}" if isinstance(value, float) else str(value)

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([text(v) for v in record.as_row()] for record in records)
    return path


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Report:
    """Compare the runs at or below `run_dirs`; write `out` (markdown), its .csv and PNGs beside it.

    Raises ReportError (a one-sentence message) for a missing folder, no runs found or a
    malformed robustness.csv.
    """
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder; give a file name such as {out / 'report.md'}.")
    folders = find_run_dirs(run_dirs)
    where = ", ".join(str(p) for p in run_dirs)
    if not folders:
        raise ReportError(f"no run folders (folders with a config.yaml) found under {where}.")
    runs, skipped = [], []
    for folder in folders:
        run, why = read_run(folder)
        if run is None:
            skipped.append(f"`{folder}`: {why}")
        else:
            runs.append(run)
    if not runs:
        raise ReportError(f"no sslr runs found under {where}; skipped {'; '.join(skipped)}.")
    runs, notes = select_newest(runs)
    runs.sort(key=lambda r: (_group_order(r.group), order_key(r.rule, RULE_ORDER)))
    notes += [f"Skipped {why}." for why in skipped]
    for run in runs:
        if not run.measurements:
            notes.append(
                f"`{run.path}` has no results yet (no {' or '.join(CLEAN_COLUMNS[run.task])} "
                "in metrics.csv, no robustness.csv rows)."
            )
        elif run.clean_source and run.clean_source.startswith("val/"):
            notes.append(
                f"`{run.path}` logged no test metric: its clean value is the last "
                f"{run.clean_source}."
            )
    records = build_records(runs)
    without_bp = {r.group for r in runs} - {r.group for r in runs if r.rule == "bp"}
    notes += [
        f"{group_title(g)}: no bp run, so no deltas." for g in sorted(without_bp, key=_group_order)
    ]

    from sslr.report_plots import draw_figures  # matplotlib only when writing

    out.parent.mkdir(parents=True, exist_ok=True)
    by_group: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        by_group[(record.task, record.dataset, record.backbone, record.bits)].append(record)
    tables = []
    for group in sorted(by_group, key=_group_order):
        figures = draw_figures(group, by_group[group], out.parent, out.stem)
        table, table_notes = build_table(group, by_group[group], figures)
        tables.append(table)
        notes += table_notes
    markdown = render_markdown(tables, notes, len(runs), out)
    out.write_text(markdown)
    csv_path = write_csv(records, out.with_suffix(".csv"))
    figures = [f for table in tables for f in table.figures]
    return Report(runs, records, tables, notes, markdown, out, csv_path, figures)


def wandb_target(runs: Sequence[Run]) -> tuple[str, str]:
    """Default W&B (project, group) for the report: the runs' own, so it sits beside them.

    The project is the one every run's WandbLogger names (else "sslr"); the group likewise, else
    `<Dataset>/<backbone>` (the sslr CLI's group) when all runs share them, else "report".
    """
    projects = {run.wandb[0] for run in runs}
    groups = {run.wandb[1] for run in runs}
    places = {(run.dataset, run.backbone) for run in runs}
    project = projects.pop() if len(projects) == 1 and None not in projects else "sslr"
    if len(groups) == 1 and None not in groups:
        return project, groups.pop()
    return project, ("/".join(places.pop()) if len(places) == 1 else "report")


def log_to_wandb(
    report: Report,
    *,
    project: str | None = None,
    group: str | None = None,
    name: str | None = None,
) -> str:
    """Log the long-form table, each comparison table and each figure to one W&B run in `group`.

    Project and group default to `wandb_target(report.runs)`. Like sslr's WandbLogger, it logs
    offline (./wandb, for `wandb sync`) when no API key is configured and WANDB_MODE is unset;
    under WANDB_MODE=disabled, wandb.init returns a run that records nothing. Returns the mode.
    """
    import wandb

    default_project, default_group = wandb_target(report.runs)
    project, group = project or default_project, group or default_group
    mode = os.environ.get("WANDB_MODE")
    if not mode:
        from sslr.loggers import wandb_key_configured  # imports Lightning: only when needed

        mode = "online" if wandb_key_configured() else "offline"

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=name,
        mode="offline" if mode == "offline" else None,
        config={"runs": [str(r.path) for r in report.runs], "out": str(report.markdown_path)},
    )
    try:
        payload = {
            "report/records": wandb.Table(
                columns=list(CSV_COLUMNS), data=[r.as_row() for r in report.records]
            )
        }
        for table in report.tables:
            key = "/".join(re.sub(r"[^A-Za-z0-9.-]+", "_", p) for p in table.title.split(" · "))
            payload[f"report/{key}"] = wandb.Table(columns=table.header, data=table.rows)
        for figure in report.figures:
            payload[f"figures/{figure.stem}"] = wandb.Image(str(figure))
        run.log(payload)
    finally:
        run.finish()
    return mode


def main_report(argv: list[str] | None = None) -> int:
    """`sslr report RUN_DIR... [--out report.md] [--wandb ...]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="sslr report",
        description="Compare run folders (config.yaml, metrics.csv, robustness.csv): one "
        "markdown table per task, dataset and backbone, a long-form CSV and robustness plots.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder, or a folder above run folders"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report.md"),
        help="the markdown file; the CSV (same name, .csv) and the PNGs go beside it",
    )
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B")
    parser.add_argument("--wandb-project", help="W&B project (default: the runs' own, else sslr)")
    parser.add_argument(
        "--wandb-group",
        help="W&B group (default: the runs' own, else <Dataset>/<backbone> when all runs share "
        "them, else report)",
    )
    parser.add_argument("--wandb-name", default=None, help="W&B run name (default: W&B's)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 0
    try:
        report = build_report(args.run_dirs, args.out)
    except ReportError as exc:
        print(f"sslr report: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sslr report: compared {len(report.runs)} runs in {len(report.tables)} tables: wrote "
        f"{report.markdown_path}, {report.csv_path} and {len(report.figures)} figures"
        + (f" ({len(report.notes)} notes in the report)." if report.notes else ".")
    )
    if args.wandb:
        try:
            mode = log_to_wandb(
                report, project=args.wandb_project, group=args.wandb_group, name=args.wandb_name
            )
        except Exception as exc:  # an edge: W&B's own failures (no key, no network)
            print(
                f"sslr report: error: logging to W&B failed ({exc}); the report files are written.",
                file=sys.stderr,
            )
            return 1
        if mode == "offline":
            print("sslr report: logged to W&B offline (./wandb); upload with `wandb sync`.")
    return 0
