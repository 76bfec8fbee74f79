"""`sslr report`: synthetic run folders in, tables, CSV and plots out, with exact values."""

from __future__ import annotations

import csv
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

import sslr.report_plots
from sslr.report import (
    CSV_COLUMNS,
    PAIRED_COLUMNS,
    build_report,
    format_cell,
    format_eps,
    main_report,
    read_run,
    wandb_target,
)

E2, E8 = 2 / 255, 8 / 255
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# rule -> clean test/acc and robustness rows (attack, norm, eps, steps, gradient, accuracy, n);
# frsf spells the norm "linf", the others "inf": both are the column "Linf".
CLASSIFICATION = {
    "bp": (
        0.900,
        [
            ("pgd", "inf", 0.0, 10, "rule", 0.890, 200),  # eps 0: clean on the attack subset
            ("pgd", "inf", 0.0, 10, "exact", 0.890, 200),
            ("pgd", "inf", E2, 10, "rule", 0.500, 200),
            ("pgd", "inf", E2, 10, "exact", 0.500, 200),
            ("pgd", "inf", E8, 10, "rule", 0.125, 200),
            ("pgd", "inf", E8, 10, "exact", 0.125, 200),
        ],
    ),
    "usf": (
        0.875,
        [
            ("pgd", "inf", 0.0, 10, "rule", 0.860, 200),
            ("pgd", "inf", 0.0, 10, "exact", 0.860, 200),
            ("pgd", "inf", E2, 10, "rule", 0.625, 200),
            ("pgd", "inf", E2, 10, "exact", 0.450, 200),
            ("pgd", "inf", E8, 10, "rule", 0.412, 200),
            ("pgd", "inf", E8, 10, "exact", 0.100, 200),
        ],
    ),
    "frsf": (
        0.850,
        [
            ("pgd", "linf", 0.0, 10, "rule", 0.845, 200),
            ("pgd", "linf", 0.0, 10, "exact", 0.845, 200),
            ("pgd", "linf", E2, 10, "rule", 0.600, 200),
            ("pgd", "linf", E2, 10, "exact", 0.480, 200),
            ("pgd", "linf", E8, 10, "rule", 0.381, 200),
            ("pgd", "linf", E8, 10, "exact", 0.125, 200),
        ],
    ),
    # brsf: no exact at 8/255 (a missing cell), an eot column that bp lacks (no delta), and
    # eps-0 values that differ between gradient sources (a note).
    "brsf": (
        0.860,
        [
            ("pgd", "inf", 0.0, 10, "rule", 0.850, 200),
            ("pgd", "inf", 0.0, 10, "exact", 0.855, 200),
            ("pgd", "inf", E2, 10, "rule", 0.700, 200),
            ("pgd", "inf", E2, 10, "exact", 0.400, 200),
            ("pgd", "inf", E8, 10, "rule", 0.500, 200),
            ("pgd", "inf", E8, 10, "eot", 0.250, 200),
        ],
    ),
}
# The summary: these runs have no worst-case rows (older attacks), so it shows the clean value
# and the masking flags (no masking.csv: –); the attack's values are in its own table.
SUMMARY_HEADER = ["rule", "seeds", "clean acc", "masking flags"]
SUMMARY_ROWS = [
    ["bp", "1", "0.900", "–"],
    ["usf", "1", "0.875", "–"],
    ["frsf", "1", "0.850", "–"],
    ["brsf", "1", "0.860", "–"],
]
PGD_TITLE = "classification · Digits · resnet18 · pgd-10 Linf"
HEADER = [
    "rule",
    "clean acc (ε=0)",
    "ε=2/255 rule",
    "ε=2/255 exact",
    "ε=8/255 rule",
    "ε=8/255 exact",
    "ε=8/255 eot",
]
ROWS = [
    ["bp", "0.890", "0.500", "0.500", "0.125", "0.125", "–"],
    ["usf", "0.860", "0.625", "0.450", "0.412", "0.100", "–"],
    ["frsf", "0.845", "0.600", "0.480", "0.381", "0.125", "–"],
    ["brsf", "0.850", "0.700", "0.400", "0.500", "–", "0.250"],
]
BRSF_NOTE = (
    "classification · Digits · resnet18 · brsf: the clean acc on the attack subset (eps 0) "
    "differs between the gradient sources of pgd-10 Linf (0.850 to 0.855); the table shows "
    "rule's."
)


