"""The records of ``sslr report``: what a run folder says (its config, clean metric and every
attack's robustness.csv), read without torch, and how its values are named and ordered.

A run folder (``sslr fit``'s ``version_<k>``, a grid's ``<backbone>/<rule>``) holds every
evaluation of its checkpoints (the layout of :mod:`sslr.run_folder`), and all of them are read as
part of that run, never as runs of their own:

- the clean metric: a test metric first, from ``test-best/metrics.csv`` (``sslr test`` of the
  best checkpoint), else the newest other ``test-<checkpoint>/metrics.csv``, else the run's own
  ``metrics.csv``; only when none of them holds a test metric, the validation metric, in the same
  order (``validate-best/``, the newest other ``validate-*/``, the run's own ``metrics.csv``).
  Within a file the last logged value counts.
- robustness: ``robustness.csv`` in the run folder (written by ``sslr grid`` and older
  ``sslr attack``) and ``attacks/*/robustness.csv`` (one folder per ``sslr attack`` run, beside
  its ``suite.yaml``), read strictly through :mod:`sslr.results`.

Every measurement keeps the file it came from (``source``, relative to the run folder), and its
95% interval where robustness.csv has one (``ci_low``, ``ci_high``). Beside each robustness.csv
may lie ``outcomes.json`` (per-image outcomes, :mod:`sslr.outcomes`, for paired comparisons)
and ``masking.csv`` (the gradient-masking verdict). A run's seed is its config.yaml's
``seed_everything``: runs that differ only in it are the seeds of one rule (``sslr grid``'s
``<backbone>/<rule>/seed<k>/``), runs of the same seed are duplicates (the newest is reported).
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from sslr.results import GRADIENT_ORDER, ResultsError, read_rows

RULE_ORDER = ("bp", "fa", "dfa", "ldfa", "usf", "frsf", "brsf", "kp", "wm")
ROBUSTNESS_COLUMNS = ("attack", "norm", "eps", "steps", "gradient", "accuracy", "n")
CSV_COLUMNS = (
    *("task", "dataset", "backbone", "bits", "rule", "seed", "attack", "norm", "eps", "steps"),
    *("gradient", "metric", "value", "ci_low", "ci_high", "delta_vs_bp", "n", "run_dir"),
    "source",
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
# The folder, inside a run, of one evaluation of its checkpoints: sslr.run_folder.child_name's
# `<subcommand>-<checkpoint name>` (test-best, validate-last, predict-best). Spelled out here:
# sslr.run_folder imports Lightning, and reading run folders must not.
EVALUATION_FOLDER = re.compile(r"(?P<subcommand>validate|test|predict)-(?P<checkpoint>.+)")
# The subcommand whose evaluation folders log each split's metrics (`test/acc` in test-best/).
_EVALUATED_BY = {"test": "test", "val": "validate"}
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
    source: str = ""  # the file it was read from, relative to the run folder
    ci_low: float | None = None  # its 95% interval, as robustness.csv gives it (None: unknown)
    ci_high: float | None = None

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
    mtime: float  # newest of the result files read (config.yaml when there are none)
    has_results: bool  # a metrics.csv (its own or an evaluation's) or robustness.csv exists
    settings: dict  # flattened seed and model/data init_args, to explain duplicates
    wandb: tuple[str | None, str | None] = (None, None)  # its WandbLogger's (project, group)
    sources: tuple[str, ...] = ()  # the robustness.csv files read, relative to path
    clean_file: str | None = None  # the metrics.csv the clean value came from, relative to path
    seed: int | None = None  # config.yaml's seed_everything (None: not an integer)

    @property
    def group(self) -> tuple:
        """The table this run belongs to: (task, dataset, backbone, bits)."""
        return (self.task, self.dataset, self.backbone, self.bits)

    @property
    def key(self) -> tuple:
        """Runs with the same key are duplicates: the newest one is reported. Runs that differ
        only in their seed are not duplicates but the seeds of one rule (reported together)."""
        return (*self.group, self.rule, self.seed)


@dataclass(frozen=True, kw_only=True)
class Record(Measurement):
    """One row of the long-form report.csv: a run's measurement (the fields and ``column`` of
    :class:`Measurement`), with the run it came from and its delta to bp."""

    task: str
    dataset: str
    backbone: str
    bits: int | None
    rule: str
    delta_vs_bp: float | None  # None when bp of the same seed has no value in this column
    run_dir: str
    seed: int | None = None

    def as_row(self) -> list:
        """The record's fields in CSV_COLUMNS order (None for empty)."""
        return [getattr(self, name) for name in CSV_COLUMNS]


