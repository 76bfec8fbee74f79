"""Run folders -> one comparison of the learning rules: markdown tables, a long-form CSV, plots.

Reading lives in :mod:`sslr.report_records` (records, run folders, names and order), the
figures in :mod:`sslr.report_plots`; this module compares, writes and logs to W&B.

`sslr report RUN_DIR... --out report.md` reads only what training and attacks leave in run
folders (docs/ARCHITECTURE.md, "Run folders"): `config.yaml` says what was run, `metrics.csv`
(the run's own or, preferred, that of `sslr test` in `test-best/`) gives the clean accuracy (or
mAP), `robustness.csv` the accuracy (or mAP) under attack; an evaluation folder inside a run is
part of that run, never a run of its own (:mod:`sslr.report_records`). report.csv names the file
each number came from (`source`, relative to `run_dir`). Each
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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sslr.atomic import atomic_open, atomic_write
from sslr.report_records import (  # noqa: F401  (re-exported: the report's public names)
    CLEAN,
    CLEAN_COLUMNS,
    CLEAN_METRIC,
    CSV_COLUMNS,
    EVALUATION_FOLDER,
    GRADIENT_ORDER,
    MISSING,
    RULE_ORDER,
    SUBSET,
    Measurement,
    Record,
    Report,
    ReportError,
    Run,
    Table,
    attack_label,
    column_order,
    column_title,
    evaluation_metrics,
    find_clean,
    find_run_dirs,
    format_cell,
    format_eps,
    group_order,
    group_title,
    masking_summary,
    order_key,
    part_of_run,
    read_clean,
    read_config,
    read_robustness,
    read_run,
    select_newest,
)

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
            group_order((r.task, r.dataset, r.backbone, r.bits)),
            order_key(r.rule, RULE_ORDER),
            column_order(r.column),
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
    for r in sorted(records, key=lambda r: column_order(r.column)):
        cells[r.rule][_table_column(r)].append(r)
        run_dirs[r.rule] = r.run_dir
    columns = sorted({c for by_column in cells.values() for c in by_column}, key=column_order)
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

    with atomic_open(path, "w", newline="") as handle:
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
    runs.sort(key=lambda r: (group_order(r.group), order_key(r.rule, RULE_ORDER)))
    notes += [f"Skipped {why}." for why in skipped]
    for run in runs:
        for line in masking_summary(run.path, run.sources):
            notes.append(f"{group_title(run.group)} · {run.rule}: {line}.")
        # Where the numbers came from, when not only the run's own metrics.csv and
        # robustness.csv: an evaluation folder (test-best/) or attack folders.
        elsewhere = run.clean_file not in (None, "metrics.csv")
        if elsewhere or any(source.startswith("attacks/") for source in run.sources):
            used = [f"{run.clean_source} of `{run.clean_file}`"] if run.clean_file else []
            if run.sources:
                used.append(", ".join(f"`{source}`" for source in run.sources))
            notes.append(f"`{run.path}`: read {' and '.join(used)}.")
        test, val = CLEAN_COLUMNS[run.task]
        if not run.measurements:
            notes.append(
                f"`{run.path}` has no results yet (no {test} or {val} in its metrics.csv or its "
                "test-*/ and validate-*/ folders, no robustness.csv rows)."
            )
        elif run.clean_source == val:
            notes.append(
                f"`{run.path}` logged no test metric (no {test} in its metrics.csv or a test-*/ "
                f"folder): its clean value is the last {val} of `{run.clean_file}`."
            )
    records = build_records(runs)
    without_bp = {r.group for r in runs} - {r.group for r in runs if r.rule == "bp"}
    notes += [
        f"{group_title(g)}: no bp run, so no deltas." for g in sorted(without_bp, key=group_order)
    ]

    from sslr.report_plots import draw_figures  # matplotlib only when writing

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, a read-only folder: before any file is written
        raise ReportError(
            f"Cannot write the report to {out}: {err.strerror} ({err.filename}); give --out a "
            "path in a folder you can write to"
        ) from err
    by_group: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        by_group[(record.task, record.dataset, record.backbone, record.bits)].append(record)
    tables = []
    for group in sorted(by_group, key=group_order):
        figures = draw_figures(group, by_group[group], out.parent, out.stem)
        table, table_notes = build_table(group, by_group[group], figures)
        tables.append(table)
        notes += table_notes
    markdown = render_markdown(tables, notes, len(runs), out)
    atomic_write(out, markdown)
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