def write_run(
    folder: Path,
    rule: str,
    clean: float | None,
    robustness: list[tuple],
    *,
    task: str = "ClassificationTask",
    dataset: str = "Digits",
    backbone: str = "resnet18",
    bits: int | None = None,
    clean_column: str = "test/acc",
    mtime: float | None = None,
    columns: tuple[str, ...] = ("attack", "norm", "eps", "steps", "gradient", "accuracy", "n"),
    seed: int = 0,
    wandb: dict | None = None,
    batch_size: int = 64,
) -> Path:
    """A run folder as `sslr fit` + `sslr attack` leave it (config.yaml, metrics.csv, robustness)."""
    folder.mkdir(parents=True)
    init_args = {"backbone": backbone, "rule": rule, "scale": "xavier", "num_classes": 10}
    if bits is not None:
        init_args["bits"] = bits
    config = {
        "seed_everything": seed,
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "logger": [{"class_path": "CSVLogger"}]},
        "model": {"class_path": f"sslr.tasks.{task}", "init_args": init_args},
        "data": {"class_path": f"sslr.data.{dataset}", "init_args": {"batch_size": batch_size}},
        "ckpt_path": None,
    }
    if wandb is not None:
        config["trainer"]["logger"].append(
            {"class_path": "sslr.loggers.WandbLogger", "init_args": wandb}
        )
    (folder / "config.yaml").write_text("# lightning.pytorch==2.6.6\n" + yaml.safe_dump(config))
    metric = clean_column.split("/")[1]
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "train/loss", f"val/{metric}", f"test/{metric}"])
        writer.writerow([0, 9, 0.7, "", ""])
        writer.writerow([0, 9, "", 0.5, ""])  # an earlier validation value, then the last one
        last_val = clean if clean_column.startswith("val/") else 0.123
        writer.writerow([1, 19, "", last_val, ""])
        writer.writerow([1, 19, 0.4, "", ""])  # empty cells after the last value are skipped
        if clean_column.startswith("test/"):
            writer.writerow([1, 19, "", "", clean])
    with (folder / "robustness.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(row[: len(columns)] for row in robustness)
    if mtime is not None:
        for name in ("metrics.csv", "robustness.csv"):
            os.utime(folder / name, (mtime, mtime))
    return folder


def classification_runs(root: Path) -> dict[str, Path]:
    return {
        rule: write_run(root / "runs" / rule / "version_0", rule, clean, rows)
        for rule, (clean, rows) in CLASSIFICATION.items()
    }


def markdown_table(markdown: str, title: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table under the heading `## title` (a summary) or `### title` (an
    attack's table)."""
    lines = markdown.splitlines()
    heading = f"## {title}" if f"## {title}" in lines else f"### {title}"
    start = lines.index(heading) + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    assert set(table[1][1:]) == {"---:"}
    return table[0], table[2:]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


@pytest.mark.parametrize(
    "eps, text",
    [(8 / 255, "8/255"), (0.0, "0"), (1 / 255, "1/255"), (0.5, "0.5"), (1.0, "1"), (0.03, "0.03")],
)
def test_format_eps(eps, text):
    assert format_eps(eps) == text


@pytest.mark.parametrize(
    "value, delta, text",
    [(0.412, 0.031, "0.412 (+0.031)"), (0.4, -1e-5, "0.400 (+0.000)"), (None, 0.1, "–"),
     (0.25, None, "0.250")],
)  # fmt: skip
def test_format_cell(value, delta, text):
    assert format_cell(value, delta) == text


def test_classification_table_values(tmp_path):
    classification_runs(tmp_path)
    report = build_report([tmp_path / "runs"], tmp_path / "out" / "report.md")
    assert report.markdown_path.read_text() == report.markdown
    header, rows = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert (header, rows) == (SUMMARY_HEADER, SUMMARY_ROWS)
    header, rows = markdown_table(report.markdown, PGD_TITLE)
    assert header == HEADER
    assert rows == ROWS
    assert [r.rule for r in report.runs] == ["bp", "usf", "frsf", "brsf"]
    (outcomes, note) = report.notes
    assert outcomes.startswith("No per-image outcomes (outcomes.json")
    assert all(f"`{tmp_path / 'runs' / rule / 'version_0'}`" in outcomes for rule in CLASSIFICATION)
    assert note == BRSF_NOTE
    # The summary first, then the paired comparisons (none: no outcomes), the attack, the notes.
    order = ["## classification · Digits · resnet18", "## Paired comparisons",
             f"### {PGD_TITLE}", "## Notes"]  # fmt: skip
    lines = report.markdown.splitlines()
    assert [lines.index(h) for h in order] == sorted(lines.index(h) for h in order)
    assert report.paired_path.read_text().startswith("task,backbone,dataset,bits,seed,first,")


def test_long_form_csv(tmp_path):
    runs = classification_runs(tmp_path)
    report = build_report([tmp_path / "runs"], tmp_path / "report.md")
    assert report.csv_path == tmp_path / "report.csv"
    rows = read_csv(report.csv_path)
    assert len(rows) == 4 * 7  # per rule: clean + six attack settings (two at eps 0)
    assert [r["rule"] for r in rows] == ["bp"] * 7 + ["usf"] * 7 + ["frsf"] * 7 + ["brsf"] * 7
    by_key = {(r["rule"], r["attack"], r["eps"], r["gradient"]): r for r in rows}
    clean = by_key[("usf", "clean", "0", "")]
    assert clean["metric"] == "acc" and clean["norm"] == clean["steps"] == clean["n"] == ""
    assert float(clean["value"]) == 0.875 and float(clean["delta_vs_bp"]) == pytest.approx(-0.025)
    usf = by_key[("usf", "pgd", f"{E8:.10g}", "rule")]
    assert usf == {
        "task": "classification",
        "dataset": "Digits",
        "backbone": "resnet18",
        "bits": "",
        "rule": "usf",
        "seed": "0",
        "attack": "pgd",
        "norm": "Linf",
        "eps": f"{E8:.10g}",
        "steps": "10",
        "gradient": "rule",
        "metric": "acc",
        "value": "0.412",
        "ci_low": "",  # a robustness.csv without intervals
        "ci_high": "",
        "delta_vs_bp": "0.287",
        "n": "200",
        "run_dir": str(runs["usf"]),
        "source": "robustness.csv",
    }
    assert clean["source"] == "metrics.csv"
    assert by_key[("bp", "pgd", f"{E8:.10g}", "rule")]["delta_vs_bp"] == "0"
    assert float(by_key[("brsf", "pgd", "0", "exact")]["delta_vs_bp"]) == pytest.approx(-0.035)
    assert by_key[("brsf", "pgd", f"{E8:.10g}", "eot")]["delta_vs_bp"] == ""  # bp has no eot


def test_plots_are_pngs_and_linked(tmp_path):
    classification_runs(tmp_path)
    report = build_report([tmp_path / "runs"], tmp_path / "report.md")
    expected = tmp_path / "report_classification_Digits_resnet18_Linf.png"
    assert report.figures == [expected]
    data = expected.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert f"]({expected.name})" in report.markdown


def test_plotted_curves(tmp_path, monkeypatch):
    drawn = {}

    def record(path, title, panels, *, ylabel):
        drawn[path.name] = (title, ylabel, panels)
        return path

    monkeypatch.setattr(sslr.report_plots, "plot_robustness", record)
    classification_runs(tmp_path)
    build_report([tmp_path / "runs"], tmp_path / "report.md")
    [(title, ylabel, panels)] = drawn.values()
    assert title.startswith("classification · Digits · resnet18 · Linf\nbands: 95% intervals")
    assert ylabel == "accuracy"
    assert list(panels) == ["pgd-10 · rule", "pgd-10 · exact", "pgd-10 · eot"]
    assert list(panels["pgd-10 · rule"]) == ["bp", "usf", "frsf", "brsf"]
    # (eps, value, interval low, interval high): no interval in these files
    assert panels["pgd-10 · rule"]["bp"] == [
        (0.0, 0.890, None, None), (E2, 0.500, None, None), (E8, 0.125, None, None)
    ]  # fmt: skip
    assert panels["pgd-10 · exact"]["brsf"] == [(0.0, 0.855, None, None), (E2, 0.400, None, None)]
    # eot has no eps-0 row: it starts at brsf's clean value on the attack subset (rule's).
    assert panels["pgd-10 · eot"] == {"brsf": [(0.0, 0.850, None, None), (E8, 0.250, None, None)]}


def test_hashing_run_gets_its_own_table(tmp_path):
    classification_runs(tmp_path)
    rows = [
        ("pgd", "inf", E8, 20, "rule", 0.30, 100, "mAP"),
        ("pgd", "inf", E8, 20, "rule", 0.20, 100, "t-mAP"),
        ("pgd", "inf", E8, 20, "exact", 0.10, 100, "mAP"),
    ]
    columns = ("attack", "norm", "eps", "steps", "gradient", "accuracy", "n", "metric")
    write_run(
        tmp_path / "runs" / "hash_usf" / "version_0", "usf", 0.65, rows, task="HashingTask",
        dataset="HashingCifar10", bits=48, clean_column="test/mAP", columns=columns,
    )  # fmt: skip
    report = build_report([tmp_path / "runs"], tmp_path / "report.md")
    title = "hashing · HashingCifar10 · resnet18 · 48 bits"
    header, table = markdown_table(report.markdown, title)
    assert header == ["rule", "seeds", "clean mAP", "masking flags"]
    assert table == [["usf", "1", "0.650", "–"]]
    header, table = markdown_table(report.markdown, f"{title} · pgd-20 Linf · mAP")
    assert (header, table) == (
        ["rule", "ε=8/255 rule", "ε=8/255 exact"],
        [["usf", "0.300", "0.100"]],
    )
    header, table = markdown_table(report.markdown, f"{title} · pgd-20 Linf · t-mAP")
    assert (header, table) == (["rule", "ε=8/255"], [["usf", "0.200"]])
    assert "hashing · HashingCifar10 · resnet18 · 48 bits: no bp run, so no deltas." in report.notes
    hashing = [r for r in read_csv(report.csv_path) if r["task"] == "hashing"]
    assert [(r["bits"], r["metric"], r["value"]) for r in hashing] == [
        ("48", "mAP", "0.65"),
        ("48", "mAP", "0.3"),
        ("48", "mAP", "0.1"),
        ("48", "t-mAP", "0.2"),
    ]
    names = sorted(p.name for p in report.figures)
    assert names == [
        "report_classification_Digits_resnet18_Linf.png",
        "report_hashing_HashingCifar10_resnet18_48bits_Linf_mAP.png",
        "report_hashing_HashingCifar10_resnet18_48bits_Linf_t-mAP.png",
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in report.figures)


@pytest.mark.parametrize("newer", ["a", "b"])
def test_duplicates_resolve_to_newest(tmp_path, newer):
    clean, rows = CLASSIFICATION["bp"]
    write_run(tmp_path / "bp", "bp", clean, rows)
    values = {"a": 0.70, "b": 0.80}
    for name, value in values.items():
        mtime = 2_000_000_000 if name == newer else 1_000_000_000
        # the same seed (runs of other seeds would be the rule's seeds, all reported)
        write_run(tmp_path / name, "usf", value, [], mtime=mtime, batch_size=ord(name))
    report = build_report([tmp_path], tmp_path / "report.md")
    _, table = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert table[1][:3] == ["usf", "1", f"{values[newer]:.3f}"]
    rows = {r["rule"]: r for r in read_csv(report.csv_path)}
    assert float(rows["usf"]["delta_vs_bp"]) == pytest.approx(values[newer] - 0.9)
    older = "b" if newer == "a" else "a"
    [note] = [n for n in report.notes if "run folders" in n]
    assert [n for n in report.notes if n != note] == [
        f"No per-image outcomes (outcomes.json, written by attacks since paired tests exist) "
        f"beside the attack results of `{tmp_path / 'bp'}`: reported as before, without paired "
        "comparisons (differences marked †)."
    ]
    assert note.startswith("classification · Digits · resnet18 · usf: 2 run folders; using the ")
    assert f"newest, `{tmp_path / newer}`" in note and f"ignoring `{tmp_path / older}`" in note
    assert "differ in data.init_args.batch_size" in note
    assert "## Notes" in report.markdown and note in report.markdown


def test_val_metric_used_when_no_test_metric(tmp_path):
    write_run(tmp_path / "run", "bp", 0.75, [], clean_column="val/acc")
    report = build_report([tmp_path / "run"], tmp_path / "report.md")  # a run folder itself
    _, table = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert table == [["bp", "1", "0.750", "–"]]
    assert report.notes == [f"`{tmp_path / 'run'}` logged no test metric (no test/acc in its "
                            "metrics.csv or a test-*/ folder): its clean value is the last val/acc "
                            "of `metrics.csv`."]  # fmt: skip
    assert report.figures == []


def test_main_writes_report(tmp_path, capsys):
    classification_runs(tmp_path)
    out = tmp_path / "report.md"
    assert main_report([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".csv").is_file()
    said = capsys.readouterr().out
    assert "compared 4 runs in 1 summary table:" in said and str(tmp_path / "paired.csv") in said


def test_wandb_disabled_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    classification_runs(tmp_path)
    assert main_report(["runs", "--out", "report.md", "--wandb"]) == 0
    assert (tmp_path / "report.csv").is_file()
    assert not (tmp_path / "wandb").exists()


def test_wandb_gets_tables_and_figures(tmp_path, monkeypatch):
    logged, inits = [], []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: (
        inits.append(kwargs)
        or types.SimpleNamespace(log=logged.append, finish=lambda: logged.append("finished"))
    )
    fake.Table = lambda columns, data: ("table", list(columns), data)
    fake.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    classification_runs(tmp_path)
    argv = ["--wandb", "--wandb-project", "p", "--wandb-group", "g", str(tmp_path / "runs")]
    assert main_report([*argv, "--out", str(tmp_path / "report.md")]) == 0
    assert inits[0]["project"] == "p" and inits[0]["group"] == "g"
    payload, finished = logged
    assert finished == "finished"
    kind, columns, data = payload["report/records"]
    assert columns == list(CSV_COLUMNS) and len(data) == 28
    kind, columns, data = payload["report/paired"]
    assert columns == list(PAIRED_COLUMNS) and data == []  # no outcomes.json: nothing paired
    kind, header, rows = payload["report/classification/Digits/resnet18"]
    assert header == SUMMARY_HEADER and rows == SUMMARY_ROWS
    kind, header, rows = payload["report/classification/Digits/resnet18/pgd-10_Linf"]
    assert header == HEADER and rows == ROWS
    image = payload["figures/report_classification_Digits_resnet18_Linf"]
    assert image == ("image", str(tmp_path / "report_classification_Digits_resnet18_Linf.png"))


@pytest.mark.parametrize(
    "loggers, target",
    [
        ([{"project": "p", "group": "G"}] * 2, ("p", "G")),
        ([None, None], ("sslr", "Digits/resnet18")),  # the CLI's group: <Dataset>/<backbone>
        (
            [{"project": "p", "group": "G"}, {"project": "q", "group": "H"}],
            ("sslr", "Digits/resnet18"),
        ),
    ],
)
def test_wandb_target_defaults_to_the_runs_own(tmp_path, loggers, target):
    runs = [
        read_run(write_run(tmp_path / rule, rule, 0.9, [], wandb=wandb))[0]
        for rule, wandb in zip(["bp", "usf"], loggers, strict=True)
    ]
    assert wandb_target(runs) == target
    other = read_run(write_run(tmp_path / "vgg", "bp", 0.9, [], backbone="vgg16"))[0]
    assert wandb_target([*runs, other]) == ("sslr", "report")


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "{root}/nope does not exist; give run folders or folders that contain them."),
        ("empty", "no run folders (folders with a config.yaml) found under {root}."),
        ("not_sslr", "no sslr runs found under {root}; skipped `{root}/x`: its config.yaml has no "
                     "model.class_path (not a LightningCLI run config)."),
        ("bad_columns", "{root}/run/robustness.csv lacks the column(s) accuracy, n; a "
                        "robustness.csv needs attack,norm,eps,steps,gradient,accuracy,n."),
        ("bad_yaml", "{root}/config.yaml is not valid YAML (line 3: expected <block end>, but found "
                     "'<block mapping start>')."),
        ("bad_number", "{root}/run/robustness.csv, line 2: cannot read eps='eight' as a number; "
                       "the file is corrupt (rerun the attack to rewrite it)."),
        ("truncated", "{root}/run/robustness.csv does not end with a newline: the file is "
                      "truncated (rerun the attack)."),
        ("empty_csv", "{root}/run/robustness.csv is empty: rerun the attack to rewrite it."),
    ],
)  # fmt: skip
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, setup, message):
    target = tmp_path
    if setup == "missing":
        target = tmp_path / "nope"
    elif setup == "not_sslr":
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "config.yaml").write_text("lr: 0.1\n")
    elif setup == "bad_columns":
        rows = [("pgd", "inf", E8, 10, "rule")]
        write_run(
            tmp_path / "run",
            "bp",
            0.9,
            rows,
            columns=("attack", "norm", "eps", "steps", "gradient"),
        )
    elif setup == "bad_yaml":
        (tmp_path / "config.yaml").write_text("model:\n  rule: bp\n backbone: vgg16\n")
    elif setup == "bad_number":
        write_run(tmp_path / "run", "bp", 0.9, [("pgd", "inf", "eight", 10, "rule", 0.5, 10)])
    elif setup == "truncated":  # a value cut mid-number is never read as a shorter number
        write_run(tmp_path / "run", "bp", 0.9, [("pgd", "inf", E8, 10, "rule", 0.5, 10)])
        path = tmp_path / "run" / "robustness.csv"
        path.write_text(path.read_text().rstrip("\n")[:-3])
    elif setup == "empty_csv":
        write_run(tmp_path / "run", "bp", 0.9, [("pgd", "inf", E8, 10, "rule", 0.5, 10)])
        (tmp_path / "run" / "robustness.csv").write_text("")
    assert main_report([str(target), "--out", str(tmp_path / "report.md")]) == 2
    err = capsys.readouterr().err
    assert err == f"sslr report: error: {message.format(root=tmp_path)}\n"
    assert not (tmp_path / "report.md").exists()


