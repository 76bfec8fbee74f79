"""Run folders -> one comparison of the learning rules: a summary per task and backbone, paired
tests against bp, per-attack tables, the long-form CSVs and plots.

Reading lives in :mod:`sslr.report_records` (records, run folders, names and order), the
figures in :mod:`sslr.report_plots`, the statistics in :mod:`sslr.stats`; this module compares,
writes and logs to W&B.

`sslr report RUN_DIR... --out report.md` reads only what training and attacks leave in run
folders (docs/ARCHITECTURE.md, "Run folders"): `config.yaml` says what was run (and its seed,
`seed_everything`), `metrics.csv` (the run's own or, preferred, that of `sslr test` in
`test-best/`) gives the clean accuracy (or mAP), `robustness.csv` the accuracy (or mAP) under
attack with its 95% interval, `outcomes.json` beside it the per-image outcomes that paired
comparisons are made from, `masking.csv` the gradient-masking verdict; an evaluation folder
inside a run is part of that run, never a run of its own (:mod:`sslr.report_records`).

What it writes, beside `--out`:

- `report.md`: per (task, dataset, backbone[, bits]) a summary table (rule, seeds, clean value,
  the worst case at up to three of the largest eps with its interval, the paired difference to
  bp, masking flags), then the paired comparisons, one table per attack, and the notes.
- `report.csv`: one row per measurement (long form), naming the file it came from.
- `paired.csv` (`<stem>_paired.csv` for another `--out` name than report.md): one row per
  paired comparison of two rules' worst cases on the same images, per seed.
- one figure per (task, dataset, backbone[, bits], norm[, metric]), a panel per attack.

Runs that differ only in their seed are the seeds of one rule: the summary shows mean ± sd over
seeds, the paired tests are per seed. Every number shown is read from these files (a mean over
seeds or a difference of two of them at most), never recomputed from anything else.
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
from pathlib import Path

from sslr.atomic import atomic_open, atomic_write
from sslr.outcomes import FILE as OUTCOMES_FILE
from sslr.outcomes import Outcomes, read_outcomes
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
    WORST,
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
    masking_flags,
    masking_summary,
    norm_name,
    order_key,
    outcomes_file,
    part_of_run,
    read_clean,
    read_config,
    read_robustness,
    read_run,
    report_metric,
    run_label,
    seed_key,
    select_newest,
    several_seeds,
)
from sslr.results import ResultsError
from sslr.stats import mean_and_spread, paired

CONTROL = "bp"  # every rule is compared with it
ALPHA = 0.05  # a paired difference is significant below this p-value
SUMMARY_EPS = 3  # a summary table shows the worst case at this many of the largest eps at most
ROOM = 6  # a per-attack table shows intervals when it has at most this many value columns
BOOTSTRAP_SEED = 0  # the paired bootstrap's generator: the same files give the same interval
UNPAIRED = "†"  # marks a difference of two values that could not be paired image by image
NORM_ORDER = ("Linf", "L2", "L1")
PAIRED_COLUMNS = (
    *("task", "backbone", "dataset", "bits", "seed", "first", "second", "norm", "eps"),
    *("metric", "first_value", "second_value", "difference", "ci_low", "ci_high", "p_value"),
    *("test", "n", "only_first", "only_second"),
)


# --------------------------------------------------------------------------- formatting


def signed(value: float) -> str:
    """`+0.021`, `-0.010`; never `-0.000`."""
    text = f"{value:+.3f}"
    return "+0.000" if text == "-0.000" else text


def format_p(p: float) -> str:
    """`p = 0.21`, `p = 0.125`, `p < 0.001`."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def format_value(value: float, low: float | None = None, high: float | None = None) -> str:
    """`0.412 [0.345, 0.481]`, or `0.412` without an interval."""
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def format_spread(values: Sequence[float], of: int) -> str:
    """One value as itself, several as `mean ± sd` (sample sd over seeds); `(k of m seeds)`
    when only k of the rule's m seeds have it."""
    mean, sd = mean_and_spread(values)
    text = f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {sd:.3f}"
    return text if len(values) == of else f"{text} ({len(values)} of {of} seeds)"


def cell_label(norm: str, metric: str, eps: float, task: str) -> str:
    """`Linf ε=8/255`; hashing adds the metric (`Linf ε=8/255 t-mAP`)."""
    label = f"{norm} ε={format_eps(eps)}"
    return f"{label} {metric}" if task == "hashing" else label


def _norm_key(norm: str) -> tuple:
    return order_key(norm, NORM_ORDER)


def _metric_key(metric: str, task: str) -> tuple:
    return order_key(metric, (CLEAN_METRIC[task], "t-mAP"))