@dataclass(frozen=True)
class Table:
    """One comparison table: the rules of one (task, dataset, backbone[, bits]) side by side."""

    title: str
    header: list[str]
    rows: list[list[str]]  # formatted cells, first cell the rule
    run_dirs: dict[str, str]  # rule (`usf seed 1` with several seeds) -> run folder
    figures: list[Path]
    caption: str = ""  # a line under the table in report.md


@dataclass(frozen=True)
class Report:
    """What `build_report` read and wrote."""

    runs: list[Run]  # the runs compared (the newest per task, dataset, backbone, bits, rule, seed)
    records: list[Record]
    tables: list[Table]  # the summary tables first, then one per attack
    notes: list[str]  # duplicates resolved, skipped folders, clean values taken from val/
    markdown: str
    markdown_path: Path
    csv_path: Path
    figures: list[Path]
    comparisons: list = field(default_factory=list)  # sslr.report.Comparison, paired.csv's rows
    paired_path: Path | None = None


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


def seed_key(seed: int | None) -> tuple:
    """Seeds in ascending order, an unknown seed (None) last."""
    return (seed is None, seed or 0)


WORST = "worst"  # the per-image worst case over every attack and gradient: the number to quote


def column_order(column: tuple) -> tuple:
    """Clean first, then the worst case (the robust accuracy to quote), then the attacks."""
    attack, norm, metric, steps, eps, gradient = column
    return (
        0 if attack == CLEAN else 1 if attack == WORST else 2 if attack == SUBSET else 3,
        attack,
        norm,
        metric,
        steps or 0,
        eps,
        order_key(gradient, GRADIENT_ORDER),
    )


def group_order(group: tuple) -> tuple:
    task, dataset, backbone, bits = group
    return (task, dataset, backbone, -1 if bits is None else bits)


# --------------------------------------------------------------------------- reading run folders