def test_every_attack_run_of_a_run_is_read_and_named(tmp_path):
    """Two `sslr attack` runs with different settings keep their own folders; the report reads
    both (and the run's test accuracy) and says which files it used."""
    run = write_run(tmp_path / "run", "bp", 0.9, [("fgsm", "linf", E8, 1, "rule", 0.4, 10)])
    for name, rows in (
        ("best-aaaa", [("pgd", "linf", E8, 10, "rule", 0.3, 10)]),
        ("best-bbbb", [("pgd", "linf", E8, 50, "rule", 0.2, 10)]),
    ):
        folder = run / "attacks" / name
        folder.mkdir(parents=True)
        lines = ["attack,norm,eps,steps,gradient,accuracy,n,metric"]
        lines += [",".join(map(str, r)) + ",accuracy" for r in rows]
        (folder / "robustness.csv").write_text("\n".join(lines) + "\n")
    report = build_report([tmp_path], tmp_path / "report.md")
    (read,) = report.runs
    values = {(m.attack, m.steps): m.value for m in read.measurements}
    assert values == {("clean", None): 0.9, ("fgsm", 1): 0.4, ("pgd", 10): 0.3, ("pgd", 50): 0.2}
    assert read.clean_source == "test/acc"
    assert read.sources == (
        "robustness.csv",
        "attacks/best-aaaa/robustness.csv",
        "attacks/best-bbbb/robustness.csv",
    )
    assert "attacks/best-bbbb/robustness.csv" in report.markdown