def _cell_key(cell: tuple, task: str) -> tuple:
    norm, metric, eps = cell
    return (_norm_key(norm), _metric_key(metric, task), eps)


def _eps_key(eps: float) -> float:
    return round(eps, 9)


def _worst(run: Run) -> dict[tuple, Measurement]:
    """The run's worst-case measurements by (norm, metric, eps)."""
    return {(m.norm, m.metric, _eps_key(m.eps)): m for m in run.measurements if m.attack == WORST}


# --------------------------------------------------------------------------- comparing


def build_records(runs: Sequence[Run]) -> list[Record]:
    """Every measurement of every run, with its difference to the value of bp's run of the same
    seed in the same column."""
    bp = {
        (run.group, run.seed, m.column): m.value
        for run in runs
        if run.rule == CONTROL
        for m in run.measurements
    }
    records = []
    for run in runs:
        for m in run.measurements:
            reference = bp.get((run.group, run.seed, m.column))
            records.append(
                Record(
                    task=run.task,
                    dataset=run.dataset,
                    backbone=run.backbone,
                    bits=run.bits,
                    rule=run.rule,
                    seed=run.seed,
                    delta_vs_bp=None if reference is None else m.value - reference,
                    run_dir=str(run.path),
                    **asdict(m),
                )
            )
    records.sort(
        key=lambda r: (
            group_order((r.task, r.dataset, r.backbone, r.bits)),
            order_key(r.rule, RULE_ORDER),
            seed_key(r.seed),
            column_order(r.column),
        )
    )
    return records


@dataclass(frozen=True)
class Comparison:
    """One paired comparison (a row of paired.csv): the worst case of rule ``first`` minus that
    of rule ``second`` at one norm, metric and eps, both runs of one seed attacked on the same
    images; the difference's 95% paired-bootstrap interval and p-value (:func:`sslr.stats.paired`
    on the two runs' outcomes.json)."""

    task: str
    backbone: str
    dataset: str
    bits: int | None
    seed: int | None
    first: str
    second: str
    norm: str
    eps: float
    metric: str
    first_value: float
    second_value: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    n: int
    only_first: int | None
    only_second: int | None
    seeded: bool = False  # the rules have several seeds: the lines name this one's
    explicit: bool = False  # asked for with --pair

    @property
    def group(self) -> tuple:
        return (self.task, self.dataset, self.backbone, self.bits)

    @property
    def cell(self) -> tuple:
        return (self.norm, self.metric, _eps_key(self.eps))

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_row(self) -> list:
        return [getattr(self, name) for name in PAIRED_COLUMNS]

    def line(self) -> str:
        """`usf - bp, worst Linf 8/255: +0.021 [-0.010, 0.052], exact McNemar p = 0.21
        (n = 200)` (`, seed 1` after the rules when they have several seeds)."""
        seed = f", seed {self.seed}" if self.seeded else ""
        where = cell_label(self.norm, self.metric, self.eps, self.task).replace("ε=", "")
        return (
            f"{self.first} - {self.second}{seed}, worst {where}: {signed(self.difference)} "
            f"[{self.ci_low:.3f}, {self.ci_high:.3f}], {self.test} {format_p(self.p_value)} "
            f"(n = {self.n})"
        )


class _Outcomes:
    """outcomes.json files, each read once (None where there is none)."""

    def __init__(self) -> None:
        self._read: dict[Path, Outcomes | None] = {}

    def __call__(self, path: Path) -> Outcomes | None:
        if path not in self._read:
            try:
                self._read[path] = read_outcomes(path) if path.is_file() else None
            except ResultsError as err:
                raise ReportError(str(err)) from None
        return self._read[path]


def _cell_values(outcomes: Outcomes, m: Measurement, task: str) -> tuple[str, list] | None:
    """The per-image values of the worst-case cell of ``m`` in ``outcomes`` (its metric as the
    file names it), or None when the file has no such cell."""
    for (attack, norm, _gradient, eps, metric), values in outcomes.cells.items():
        if (
            attack.strip().lower() == WORST
            and norm_name(norm) == m.norm
            and abs(eps - m.eps) <= 1e-9
            and report_metric(metric, task) == m.metric
        ):
            return metric, values
    return None


@dataclass(frozen=True)
class _Problem:
    """Why two runs could not be paired: `outcomes` (``runs`` lack outcomes.json), `index`
    (attacked on different images), `worst` (no worst case at the same norm and eps), `cells`
    (outcomes.json has none of the cells)."""

    kind: str
    runs: tuple[Run, ...]