def _is_run_folder(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def part_of_run(folder: Path) -> int | None:
    """How many levels above ``folder`` (a folder holding a config.yaml) its run folder is, or
    None when ``folder`` is a run folder itself.

    The places the layout of :mod:`sslr.run_folder` puts evaluations of a run's checkpoints are
    part of the run: any folder right inside a run folder (one with config.yaml and
    checkpoints/), such as ``test-best/`` (``sslr test`` of its best checkpoint, with the config
    it ran with) or ``validate-last/``, and ``attacks/<name>/``; a ``<subcommand>-<checkpoint>``
    folder beside a config.yaml is one even when the run's checkpoints/ was deleted.
    """
    resolved = folder.resolve()
    parent = resolved.parent
    if _is_run_folder(parent) or (
        EVALUATION_FOLDER.fullmatch(resolved.name) and (parent / "config.yaml").is_file()
    ):
        return 1
    if parent.name == "attacks" and _is_run_folder(parent.parent):
        return 2
    return None


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The run folders at or below each path, in a stable order, each once.

    A run folder holds a config.yaml; a folder with a config.yaml inside a run folder (an
    evaluation of its checkpoints, :func:`part_of_run`) stands for that run, so a path given
    inside a run (``<run>/test-best``) stands for the run too.
    """
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
            if "config.yaml" not in files:
                continue
            run = Path(folder)
            up = part_of_run(run)
            if up is not None:
                run = Path(os.path.normpath(run.joinpath(*[os.pardir] * up)))
            found.setdefault(run.resolve(), run)
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
    seed = config.get("seed_everything")
    identity = {
        "task": task,
        "dataset": data_class.rsplit(".", 1)[-1] if isinstance(data_class, str) else "unknown",
        "backbone": str(init.get("backbone", "unknown")),
        "bits": int(bits) if bits is not None else None,
        "rule": str(init["rule"]).lower(),
        "wandb": wandb,
        # An integer seed_everything is the run's seed; `true` (Lightning draws one) is none.
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
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


def _read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not a text CSV file (a metrics.csv of sslr fit).") from None
    if text and not text.endswith("\n"):
        raise ReportError(f"{path} does not end with a newline: the file is truncated.")
    reader = csv.DictReader(text.splitlines())
    rows = list(reader)
    return rows, list(reader.fieldnames or [])


def _last_value(path: Path, column: str) -> float | None:
    """The last value logged in ``column`` of a CSVLogger metrics.csv (every value is checked)."""
    if not path.is_file():
        return None
    rows, fieldnames = _read_metrics(path)
    if column not in fieldnames:
        return None
    last = None
    for line, row in enumerate(rows, start=2):
        value = _number(row.get(column), float, path, line, column)
        last = value if value is not None else last
    return last


def read_clean(path: Path, task: str) -> tuple[float | None, str | None]:
    """The last logged test metric in a CSVLogger metrics.csv, else the last validation one."""
    for column in CLEAN_COLUMNS[task]:
        value = _last_value(path, column)
        if value is not None:
            return value, column
    return None, None


def evaluation_metrics(folder: Path, subcommand: str) -> list[Path]:
    """The metrics.csv of each ``<subcommand>-<checkpoint>/`` evaluation of the run in
    ``folder``, in the order the report prefers them: the best checkpoint's, then the newest."""
    found = [
        path
        for path in folder.glob(f"{subcommand}-*/metrics.csv")
        if EVALUATION_FOLDER.fullmatch(path.parent.name) and path.is_file()
    ]
    best = [p for p in found if p.parent.name == f"{subcommand}-best"]
    rest = sorted(
        (p for p in found if p not in best), key=lambda p: (-p.stat().st_mtime, p.parent.name)
    )
    return best + rest


def find_clean(folder: Path, task: str) -> tuple[float | None, str | None, str | None]:
    """The run's clean value: (value, its metrics.csv column, that file relative to the run).

    A test metric anywhere in the run beats validation: ``test-best/``, the newest other
    ``test-*/``, the run's own metrics.csv; then the same for validation (``validate-*/``).
    """
    for column in CLEAN_COLUMNS[task]:
        subcommand = _EVALUATED_BY[column.split("/")[0]]
        for path in [*evaluation_metrics(folder, subcommand), folder / "metrics.csv"]:
            value = _last_value(path, column)
            if value is not None:
                return value, column, path.relative_to(folder).as_posix()
    return None, None, None


def norm_name(text: str) -> str:
    """A norm as the report writes it: `Linf`, `L2`, `L1` (robustness.csv says `linf`, `inf`)."""
    return _NORMS.get(text.strip().lower(), text.strip())


def report_metric(metric: str, task: str) -> str:
    """A result file's metric as the report names it: `accuracy` is the task's clean metric
    (`acc`), mAP and t-mAP keep their names."""
    return CLEAN_METRIC[task] if metric == "accuracy" else metric


def read_robustness(path: Path, task: str, source: str = "") -> list[Measurement]:
    """Measurements from one robustness.csv, read strictly; a setting measured twice keeps its
    last row. ``source``: the file's name in the report (relative to its run folder)."""
    if not path.is_file():
        return []
    try:
        rows = read_rows(path)
    except ResultsError as err:
        raise ReportError(str(err)) from None
    found: dict[tuple, Measurement] = {}
    for row in rows:
        measurement = Measurement(
            attack=row.attack.strip().lower(),
            norm=norm_name(row.norm),
            eps=row.eps,
            steps=row.steps,
            gradient=row.gradient.strip().lower(),
            metric=report_metric(row.metric, task),
            value=row.accuracy,
            n=row.n,
            source=source,
            ci_low=row.ci_low,
            ci_high=row.ci_high,
        )
        found[measurement.column] = measurement
    return list(found.values())


def robustness_files(folder: Path) -> list[Path]:
    """Every robustness.csv of a run: its own, then one per attack run (``attacks/*/``),
    oldest first, so that a setting measured twice keeps its newest value."""
    files = [folder / "robustness.csv"] if (folder / "robustness.csv").is_file() else []
    attacks = sorted((folder / "attacks").glob("*/robustness.csv"))
    return files + sorted(attacks, key=lambda p: (p.stat().st_mtime, str(p)))


def _masking_checks(folder: Path, sources: Sequence[str]) -> list[tuple[Path, list[dict]]]:
    """(path, rows) of each ``masking.csv`` beside the run's robustness.csv files."""
    found = []
    for source in sources:
        path = folder / Path(source).parent / "masking.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                found.append((path, list(csv.DictReader(handle))))
    return found


def _flagged(checks: Sequence[dict]) -> list[dict]:
    return [c for c in checks if str(c.get("flagged")).strip().lower() == "true"]


def masking_flags(folder: Path, sources: Sequence[str]) -> list[str] | None:
    """The names of the checks flagged by any ``masking.csv`` beside the run's robustness.csv
    files, in the files' order, each once ([] when none is flagged); None without masking.csv."""
    found = _masking_checks(folder, sources)
    if not found:
        return None
    return list(dict.fromkeys(c["check"] for _, checks in found for c in _flagged(checks)))


def masking_summary(folder: Path, sources: Sequence[str]) -> list[str]:
    """One sentence per ``masking.csv`` beside the run's robustness.csv files: the checks the
    gradient-masking verdict flagged, with value and threshold, or that it flagged none."""
    lines = []
    for path, checks in _masking_checks(folder, sources):
        flagged = _flagged(checks)
        where = path.relative_to(folder)
        if not flagged:
            lines.append(f"masking verdict ({where}): no sign of gradient masking in "
                         f"{len(checks)} checks")  # fmt: skip
            continue
        said = "; ".join(
            f"{c['check']} {float(c['value']):.3f} > {float(c['threshold']):.3f}"
            + (f" at {c['where']}" if c.get("where") else "")
            for c in flagged
        )
        lines.append(f"masking verdict ({where}): FLAGGED {said}")
    return lines


def read_run(folder: Path) -> tuple[Run | None, str | None]:
    """One run folder, with every evaluation it holds, or (None, why it is not an sslr run)."""
    identity, why = read_config(folder)
    if identity is None:
        return None, why
    task = identity["task"]
    clean, column, clean_file = find_clean(folder, task)
    measurements = []
    if clean is not None:
        measurements.append(
            Measurement(CLEAN, "", 0.0, None, "", CLEAN_METRIC[task], clean, source=clean_file)
        )
    robust = robustness_files(folder)
    merged: dict[tuple, Measurement] = {}
    for path in robust:
        source = path.relative_to(folder).as_posix()
        merged |= {m.column: m for m in read_robustness(path, task, source)}
    measurements += merged.values()
    evaluations = [p for sub in _EVALUATED_BY.values() for p in evaluation_metrics(folder, sub)]
    results = [p for p in (folder / "metrics.csv", *evaluations, *robust) if p.is_file()]
    stamped = results or [folder / "config.yaml"]
    run = Run(
        path=folder,
        measurements=tuple(measurements),
        clean_source=column,
        mtime=max(p.stat().st_mtime for p in stamped),
        has_results=bool(results),
        sources=tuple(p.relative_to(folder).as_posix() for p in robust),
        clean_file=clean_file,
        **identity,
    )
    return run, None


def outcomes_file(run: Run, source: str) -> Path:
    """Where the per-image outcomes of the robustness.csv ``source`` (relative to the run) are:
    ``outcomes.json`` beside it (it may not exist: attacks before it was written)."""
    return run.path / Path(source).parent / "outcomes.json"


def several_seeds(runs: Sequence[Run]) -> set[tuple]:
    """The (group, rule)s that have runs of more than one seed."""
    seeds: dict[tuple, set] = defaultdict(set)
    for run in runs:
        seeds[(run.group, run.rule)].add(run.seed)
    return {key for key, found in seeds.items() if len(found) > 1}


def run_label(run: Run, seeded: bool) -> str:
    """`classification · Digits · resnet18 · usf`, with ` · seed 1` when ``seeded``."""
    label = f"{group_title(run.group)} · {run.rule}"
    return f"{label} · seed {run.seed}" if seeded else label


def select_newest(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """One run per (task, dataset, backbone, bits, rule, seed): the newest results; notes say
    which. Runs of other seeds of the same rule are all kept (the seeds of the rule)."""
    by_key: dict[tuple, list[Run]] = defaultdict(list)
    seeded = several_seeds(runs)
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
        label = run_label(newest, (newest.group, newest.rule) in seeded)
        note = (
            f"{label}: {len(same)} run folders; using the "
            f"newest, `{newest.path}` (results of {when}), and ignoring {ignored}."
        )
        if differ:
            shown = ", ".join(differ[:6]) + (", …" if len(differ) > 6 else "")
            note += f" Their configs differ in {shown}."
        notes.append(note)
    return chosen, notes