def test_worst_case_is_the_first_column_after_clean_and_the_verdict_is_summarised(tmp_path):
    """An `sslr attack` folder with `worst` rows and a masking.csv: the worst case is the
    first column after clean accuracy, and the flagged checks are named in the notes."""
    rows = [
        ("fgsm", "linf", E8, 1, "rule", 0.40, 10),
        ("pgd", "linf", E8, 10, "rule", 0.30, 10),
        ("square", "linf", E8, 100, "none", 0.20, 10),
        ("worst", "linf", E8, 0, "any", 0.10, 10),
    ]
    run = write_run(tmp_path / "run", "usf", 0.9, [])
    folder = run / "attacks" / "best-cccc"
    folder.mkdir(parents=True)
    lines = ["attack,norm,eps,steps,gradient,accuracy,n,metric"]
    lines += [",".join(map(str, r)) + ",accuracy" for r in rows]
    (folder / "robustness.csv").write_text("\n".join(lines) + "\n")
    (folder / "masking.csv").write_text(
        "check,metric,value,threshold,flagged,where\n"
        "blackbox_beats_whitebox,accuracy,0.1,0.316,False,square vs pgd\n"
        "degenerate_gradients,accuracy,0.8,0.05,True,\n"
    )
    report = build_report([tmp_path], tmp_path / "report.md")
    header, (row,) = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert header == ["rule", "seeds", "clean acc", "worst Linf ε=8/255", "masking flags"]
    assert row == ["usf", "1", "0.900", "0.100", "degenerate_gradients"]
    titles = [line for line in report.markdown.splitlines() if line.startswith("### ")]
    assert titles[0] == "### classification · Digits · resnet18 · worst Linf"  # the first table
    (note,) = [n for n in report.notes if "masking verdict" in n]
    assert "FLAGGED degenerate_gradients 0.800 > 0.050" in note
    assert "blackbox_beats_whitebox" not in note and "usf" in note