def compare_runs(
    first: Run, second: Run, read: _Outcomes, seeded: bool = False, explicit: bool = False
) -> tuple[list[Comparison], _Problem | None, list[str]]:
    """The paired comparisons of two runs' worst cases (first - second), per norm, metric and
    eps they share; or why there are none; and notes on single cells left unpaired."""
    mine, theirs = _worst(first), _worst(second)
    shared = sorted(mine.keys() & theirs.keys(), key=lambda c: _cell_key(c, first.task))
    if not shared:
        return [], _Problem("worst", (first, second)), []
    found = {}
    for run, cells in ((first, mine), (second, theirs)):
        for cell in shared:
            found[run.path, cell] = read(outcomes_file(run, cells[cell].source))
    lacking = tuple(
        run for run in (first, second) if any(found[run.path, c] is None for c in shared)
    )
    if lacking:
        return [], _Problem("outcomes", lacking), []
    comparisons, notes = [], []
    for cell in shared:
        a, b = found[first.path, cell], found[second.path, cell]
        if a.index != b.index:
            return [], _Problem("index", (first, second)), []
        got = [(run, _cell_values(o, cells[cell], run.task)) for run, o, cells in
               ((first, a, mine), (second, b, theirs))]  # fmt: skip
        where = cell_label(*cell[:2], mine[cell].eps, first.task)
        missing = [run for run, values in got if values is None]
        if missing:
            notes.append(
                f"{run_label(missing[0], seeded)}: its outcomes.json has no per-image values of "
                f"the worst case {where}, so it is not paired there."
            )
            continue
        (metric, values), (_, other) = got[0][1], got[1][1]
        result = paired(values, other, metric, seed=BOOTSTRAP_SEED)
        off = [
            (run, m.value, value)
            for run, m, value in ((first, mine[cell], result.first),
                                  (second, theirs[cell], result.second))
            if abs(m.value - value) > 1e-5
        ]  # fmt: skip
        if off:
            run, value, mean = off[0]
            notes.append(
                f"{run_label(run, seeded)}: the worst case {where} is {value:.4f} in "
                f"robustness.csv but {mean:.4f} in its outcomes.json (files of different "
                "attacks?), so it is not paired there."
            )
            continue
        comparisons.append(
            Comparison(
                task=first.task, backbone=first.backbone, dataset=first.dataset, bits=first.bits,
                seed=first.seed, first=first.rule, second=second.rule, norm=cell[0],
                eps=mine[cell].eps, metric=cell[1], first_value=result.first,
                second_value=result.second, difference=result.difference, ci_low=result.low,
                ci_high=result.high, p_value=result.p_value, test=result.test, n=result.n,
                only_first=result.only_first, only_second=result.only_second, seeded=seeded,
                explicit=explicit,
            )
        )  # fmt: skip
    if not comparisons:
        return [], _Problem("cells", (first, second)), notes
    return comparisons, None, notes


def _refusal(pair: tuple[str, str], problem: _Problem) -> str:
    """The one-line error for an explicit --pair that cannot be paired."""
    asked = f"--pair {pair[0]} {pair[1]}"
    paths = " and ".join(f"`{run.path}`" for run in problem.runs)
    if problem.kind == "outcomes":
        return (
            f"{asked}: {paths} {'has' if len(problem.runs) == 1 else 'have'} no per-image "
            f"outcomes ({OUTCOMES_FILE} beside robustness.csv) for the worst case: an attack "
            "from before they were written; rerun it to pair them."
        )
    if problem.kind == "index":
        return (
            f"{asked}: {paths} were attacked on different images (the index of their "
            f"{OUTCOMES_FILE} differs), so they cannot be paired."
        )
    if problem.kind == "worst":
        return f"{asked}: {paths} have no worst case (attack worst) at the same norm and eps."
    return f"{asked}: the {OUTCOMES_FILE} of {paths} hold none of the worst-case cells they share."


def _has_outcomes(run: Run) -> bool:
    """Whether outcomes.json lies beside the results of the run's worst case (of every attack
    result, when it has no worst case)."""
    attacked = {m.source for m in run.measurements if m.attack == WORST} or {
        m.source for m in run.measurements if m.attack != CLEAN
    }
    return all(outcomes_file(run, source).is_file() for source in attacked)