# --------------------------------------------------------------------------- a run's evaluations


def write_evaluation(run: Path, name: str, rows: dict[str, float], *, mtime: float | None = None):
    """`<run>/<name>/` as `sslr test|validate --ckpt_path <run>/checkpoints/<ckpt>.ckpt` leaves
    it: the config it ran with (the run's own) and its metrics.csv (one row)."""
    folder = run / name
    folder.mkdir()
    (folder / "config.yaml").write_text((run / "config.yaml").read_text())
    columns = ["epoch", "step", *rows]
    (folder / "metrics.csv").write_text(
        ",".join(columns) + "\n" + ",".join(["0", "0", *map(str, rows.values())]) + "\n"
    )
    if mtime is not None:
        os.utime(folder / "metrics.csv", (mtime, mtime))
    return folder


def write_attack(run: Path, name: str, rows: list[tuple]) -> Path:
    """`<run>/attacks/<name>/robustness.csv` as `sslr attack` leaves it."""
    folder = run / "attacks" / name
    folder.mkdir(parents=True)
    lines = ["attack,norm,eps,steps,gradient,accuracy,n,metric"]
    lines += [",".join(map(str, r)) + ",accuracy" for r in rows]
    (folder / "robustness.csv").write_text("\n".join(lines) + "\n")
    return folder


def fitted_run(folder: Path, rule: str = "bp", val: float = 0.094, **kwargs) -> Path:
    """A run folder as `sslr fit` leaves it: val/acc in its metrics.csv, no test metric, and
    checkpoints/ (what marks a run folder)."""
    run = write_run(folder, rule, val, [], clean_column="val/acc", **kwargs)
    (run / "robustness.csv").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    return run


@pytest.mark.parametrize("checkpoints", [True, False], ids=["run", "checkpoints-deleted"])
def test_a_test_of_the_best_checkpoint_is_the_runs_clean_value(tmp_path, checkpoints):
    """fit + `sslr test` of best.ckpt + `sslr validate` of last.ckpt + an attack: one run, whose
    clean value is test-best's test/acc (not the fit's or validate-last's val/acc), named with
    its file in the notes and in report.csv; the attack's rows are merged into the same run."""
    run = fitted_run(tmp_path / "runs" / "debug" / "Digits" / "resnet18_bp" / "version_0")
    if not checkpoints:  # the evaluation folders' names alone make them part of the run
        (run / "checkpoints" / "best.ckpt").unlink()
        (run / "checkpoints").rmdir()
    write_evaluation(run, "test-best", {"test/acc": 0.0703125, "test/loss": 39.5}, mtime=1e9)
    write_evaluation(run, "validate-last", {"val/acc": 0.5}, mtime=2e9)  # newer: still val
    write_attack(run, "best-aaaa", [("pgd", "linf", E8, 10, "rule", 0.03, 8)])
    report = build_report([tmp_path / "runs"], tmp_path / "report.md")
    (read,) = report.runs
    assert read.path == run
    values = {(m.attack, m.steps): (m.value, m.source) for m in read.measurements}
    assert values == {
        ("clean", None): (0.0703125, "test-best/metrics.csv"),
        ("pgd", 10): (0.03, "attacks/best-aaaa/robustness.csv"),
    }
    assert (read.clean_source, read.clean_file) == ("test/acc", "test-best/metrics.csv")
    _, table = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert table == [["bp", "1", "0.070", "–"]]
    _, table = markdown_table(report.markdown, "classification · Digits · resnet18 · pgd-10 Linf")
    assert table == [["bp", "0.030"]]
    assert report.notes == [
        f"`{run}`: read test/acc of `test-best/metrics.csv` and `attacks/best-aaaa/robustness.csv`."
    ]
    assert "ignoring" not in report.markdown and "no test metric" not in report.markdown
    rows = {r["attack"]: r for r in read_csv(report.csv_path)}
    assert (rows["clean"]["value"], rows["clean"]["source"]) == (
        "0.0703125",
        "test-best/metrics.csv",
    )
    assert rows["clean"]["run_dir"] == rows["pgd"]["run_dir"] == str(run)
    assert rows["pgd"]["source"] == "attacks/best-aaaa/robustness.csv"
    # Given the evaluation folder itself, the report reads its run.
    again = build_report([run / "test-best"], tmp_path / "again.md")
    assert [r.path for r in again.runs] == [run] and again.notes == report.notes