def pair_runs(
    runs: Sequence[Run], pairs: Iterable[tuple[str, str]] = ()
) -> tuple[list[Comparison], list[str]]:
    """Every rule against bp, and each of ``pairs`` (first, second), within each task, dataset,
    backbone[, bits] and seed, from the runs' outcomes.json; and notes.

    An automatic pair that cannot be paired is a note (one for all runs without outcomes.json);
    an explicit one is a ReportError: a rule no run has, two rules never in the same table and
    seed, no per-image outcomes, different images."""
    pairs = list(dict.fromkeys((a.lower(), b.lower()) for a, b in pairs))
    slots: dict[tuple, dict[str, Run]] = defaultdict(dict)
    for run in runs:
        slots[(run.group, run.seed)][run.rule] = run
    rules = sorted({run.rule for run in runs}, key=lambda r: order_key(r, RULE_ORDER))
    for a, b in pairs:
        if a == b:
            raise ReportError(f"--pair {a} {b} compares a rule with itself; name two rules.")
        for rule in (a, b):
            if rule not in rules:
                raise ReportError(
                    f"--pair {a} {b}: no run of rule {rule} found (the runs' rules: "
                    f"{', '.join(rules)})."
                )
        if not any(a in slot and b in slot for slot in slots.values()):
            raise ReportError(
                f"--pair {a} {b}: no task, dataset, backbone and seed has runs of both {a} and {b}."
            )
    seeded = several_seeds(runs)
    read = _Outcomes()
    comparisons, notes, in_pairs = [], [], set()
    for group, seed in sorted(slots, key=lambda k: (group_order(k[0]), seed_key(k[1]))):
        slot = slots[group, seed]
        ordered = sorted(slot, key=lambda r: order_key(r, RULE_ORDER))
        wanted = {(r, CONTROL): False for r in ordered if r != CONTROL and CONTROL in slot}
        wanted |= {(a, b): True for a, b in pairs if a in slot and b in slot}
        for (a, b), explicit in wanted.items():
            first, second = slot[a], slot[b]
            in_pairs |= {first.path, second.path}
            several = (group, a) in seeded or (group, b) in seeded
            found, problem, cell_notes = compare_runs(first, second, read, several, explicit)
            comparisons += found
            notes += cell_notes
            if problem is None:
                continue
            if explicit:
                raise ReportError(_refusal((a, b), problem))
            if problem.kind == "index":
                where = group_title(group) + (f" · seed {seed}" if several else "")
                notes.append(
                    f"{where}: {a} and {b} were attacked "
                    f"on different images (the index of their {OUTCOMES_FILE} differs), so they "
                    f"are not paired; the summary's difference is that of the two values "
                    f"({UNPAIRED})."
                )
    lacking = [run for run in runs if run.path in in_pairs and not _has_outcomes(run)]
    if lacking:
        notes.append(
            f"No per-image outcomes ({OUTCOMES_FILE}, written by attacks since paired tests "
            f"exist) beside the attack results of {', '.join(f'`{r.path}`' for r in lacking)}: "
            f"reported as before, without paired comparisons (differences marked {UNPAIRED})."
        )
    # Per table: each rule against bp (in rule order), then the --pair ones (in the order
    # asked); per pair its seeds, per seed its cells.
    rank = {pair: k for k, pair in enumerate(pairs)}
    comparisons.sort(
        key=lambda c: (
            group_order(c.group),
            rank.get((c.first, c.second), -1) if c.explicit else -1,
            order_key(c.first, RULE_ORDER),
            order_key(c.second, RULE_ORDER),
            seed_key(c.seed),
            _cell_key(c.cell, c.task),
        )
    )
    return comparisons, notes


# --------------------------------------------------------------------------- the summary


def summary_cells(runs: Sequence[Run], task: str, at_most: int = SUMMARY_EPS) -> list[tuple]:
    """The worst-case cells (norm, metric, eps) a summary shows: the largest eps above 0, taken
    in turn from each norm and metric, ``at_most`` of them; in display order."""
    by_kind: dict[tuple, set] = defaultdict(set)
    for run in runs:
        for norm, metric, eps in _worst(run):
            if eps > 0:
                by_kind[norm, metric].add(eps)
    queues = [
        [(*kind, eps) for eps in sorted(by_kind[kind], reverse=True)]
        for kind in sorted(by_kind, key=lambda k: (_norm_key(k[0]), _metric_key(k[1], task)))
    ]
    chosen: list[tuple] = []
    while len(chosen) < at_most and any(queues):
        for queue in queues:
            if queue and len(chosen) < at_most:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda c: _cell_key(c, task))


def _delta_cell(rule_runs: Sequence[Run], bp: dict, comparisons: dict, cell: tuple) -> str:
    """The difference to bp at ``cell``: paired (interval, p) where outcomes allow, else the
    difference of the two values (†); over several seeds mean ± sd and the significant count."""
    paired_found, differences, unpaired = [], [], False
    for run in rule_runs:
        found = comparisons.get((run.seed, run.rule, cell))
        if found is not None:
            paired_found.append(found)
            differences.append(found.difference)
            continue
        mine, control = _worst(run).get(cell), bp.get(run.seed)
        theirs = None if control is None else _worst(control).get(cell)
        if mine is not None and theirs is not None:
            differences.append(mine.value - theirs.value)
            unpaired = True
    if not differences:
        return MISSING
    if len(rule_runs) == 1:
        if paired_found:
            (c,) = paired_found
            return (
                f"{signed(c.difference)} [{c.ci_low:.3f}, {c.ci_high:.3f}], {format_p(c.p_value)}"
            )
        return f"{signed(differences[0])} {UNPAIRED}"
    mean, sd = mean_and_spread(differences)
    text = f"{signed(mean)} ± {sd:.3f}" if len(differences) > 1 else signed(mean)
    if paired_found:
        significant = sum(c.significant for c in paired_found)
        text += f", p < {ALPHA:g} in {significant}/{len(paired_found)}"
    if unpaired:
        text += f" {UNPAIRED}"
    if len(differences) < len(rule_runs):
        text += f" ({len(differences)} of {len(rule_runs)} seeds)"
    return text


def _masking_cell(rule_runs: Sequence[Run]) -> str:
    """The flagged checks of the runs' masking.csv (`none`; `–` without masking.csv); over
    several seeds each name with the count of seeds that flagged it."""
    found = [
        flags for run in rule_runs if (flags := masking_flags(run.path, run.sources)) is not None
    ]
    if not found:
        return MISSING
    names = list(dict.fromkeys(name for flags in found for name in flags))
    if not names:
        return "none"
    if len(rule_runs) == 1:
        return ", ".join(names)
    return ", ".join(f"{name} ({sum(name in f for f in found)}/{len(found)})" for name in names)


def summary_table(group: tuple, runs: Sequence[Run], comparisons: Sequence[Comparison]) -> Table:
    """One row per rule: seeds, clean value, the worst case at the summary's eps with its
    interval (mean ± sd over seeds), the difference to bp, the masking flags."""
    task = group[0]
    cells = summary_cells(runs, task)
    by_rule: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: seed_key(r.seed)):
        by_rule[run.rule].append(run)
    bp = {run.seed: run for run in by_rule.get(CONTROL, [])}
    against_bp = {
        (c.seed, c.first, c.cell): c
        for c in comparisons
        if c.second == CONTROL and c.group == group
    }
    header = ["rule", "seeds", f"clean {CLEAN_METRIC[task]}"]
    for norm, metric, eps in cells:
        header.append(f"worst {cell_label(norm, metric, eps, task)}")
        if bp:
            header.append(f"Δ bp {cell_label(norm, metric, eps, task)}")
    header.append("masking flags")
    rows, run_dirs = [], {}
    seeded = several_seeds(runs)
    for rule in sorted(by_rule, key=lambda r: order_key(r, RULE_ORDER)):
        rule_runs = by_rule[rule]
        clean = [m.value for run in rule_runs for m in run.measurements if m.attack == CLEAN]
        row = [
            rule,
            str(len(rule_runs)),
            format_spread(clean, len(rule_runs)) if clean else MISSING,
        ]
        for cell in cells:
            found = [w[cell] for run in rule_runs if cell in (w := _worst(run))]
            if not found:
                row.append(MISSING)
            elif len(rule_runs) == 1:
                row.append(format_value(found[0].value, found[0].ci_low, found[0].ci_high))
            else:
                row.append(format_spread([m.value for m in found], len(rule_runs)))
            if bp:
                control = rule == CONTROL
                row.append("control" if control else _delta_cell(rule_runs, bp, against_bp, cell))
        row.append(_masking_cell(rule_runs))
        rows.append(row)
        for run in rule_runs:
            label = f"{rule} seed {run.seed}" if (group, rule) in seeded else rule
            run_dirs[label] = str(run.path)
    return Table(group_title(group), header, rows, run_dirs, [])


# --------------------------------------------------------------------------- per-attack tables


def _attack_of(record: Record) -> tuple:
    return (record.attack, record.steps, record.norm, record.metric)


def _attack_order(key: tuple, task: str) -> tuple:
    attack, steps, norm, metric = key
    return (attack != WORST, attack, _norm_key(norm), _metric_key(metric, task), steps or 0)