def test_without_any_test_metric_the_validation_value_is_used_and_said(tmp_path):
    """A run with validate-best/ but no test metric anywhere: its clean value is
    validate-best's val/acc, and the note says there is no test metric and names the file.
    A test-last/ folder without a test value does not count as a test metric."""
    run = fitted_run(tmp_path / "run", val=0.094)
    write_evaluation(run, "validate-best", {"val/acc": 0.25})
    write_evaluation(run, "test-last", {"test/loss": 3.0})
    report = build_report([tmp_path], tmp_path / "report.md")
    (read,) = report.runs
    assert [(m.attack, m.value, m.source) for m in read.measurements] == [
        ("clean", 0.25, "validate-best/metrics.csv")
    ]
    assert report.notes == [
        f"`{run}`: read val/acc of `validate-best/metrics.csv`.",
        f"`{run}` logged no test metric (no test/acc in its metrics.csv or a test-*/ folder): "
        "its clean value is the last val/acc of `validate-best/metrics.csv`.",
    ]


@pytest.mark.parametrize(
    "tests, own_test, expected",
    [
        ({"test-best": 0.7, "test-last": 0.6}, 0.5, ("test-best/metrics.csv", 0.7)),
        ({"test-last": 0.6, "test-epoch3": 0.65}, 0.5, ("test-epoch3/metrics.csv", 0.65)),
        ({}, 0.5, ("metrics.csv", 0.5)),
        ({"test-best": 0.7}, None, ("test-best/metrics.csv", 0.7)),
    ],
    ids=["best-first", "else-newest", "own-metrics", "beats-val"],
)
def test_which_test_metric_is_the_clean_value(tmp_path, tests, own_test, expected):
    """test-best/ first; else the newest other test-*/; the run's own test metric after them;
    any test metric before any validation metric."""
    if own_test is None:
        run = fitted_run(tmp_path / "run", val=0.9)
    else:
        run = write_run(tmp_path / "run", "bp", own_test, [])
    for k, (name, value) in enumerate(tests.items()):
        write_evaluation(run, name, {"test/acc": value}, mtime=1e9 + k)  # later ones newer
    write_evaluation(run, "validate-best", {"val/acc": 0.99}, mtime=2e9)
    (read,) = build_report([tmp_path], tmp_path / "report.md").runs
    (clean,) = [m for m in read.measurements if m.attack == "clean"]
    assert (clean.source, clean.value) == expected
    assert read.clean_source == "test/acc"


def test_duplicate_runs_with_evaluations_are_still_two_runs(tmp_path):
    """Two genuine runs of one rule, each with test-best/: two run folders in the note (not
    four), the newest one's test value reported."""
    old = fitted_run(tmp_path / "v0", "bp", batch_size=1)  # the same seed: duplicates
    new = fitted_run(tmp_path / "v1", "bp", batch_size=2)
    write_evaluation(old, "test-best", {"test/acc": 0.6}, mtime=1e9)
    write_evaluation(new, "test-best", {"test/acc": 0.8}, mtime=2e9)
    for run, stamp in ((old, 1e9), (new, 2e9)):
        os.utime(run / "metrics.csv", (stamp, stamp))
    report = build_report([tmp_path], tmp_path / "report.md")
    assert [r.path for r in report.runs] == [new]
    (note, read) = report.notes
    assert note.startswith("classification · Digits · resnet18 · bp: 2 run folders; using the ")
    assert f"newest, `{new}`" in note and note.count("`") == 4  # new and old, nothing else
    assert f"ignoring `{old}`." in note and "differ in data.init_args.batch_size" in note
    assert read == f"`{new}`: read test/acc of `test-best/metrics.csv`."
    _, table = markdown_table(report.markdown, "classification · Digits · resnet18")
    assert table == [["bp", "1", "0.800", "–"]]


def test_every_place_of_the_layout_is_part_of_its_run_and_nothing_above_it(tmp_path):
    """A config.yaml right inside a run folder or in attacks/<name>/ belongs to the run; a
    folder with config.yaml and checkpoints/ further up (a project's own) absorbs no run."""
    project = fitted_run(tmp_path / "project", "usf")
    run = fitted_run(project / "runs" / "Digits" / "resnet18_bp" / "version_0", val=0.5)
    write_evaluation(run, "predict-best", {})
    write_evaluation(run, "other", {"test/acc": 0.125})  # not a name sslr gives: not read
    attack = write_attack(run, "best-aaaa", [("fgsm", "linf", E8, 1, "rule", 0.25, 8)])
    (attack / "config.yaml").write_text((run / "config.yaml").read_text())
    report = build_report([project / "runs"], tmp_path / "report.md")
    (read,) = report.runs
    assert read.path == run
    assert [(m.attack, m.value, m.source) for m in read.measurements] == [
        ("clean", 0.5, "metrics.csv"),
        ("fgsm", 0.25, "attacks/best-aaaa/robustness.csv"),
    ]
    assert not any("run folders" in note for note in report.notes)


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluation_folders_are_named_as_the_cli_names_them(subcommand):
    """The report's pattern for a run's evaluation folders matches sslr.run_folder.child_name."""
    from sslr.report import EVALUATION_FOLDER
    from sslr.run_folder import child_name

    for ckpt in ("best.ckpt", "last.ckpt", "epoch=3-step=40.ckpt"):
        name = child_name(subcommand, Path("run") / "checkpoints" / ckpt)
        assert EVALUATION_FOLDER.fullmatch(name), name
    assert not EVALUATION_FOLDER.fullmatch("version_0")


def test_sslr_test_of_a_fitted_run_is_its_clean_value(bp_digits_run, tmp_path, monkeypatch):
    """End to end: `sslr test` of a fitted run's best.ckpt writes test-best/; `sslr report`
    reads that run once, with test-best's test/acc as its clean value."""
    import shutil

    from sslr.cli import main

    run = tmp_path / "runs" / "Digits" / "resnet18_bp" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt"):
        shutil.copy(bp_digits_run / name, run / name)
    monkeypatch.chdir(tmp_path)
    args = ["test", "--config", str(run / "config.yaml")]
    args += ["--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    assert main([*args, "--trainer.limit_test_batches", "2"]) == 0
    with (run / "test-best" / "metrics.csv").open(newline="") as handle:
        logged = [float(r["test/acc"]) for r in csv.DictReader(handle) if r["test/acc"]]
    assert (run / "test-best" / "config.yaml").is_file() and logged
    report = build_report([tmp_path / "runs"], tmp_path / "report.md")
    (read,) = report.runs
    assert read.path == run and read.clean_file == "test-best/metrics.csv"
    assert [m.value for m in read.measurements] == [logged[-1]]
    assert not any("no test metric" in n or "ignoring" in n for n in report.notes)