def attack_tables(group: tuple, records: Sequence[Record]) -> tuple[list[Table], list[str]]:
    """One table per attack (attack, steps, norm[, metric]), the worst case first: rows the
    rules (and seeds, when a rule has several), columns the clean value on the attack subset
    (eps 0) and each eps x gradient source; with intervals where there is room (``ROOM``).

    Notes: a run whose eps-0 values disagree between gradient sources shows the first."""
    task = group[0]
    attacked = [r for r in records if r.attack != CLEAN]
    seeds: dict[str, set] = defaultdict(set)
    for r in records:
        seeds[r.rule].add(r.seed)
    with_seed = any(len(s) > 1 for s in seeds.values())
    by_attack: dict[tuple, list[Record]] = defaultdict(list)
    for r in attacked:
        by_attack[_attack_of(r)].append(r)
    tables, notes = [], []
    for key in sorted(by_attack, key=lambda k: _attack_order(k, task)):
        attack, steps, norm, metric = key
        found = by_attack[key]
        gradients = sorted({r.gradient for r in found}, key=lambda g: order_key(g, GRADIENT_ORDER))
        columns = sorted(
            {(_eps_key(r.eps), r.gradient) for r in found if r.eps != 0},
            key=lambda c: (c[0], order_key(c[1], GRADIENT_ORDER)),
        )
        zero = any(r.eps == 0 for r in found)
        room = len(columns) + zero <= ROOM
        cells: dict[tuple, dict] = defaultdict(dict)
        zeros: dict[tuple, list[Record]] = defaultdict(list)
        for r in sorted(found, key=lambda r: order_key(r.gradient, GRADIENT_ORDER)):
            row = (r.rule, r.seed)
            if r.eps == 0:
                zeros[row].append(r)
            else:
                cells[row][_eps_key(r.eps), r.gradient] = r
        label = attack_label(attack, steps) + f" {norm}"
        title = f"{group_title(group)} · {label}" + (f" · {metric}" if task == "hashing" else "")
        header = ["rule", *(["seed"] if with_seed else [])]
        header += [f"clean {metric} (ε=0)"] if zero else []
        header += [
            f"ε={format_eps(eps)}" + (f" {gradient}" if len(gradients) > 1 else "")
            for eps, gradient in columns
        ]
        rows, run_dirs = [], {}
        keys = {*cells, *zeros}
        for rule, seed in sorted(keys, key=lambda k: (order_key(k[0], RULE_ORDER), seed_key(k[1]))):
            row = [rule, *([MISSING if seed is None else str(seed)] if with_seed else [])]
            shown = [*(zeros[rule, seed][:1] if zero else []),
                     *(cells[rule, seed].get(c) for c in columns)]  # fmt: skip
            if zero and not zeros[rule, seed]:
                shown.insert(0, None)
            for r in shown:
                if r is None:
                    row.append(MISSING)
                else:
                    row.append(format_value(r.value, *((r.ci_low, r.ci_high) if room else ())))
            rows.append(row)
            first = (zeros[rule, seed] or [None])[0] or next(iter(cells[rule, seed].values()))
            run_dirs[f"{rule} seed {seed}" if with_seed else rule] = first.run_dir
            values = [r.value for r in zeros[rule, seed]]
            if values and max(values) - min(values) > 1e-9:
                who = f"{group_title(group)} · {rule}" + (f" · seed {seed}" if with_seed else "")
                notes.append(
                    f"{who}: the clean {metric} on the attack subset (eps 0) differs between the "
                    f"gradient sources of {label} ({min(values):.3f} to {max(values):.3f}); the "
                    f"table shows {zeros[rule, seed][0].gradient}'s."
                )
        caption = ""
        if not room and any(r.ci_low is not None for r in found):
            caption = (
                "Too many columns for intervals here: each value's 95% interval is in report.csv."
            )
        tables.append(Table(title, header, rows, run_dirs, [], caption))
    return tables, notes


# --------------------------------------------------------------------------- writing

_LEGEND = (
    "The summaries above: per rule, the clean {clean} (test split) and the worst case (per "
    "image, over every attack and gradient source that ran: the number to quote) at up to "
    "{at_most} of the largest eps, with its 95% interval (Wilson for accuracy, a bootstrap "
    "over queries for mAP); `Δ bp`: the rule minus bp, the control, on the same images, with "
    "its 95% paired-bootstrap interval and p-value (exact McNemar for accuracy, Wilcoxon "
    "signed-rank for mAP). Several seeds: mean ± sd over seeds, and in how many seeds the "
    "difference is significant (p < {alpha:g}). {unpaired} marks a difference of two values "
    "that could not be paired (no per-image outcomes, or different images). Masking flags: the "
    "checks of the runs' masking.csv that flagged signs of gradient masking (`none`: no flag). "
    "{missing}: not measured. Below: the paired comparisons, one table per attack and the "
    "notes; every measurement is in `{csv}`, every paired comparison in `{paired}`. Gradient "
    "sources: `rule` the model's own (pseudo-)gradient, `exact` the true gradient of the same "
    "weights, `eot` the rule's gradient averaged over brsf draws, `transfer` examples made on "
    "a BP surrogate, `none` a query-based attack, `any` the worst case over all of them."
)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _md_table(table: Table) -> list[str]:
    lines = [_md_row(table.header), _md_row(["---", *["---:"] * (len(table.header) - 1)])]
    return lines + [_md_row(row) for row in table.rows]


def _run_folders(table: Table) -> str:
    return "Run folders: " + ", ".join(f"{r} `{d}`" for r, d in table.run_dirs.items())


def paired_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """The paired comparisons of one table: one line each for rules of one seed; for rules of
    several seeds one line per pair and cell: the seeds where the difference is significant
    and the range of the differences (each seed's line is in paired.csv)."""
    lines = []
    compact: dict[tuple, list[Comparison]] = defaultdict(list)
    for c in comparisons:
        if c.seeded:
            compact[c.first, c.second, c.cell].append(c)
        else:
            lines.append(c.line())
    for (first, second, _), found in compact.items():
        c = found[0]
        where = cell_label(c.norm, c.metric, c.eps, c.task).replace("ε=", "")
        low = min(x.difference for x in found)
        high = max(x.difference for x in found)
        significant = sum(x.significant for x in found)
        seeds = ", ".join(str(x.seed) for x in found)
        lines.append(
            f"{first} - {second}, worst {where}: significant (p < {ALPHA:g}) in {significant} "
            f"of {len(found)} seeds ({seeds}); differences {signed(low)} to {signed(high)} "
            f"({c.test})"
        )
    return lines


def render_markdown(
    summaries: Sequence[Table],
    attacks: dict[str, list[Table]],
    comparisons: Sequence[Comparison],
    figures: dict[str, list[Path]],
    notes: Sequence[str],
    runs: int,
    out: Path,
    paired_path: Path,
) -> str:
    """The report: the summary tables, the paired comparisons, the per-attack tables (with the
    figures), then the notes."""
    metrics = sorted({CLEAN_METRIC[t.title.split(" · ")[0]] for t in summaries})
    legend = _LEGEND.format(
        clean=" or ".join(metrics) or "acc", at_most=SUMMARY_EPS, alpha=ALPHA, unpaired=UNPAIRED,
        missing=MISSING, csv=out.with_suffix(".csv").name, paired=paired_path.name,
    )  # fmt: skip
    lines = ["# sslr report", "", f"{runs} run{'s' if runs != 1 else ''} compared.", ""]
    for table in summaries:
        lines += [f"## {table.title}", "", *_md_table(table), "", _run_folders(table), ""]
    lines += [legend, ""]
    lines += ["## Paired comparisons", ""]
    if comparisons:
        lines += [
            f"The worst case of the first rule minus the second's, on the same images, with "
            f"the 95% paired-bootstrap interval and the p-value; per seed in `{paired_path.name}`.",
            "",
        ]
        for table in summaries:
            mine = [c for c in comparisons if group_title(c.group) == table.title]
            if mine:
                lines += [f"### {table.title}", "", *(f"- {line}" for line in paired_lines(mine))]
                lines.append("")
    else:
        lines += ["None: no two runs of one seed with per-image outcomes (see the notes).", ""]
    for table in summaries:
        lines += [f"## Attacks · {table.title}", ""]
        for attack in attacks.get(table.title, []):
            lines += [f"### {attack.title}", "", *_md_table(attack), ""]
            if attack.caption:
                lines += [attack.caption, ""]
        for figure in figures.get(table.title, []):
            link = os.path.relpath(figure, out.parent).replace(os.sep, "/")
            lines += [f"![{figure.stem}]({link})", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


def _text(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def write_rows(columns: Sequence[str], rows: Iterable[Sequence], path: Path) -> Path:
    """A CSV of ``rows`` under ``columns``, empty where a field does not apply, atomically."""
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([_text(v) for v in row] for row in rows)
    return path


def write_csv(records: Sequence[Record], path: Path) -> Path:
    """report.csv: one row per measurement (CSV_COLUMNS), empty where a field does not apply."""
    return write_rows(CSV_COLUMNS, (record.as_row() for record in records), path)


def paired_csv_path(out: Path) -> Path:
    """paired.csv beside report.md; `<stem>_paired.csv` beside another markdown name."""
    return out.with_name("paired.csv" if out.stem == "report" else f"{out.stem}_paired.csv")


def _seed_notes(runs: Sequence[Run]) -> list[str]:
    """A note per rule whose seed runs' configs differ in more than their seeds."""
    notes = []
    by_rule: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_rule[run.group, run.rule].append(run)
    for (group, rule), same in by_rule.items():
        if len(same) < 2:
            continue
        keys = {k for run in same for k in run.settings}
        differ = sorted(
            k
            for k in keys
            if k != "seed_everything"
            and not k.endswith(".seed")
            and len({repr(run.settings.get(k)) for run in same}) > 1
        )
        if differ:
            shown = ", ".join(differ[:6]) + (", …" if len(differ) > 6 else "")
            seeds = ", ".join(str(r.seed) for r in sorted(same, key=lambda r: seed_key(r.seed)))
            notes.append(
                f"{group_title(group)} · {rule}: its runs of seeds {seeds} are shown as one rule "
                f"(mean ± sd), but their configs differ in more than the seed: {shown}."
            )
    return notes


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    pairs: Sequence[tuple[str, str]] = (),
) -> Report:
    """Compare the runs at or below `run_dirs`; write `out` (markdown), its .csv, paired.csv
    and PNGs beside it. `pairs`: (first, second) rules to compare besides every rule with bp.

    Raises ReportError (a one-sentence message) for a missing folder, no runs found, a
    malformed robustness.csv or outcomes.json, or a pair that cannot be paired; before any
    file is written.
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
    runs.sort(key=lambda r: (group_order(r.group), order_key(r.rule, RULE_ORDER), seed_key(r.seed)))
    comparisons, paired_notes = pair_runs(runs, pairs)
    notes += [f"Skipped {why}." for why in skipped]
    notes += _seed_notes(runs)
    seeded = several_seeds(runs)
    for run in runs:
        label = run_label(run, (run.group, run.rule) in seeded)
        for line in masking_summary(run.path, run.sources):
            notes.append(f"{label}: {line}.")
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
    notes += paired_notes
    records = build_records(runs)
    without_bp = {r.group for r in runs} - {r.group for r in runs if r.rule == CONTROL}
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
    groups = sorted({run.group for run in runs}, key=group_order)
    summaries, attacks, figures = [], {}, {}
    for group in groups:
        title = group_title(group)
        summaries.append(summary_table(group, [r for r in runs if r.group == group], comparisons))
        attacks[title], table_notes = attack_tables(group, by_group[group])
        figures[title] = draw_figures(group, by_group[group], out.parent, out.stem)
        notes += table_notes
    paired_path = paired_csv_path(out)
    markdown = render_markdown(
        summaries, attacks, comparisons, figures, notes, len(runs), out, paired_path
    )
    atomic_write(out, markdown)
    csv_path = write_csv(records, out.with_suffix(".csv"))
    write_rows(PAIRED_COLUMNS, (c.as_row() for c in comparisons), paired_path)
    tables = [*summaries, *(t for s in summaries for t in attacks[s.title])]
    drawn = [f for s in summaries for f in figures[s.title]]
    return Report(
        runs, records, tables, notes, markdown, out, csv_path, drawn, comparisons, paired_path
    )


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
    """Log the long-form table, the paired comparisons, each summary and per-attack table and
    each figure to one W&B run in `group`.

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
            ),
            "report/paired": wandb.Table(
                columns=list(PAIRED_COLUMNS), data=[c.as_row() for c in report.comparisons]
            ),
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
    """`sslr report RUN_DIR... [--out report.md] [--pair A B]... [--wandb ...]`; returns the
    exit code (2: a problem with the run folders or a --pair, one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="sslr report",
        description="Compare run folders (config.yaml, metrics.csv, robustness.csv, "
        "outcomes.json): a summary per task, dataset and backbone with paired tests against bp, "
        "one table per attack, long-form CSVs (report.csv, paired.csv) and robustness plots.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder, or a folder above run folders"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report.md"),
        help="the markdown file; the CSV (same name, .csv), paired.csv and the PNGs go beside it",
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("RULE_A", "RULE_B"),
        help="also compare RULE_A's worst case with RULE_B's on the same images (RULE_A - "
        "RULE_B), per seed; every rule is compared with bp anyway; repeatable",
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
        report = build_report(args.run_dirs, args.out, [tuple(p) for p in args.pair])
    except ReportError as exc:
        print(f"sslr report: error: {exc}", file=sys.stderr)
        return 2
    groups = len({run.group for run in report.runs})
    print(
        f"sslr report: compared {_count(len(report.runs), 'run')} in "
        f"{_count(groups, 'summary table')}: wrote {report.markdown_path}, {report.csv_path}, "
        f"{report.paired_path} and {_count(len(report.figures), 'figure')}"
        + (f" ({_count(len(report.notes), 'note')} in the report)." if report.notes else ".")
    )
    several = groups > 1
    for comparison in report.comparisons:
        line = comparison.line()
        print(f"{group_title(comparison.group)}: {line}" if several else line)
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
