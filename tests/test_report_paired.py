"""`sslr report` with intervals, per-image outcomes and seeds: synthetic run folders (config.yaml,
metrics.csv, robustness.csv with ci columns, outcomes.json, masking.csv) written by hand, no
training; every number in the summary checked against the CSVs and hand computations."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import yaml

import sslr.report_plots
from sslr.outcomes import write_outcomes
from sslr.report import PAIRED_COLUMNS, build_report, main_report
from sslr.results import REQUIRED, RobustnessRow, write_rows
from sslr.stats import interval, paired

E = {k: k / 255 for k in (1, 2, 4, 8, 16)}
TITLE = "classification · Digits · resnet18"
NUMBER = r"[+-]?\d+\.\d{3}"


def write_run(
    folder: Path,
    rule: str,
    cells: dict[tuple, tuple[str, list[float]]],
    *,
    clean: float = 0.9,
    seed: int = 0,
    index: list[int] | None = None,
    layout: str = "attacks",
    ci: bool = True,
    outcomes: bool = True,
    flagged: tuple[str, ...] | None = (),
    task: str = "ClassificationTask",
    dataset: str = "Digits",
    bits: int | None = None,
    rows: list[RobustnessRow] | None = None,
) -> Path:
    """A run folder with the attack results of ``cells`` ((attack, norm, gradient, eps) ->
    (metric, per-image values)): robustness.csv (each cell's mean and 95% interval, the way the
    engine computes them), outcomes.json and masking.csv (``flagged``: the checks it flags; None:
    no masking.csv) in ``<run>/attacks/best-aaaa/`` or, ``layout="grid"``, in the run folder."""
    folder.mkdir(parents=True)
    init_args = {"backbone": "resnet18", "rule": rule, "num_classes": 10}
    if bits is not None:
        init_args["bits"] = bits
    config = {
        "seed_everything": seed,
        "model": {"class_path": f"sslr.tasks.{task}", "init_args": init_args},
        "data": {"class_path": f"sslr.data.{dataset}", "init_args": {"batch_size": 64}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metric = "mAP" if task == "HashingTask" else "acc"
    (folder / "metrics.csv").write_text(f"epoch,step,test/{metric}\n0,9,{clean}\n")
    where = folder if layout == "grid" else folder / "attacks" / "best-aaaa"
    where.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(cells.values()))[1]) if cells else 0
    made = []
    for (attack, norm, gradient, eps), (kind, values) in cells.items():
        low, high = interval(kind, values, seed=0)
        made.append(
            RobustnessRow(
                attack=attack, norm=norm, eps=eps, steps=0 if attack == "worst" else 10,
                gradient=gradient, accuracy=sum(values) / len(values), n=len(values),
                metric=kind, ci_low=round(low, 6) if ci else None,
                ci_high=round(high, 6) if ci else None,
            )
        )  # fmt: skip
    made += rows or []
    if ci:
        write_rows(made, where / "robustness.csv")
    else:  # a file from before the interval columns
        write_rows(made, where / "robustness.csv", (*REQUIRED, "metric"))
    if outcomes:
        keyed = {(*key, kind): values for key, (kind, values) in cells.items()}
        write_outcomes(where / "outcomes.json", index or list(range(n)), keyed, seed)
    if flagged is not None:
        checks = ["rule_vs_exact", "blackbox_beats_whitebox", "monotonic"]
        lines = ["check,metric,value,threshold,flagged,where"]
        lines += [f"{c},accuracy,0.2,0.1,{c in flagged},x" for c in checks]
        (where / "masking.csv").write_text("\n".join(lines) + "\n")
    return folder


def outcomes(correct: int, wrong: int, only_first: int, only_second: int) -> tuple[list, list]:
    """Two runs' 0/1 outcomes on the same images: both correct on ``correct`` images, both
    wrong on ``wrong``, only the first on ``only_first``, only the second on ``only_second``."""
    first = [1] * correct + [0] * wrong + [1] * only_first + [0] * only_second
    second = [1] * correct + [0] * wrong + [0] * only_first + [1] * only_second
    return first, second


def worst(eps: float, values: list, norm: str = "linf", metric: str = "accuracy") -> dict:
    return {("worst", norm, "any", eps): (metric, list(values))}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summary(markdown: str, title: str = TITLE) -> tuple[list[str], dict[str, list[str]]]:
    """(header, rows by rule) of the summary table under `## title`."""
    lines = markdown.splitlines()
    start = lines.index(f"## {title}") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table[0], {row[0]: row for row in table[2:]}


def attack_table(markdown: str, title: str) -> tuple[list[str], list[list[str]]]:
    lines = markdown.splitlines()
    start = lines.index(f"### {title}") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table[0], table[2:]


def f3(value: str | float) -> str:
    return f"{float(value):.3f}"


def p_text(p: str | float) -> str:
    return f"p = {float(p):.3g}"


# --------------------------------------------------------------------------- the summary


def many_eps_cells(first: list, second: list) -> tuple[dict, dict]:
    """Cells at eps 0, 1, 2, 4, 8, 16 /255: worst case and pgd under rule and exact, with
    per-image outcomes that thin out as eps grows (``first`` and ``second`` at 8/255)."""
    a, b = {}, {}
    for k, eps in [(0, 0.0), *E.items()]:
        keep = 20 - 2 * k if k < 8 else None
        va = first if k == 8 else [1] * (keep if keep is not None else 0) + [0] * (20 - (keep or 0))
        vb = second if k == 8 else [1] * max(0, 18 - 2 * k) + [0] * (20 - max(0, 18 - 2 * k))
        if k == 16:
            va, vb = [1, 1] + [0] * 18, [1] + [0] * 19
        for run, values in ((a, va), (b, vb)):
            run |= worst(eps, values)
            run[("pgd", "linf", "rule", eps)] = ("accuracy", [1] * 19 + [0] if eps else values)
            run[("pgd", "linf", "exact", eps)] = ("accuracy", values)
    return a, b


def test_summary_has_at_most_12_columns_and_every_number_is_the_csvs(tmp_path):
    """Five eps: the summary shows the three largest (10 columns); each worst case with its
    interval is report.csv's row, each difference to bp paired.csv's row, the masking flags
    masking.csv's; the per-attack tables carry every eps."""
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    usf_cells, bp_cells = many_eps_cells(usf, bp)
    write_run(tmp_path / "runs" / "bp", "bp", bp_cells, clean=0.93, flagged=())
    write_run(tmp_path / "runs" / "usf", "usf", usf_cells, clean=0.91, flagged=("rule_vs_exact",))
    report = build_report([tmp_path / "runs"], tmp_path / "out" / "report.md")
    header, rows = summary(report.markdown)
    assert len(header) <= 12
    assert header == [
        "rule", "seeds", "clean acc",
        "worst Linf ε=4/255", "Δ bp Linf ε=4/255",
        "worst Linf ε=8/255", "Δ bp Linf ε=8/255",
        "worst Linf ε=16/255", "Δ bp Linf ε=16/255",
        "masking flags",
    ]  # fmt: skip
    records = read_csv(report.csv_path)
    pairs = read_csv(report.paired_path)
    assert len(pairs) == 6  # usf - bp at eps 0 and the five others
    for rule in ("bp", "usf"):
        row = rows[rule]
        mine = [r for r in records if r["rule"] == rule]
        (clean,) = [r for r in mine if r["attack"] == "clean"]
        assert row[1] == "1" and row[2] == f3(clean["value"])
        for column, k in zip((3, 5, 7), (4, 8, 16), strict=True):
            (found,) = [r for r in mine if r["attack"] == "worst" and r["eps"] == f"{E[k]:.10g}"]
            expected = f"{f3(found['value'])} [{f3(found['ci_low'])}, {f3(found['ci_high'])}]"
            assert row[column] == expected
            if rule == "bp":
                assert row[column + 1] == "control"
                continue
            (pair,) = [p for p in pairs if p["eps"] == f"{E[k]:.10g}"]
            assert pair["first"] == "usf" and pair["second"] == "bp"
            diff = float(pair["difference"])
            assert row[column + 1] == (
                f"{diff:+.3f} [{f3(pair['ci_low'])}, {f3(pair['ci_high'])}], "
                f"{p_text(pair['p_value'])}"
            )
            # the paired difference is the difference of the two runs' report.csv values
            (theirs,) = [
                r for r in records
                if r["rule"] == "bp" and r["attack"] == "worst" and r["eps"] == found["eps"]
            ]  # fmt: skip
            assert diff == pytest.approx(float(found["value"]) - float(theirs["value"]))
            assert float(found["delta_vs_bp"]) == pytest.approx(diff)
    assert rows["bp"][-1] == "none" and rows["usf"][-1] == "rule_vs_exact"
    # Every number of the summary is one of the CSVs' (rounded as shown).
    shown = {
        number
        for row in rows.values()
        for cell in row[2:]
        for number in re.findall(NUMBER, re.sub(r"p [=<] \S+", "", cell))  # p: checked above
    }
    known = {f3(r[c]) for r in records for c in ("value", "ci_low", "ci_high") if r[c]}
    known |= {f"{float(p['difference']):+.3f}" for p in pairs}
    known |= {f3(p[c]) for p in pairs for c in ("ci_low", "ci_high")}
    assert shown <= known | {f"+{x}" for x in known}
    # The worst-case table has every eps, with intervals (room for them)...
    head, table = attack_table(report.markdown, f"{TITLE} · worst Linf")
    assert head == ["rule", "clean acc (ε=0)", *(f"ε={k}/255" for k in (1, 2, 4, 8, 16))]
    assert table[1][5] == rows["usf"][5]  # 8/255, as in the summary
    # ...the pgd table, ten columns, values only, its intervals in report.csv.
    head, table = attack_table(report.markdown, f"{TITLE} · pgd-10 Linf")
    assert len(head) == 12 and all(re.fullmatch(r"\d\.\d{3}", c) for c in table[0][1:])
    assert "each value's 95% interval is in report.csv" in report.markdown
    # report.csv carries the intervals and the seed
    pgd = [r for r in records if r["attack"] == "pgd" and r["eps"] == f"{E[8]:.10g}"]
    assert all(r["ci_low"] and r["ci_high"] and r["seed"] == "0" for r in pgd)


def test_paired_difference_interval_and_mcnemar_p_equal_a_hand_computation(tmp_path, capsys):
    """b = 6 images only usf keeps, c = 1 only bp keeps, out of 20: the difference is
    (6 - 1) / 20 = 0.25 and the exact McNemar p-value 2 * (1 + 7) / 2**7 = 0.125."""
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    write_run(tmp_path / "bp", "bp", worst(E[8], bp), layout="grid")
    write_run(tmp_path / "usf", "usf", worst(E[8], usf), layout="grid")
    out = tmp_path / "report.md"
    assert main_report([str(tmp_path), "--out", str(out)]) == 0
    (row,) = read_csv(tmp_path / "paired.csv")
    assert list(row) == list(PAIRED_COLUMNS)
    assert (row["first"], row["second"], row["norm"], row["metric"]) == ("usf", "bp", "Linf", "acc")
    assert float(row["first_value"]) == 11 / 20 and float(row["second_value"]) == 6 / 20
    assert float(row["difference"]) == pytest.approx(0.25)
    assert float(row["p_value"]) == pytest.approx(0.125)
    assert (row["test"], row["n"], row["only_first"], row["only_second"]) == (
        "exact McNemar", "20", "6", "1"
    )  # fmt: skip
    low, high = float(row["ci_low"]), float(row["ci_high"])
    assert -1 <= low < 0.25 < high <= 1
    expected = paired(usf, bp, "accuracy", seed=0)  # the paired bootstrap, seeded
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    said = capsys.readouterr().out.splitlines()
    line = (
        f"usf - bp, worst Linf 8/255: +0.250 [{low:.3f}, {high:.3f}], exact McNemar p = 0.125 "
        "(n = 20)"
    )
    assert line in said
    markdown = out.read_text()
    assert f"- {line}" in markdown
    _, rows = summary(markdown)
    assert rows["usf"][4] == f"+0.250 [{low:.3f}, {high:.3f}], p = 0.125"


def test_a_hashing_pair_uses_wilcoxon_and_names_a_metric_without_outcomes(tmp_path):
    """Hashing: per-query APs, the Wilcoxon signed-rank p-value; a worst case (t-mAP) that
    outcomes.json has no cell for is reported, unpaired, with a note."""
    from scipy.stats import wilcoxon

    first = [0.9, 0.8, 0.75, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3, 0.2]
    second = [0.5, 0.7, 0.35, 0.62, 0.25, 0.1, 0.44, 0.1, 0.05, 0.21]
    extra = RobustnessRow("worst", "linf", E[8], 0, "any", 0.3, 10, "t-mAP", 0.2, 0.4)
    kwargs = {"task": "HashingTask", "dataset": "HashingCifar10", "bits": 48, "rows": [extra]}
    write_run(tmp_path / "bp", "bp", worst(E[8], second, metric="mAP"), **kwargs)
    write_run(tmp_path / "usf", "usf", worst(E[8], first, metric="mAP"), **kwargs)
    report = build_report([tmp_path], tmp_path / "report.md")
    (comparison,) = report.comparisons
    diffs = [a - b for a, b in zip(first, second, strict=True)]
    assert comparison.metric == "mAP" and comparison.test == "Wilcoxon signed-rank"
    assert comparison.p_value == pytest.approx(wilcoxon(diffs).pvalue)
    assert comparison.difference == pytest.approx(sum(diffs) / len(diffs))
    assert comparison.only_first is None
    title = "hashing · HashingCifar10 · resnet18 · 48 bits"
    header, rows = summary(report.markdown, title)
    assert header[3:7] == [
        "worst Linf ε=8/255 mAP", "Δ bp Linf ε=8/255 mAP",
        "worst Linf ε=8/255 t-mAP", "Δ bp Linf ε=8/255 t-mAP",
    ]  # fmt: skip
    assert rows["usf"][6] == "+0.000 †"  # both 0.3: a difference of two values, unpaired
    assert any(
        "no per-image values of the worst case Linf ε=8/255 t-mAP" in n for n in report.notes
    )


# --------------------------------------------------------------------------- pairs refused


def test_an_explicit_pair_on_different_images_is_refused_with_one_line(tmp_path, capsys):
    """usf and frsf attacked on different images: `--pair usf frsf` is one error line, exit 2,
    nothing written; without --pair the automatic pairs with bp go on, and frsf's (different
    images from bp's too) is a note and an unpaired (†) difference."""
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    write_run(tmp_path / "runs" / "bp", "bp", worst(E[8], bp))
    write_run(tmp_path / "runs" / "usf", "usf", worst(E[8], usf))
    moved = list(range(100, 120))
    write_run(tmp_path / "runs" / "frsf", "frsf", worst(E[8], usf), index=moved)
    out = tmp_path / "report.md"
    code = main_report([str(tmp_path / "runs"), "--out", str(out), "--pair", "usf", "frsf"])
    assert code == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (
        f"sslr report: error: --pair usf frsf: `{tmp_path / 'runs' / 'usf'}` and "
        f"`{tmp_path / 'runs' / 'frsf'}` were attacked on different images (the index of their "
        "outcomes.json differs), so they cannot be paired.\n"
    )
    assert not out.exists() and not (tmp_path / "paired.csv").exists()
    assert main_report([str(tmp_path / "runs"), "--out", str(out)]) == 0
    report = out.read_text()
    assert "usf - bp, worst Linf 8/255: +0.250" in capsys.readouterr().out
    _, rows = summary(report)
    assert rows["frsf"][4] == "+0.250 †"
    assert f"{TITLE}: frsf and bp were attacked on different images" in report


@pytest.mark.parametrize(
    "pair, message",
    [
        (("usf", "fa"), "--pair usf fa: no run of rule fa found (the runs' rules: bp, usf, brsf)."),
        (("usf", "usf"), "--pair usf usf compares a rule with itself; name two rules."),
        (("usf", "brsf"), "--pair usf brsf: no task, dataset, backbone and seed has runs of both "
                          "usf and brsf."),
        (("bp", "usf"), "--pair bp usf: `{root}/bp` has no per-image outcomes (outcomes.json "
                        "beside robustness.csv) for the worst case: an attack from before they "
                        "were written; rerun it to pair them."),
    ],
)  # fmt: skip
def test_a_pair_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, capsys, pair, message):
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    write_run(tmp_path / "bp", "bp", worst(E[8], bp), outcomes=False)
    write_run(tmp_path / "usf", "usf", worst(E[8], usf))
    write_run(tmp_path / "brsf", "brsf", worst(E[8], usf), seed=7)
    assert main_report([str(tmp_path), "--out", str(tmp_path / "r.md"), "--pair", *pair]) == 2
    assert capsys.readouterr().err == f"sslr report: error: {message.format(root=tmp_path)}\n"
    assert not (tmp_path / "r.md").exists()


def test_an_explicit_pair_is_compared_per_seed_besides_bp(tmp_path, capsys):
    usf, frsf = outcomes(correct=2, wrong=10, only_first=3, only_second=5)
    for seed in (0, 1):
        write_run(tmp_path / "usf" / f"seed{seed}", "usf", worst(E[8], usf), seed=seed)
        write_run(tmp_path / "frsf" / f"seed{seed}", "frsf", worst(E[8], frsf), seed=seed)
    code = main_report([str(tmp_path), "--out", str(tmp_path / "r.md"), "--pair", "usf", "frsf"])
    assert code == 0
    rows = read_csv(tmp_path / "r_paired.csv")  # not report.md: <stem>_paired.csv
    assert [(r["seed"], r["first"], r["second"]) for r in rows] == [
        ("0", "usf", "frsf"), ("1", "usf", "frsf")
    ]  # fmt: skip
    assert all(float(r["difference"]) == pytest.approx(-2 / 20) for r in rows)
    said = capsys.readouterr().out
    assert "usf - frsf, seed 0, worst Linf 8/255: -0.100" in said
    assert "usf - frsf, seed 1, worst Linf 8/255: -0.100" in said


# --------------------------------------------------------------------------- seeds


SEEDS = {  # seed -> (bp clean, usf clean, (both, neither, usf only, bp only) at 8/255)
    0: (0.80, 0.70, (2, 8, 10, 0)),  # p = 2 / 2**10: significant
    1: (0.84, 0.76, (5, 8, 6, 1)),  # p = 0.125
    2: (0.90, 0.73, (8, 8, 2, 2)),  # p = 1
}


def test_seeds_are_grouped_with_mean_and_sd_and_paired_per_seed(tmp_path):
    """The grid's `<backbone>/<rule>/seed<k>/` runs: one summary row per rule with mean ± sd
    over the three seeds (hand-computed), the paired tests per seed in paired.csv, one compact
    line per rule and eps in report.md."""
    out = tmp_path / "grid"
    for seed, (bp_clean, usf_clean, counts) in SEEDS.items():
        usf, bp = outcomes(*counts)
        index = list(range(seed * 100, seed * 100 + 20))  # each seed its own images
        for rule, clean, values in (("bp", bp_clean, bp), ("usf", usf_clean, usf)):
            folder = out / "resnet18" / rule / f"seed{seed}"
            flagged = ("monotonic",) if (rule, seed) == ("usf", 1) else ()
            write_run(folder, rule, worst(E[8], values), clean=clean, seed=seed, index=index,
                      layout="grid", flagged=flagged)  # fmt: skip
    report = build_report([out], out / "report.md")
    assert len(report.runs) == 6 and not any("run folders" in n for n in report.notes)
    header, rows = summary(report.markdown)
    assert header == ["rule", "seeds", "clean acc", "worst Linf ε=8/255", "Δ bp Linf ε=8/255",
                      "masking flags"]  # fmt: skip
    # bp's clean values 0.80, 0.84, 0.90: mean 0.846667; deviations -0.046667, -0.006667,
    # +0.053333; squares summed 0.00506667, over n - 1 = 2: 0.00253333; sd 0.050332.
    assert rows["bp"][:3] == ["bp", "3", "0.847 ± 0.050"]
    # usf's 0.70, 0.76, 0.73: mean 0.73, deviations -0.03, 0.03, 0: sd sqrt(0.0018 / 2) = 0.03.
    assert rows["usf"][:3] == ["usf", "3", "0.730 ± 0.030"]
    # Worst case at 8/255, usf: (2 + 10) / 20, (5 + 6) / 20, (8 + 2) / 20 = 0.6, 0.55, 0.5:
    # mean 0.55, sd 0.05; bp: 0.1, 0.3, 0.5: mean 0.3, sd 0.2.
    assert rows["usf"][3] == "0.550 ± 0.050" and rows["bp"][3] == "0.300 ± 0.200"
    # Differences 0.5, 0.25, 0: mean 0.25, sd 0.25; significant in seed 0 only.
    assert rows["usf"][4] == "+0.250 ± 0.250, p < 0.05 in 1/3"
    assert rows["usf"][5] == "monotonic (1/3)" and rows["bp"][5] == "none"
    pairs = read_csv(out / "paired.csv")
    assert [(r["seed"], r["eps"]) for r in pairs] == [(str(s), f"{E[8]:.10g}") for s in SEEDS]
    assert [float(r["difference"]) for r in pairs] == pytest.approx([0.5, 0.25, 0.0])
    assert [float(r["p_value"]) for r in pairs] == pytest.approx([2 / 2**10, 0.125, 1.0])
    assert (
        "- usf - bp, worst Linf 8/255: significant (p < 0.05) in 1 of 3 seeds (0, 1, 2); "
        "differences +0.000 to +0.500 (exact McNemar)"
    ) in report.markdown
    head, table = attack_table(report.markdown, f"{TITLE} · worst Linf")
    assert head[:2] == ["rule", "seed"] and [r[:2] for r in table] == [
        [rule, str(s)] for rule in ("bp", "usf") for s in SEEDS
    ]
    records = read_csv(report.csv_path)
    assert sorted({(r["rule"], r["seed"]) for r in records}) == [
        (rule, str(s)) for rule in ("bp", "usf") for s in SEEDS
    ]
    assert math.isclose(
        sum(float(r["value"]) for r in records if r["rule"] == "usf" and r["attack"] == "worst"),
        1.65,
    )


# --------------------------------------------------------------------------- older runs


def test_old_format_runs_are_still_reported_without_pairs(tmp_path, capsys):
    """robustness.csv without ci columns and no outcomes.json: values without intervals, the
    difference to bp unpaired (†), one note, an empty paired.csv."""
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    write_run(tmp_path / "bp", "bp", worst(E[8], bp), ci=False, outcomes=False, flagged=None)
    write_run(tmp_path / "usf", "usf", worst(E[8], usf), ci=False, outcomes=False, flagged=None)
    assert main_report([str(tmp_path), "--out", str(tmp_path / "report.md")]) == 0
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith("sslr report: compared 2 runs")
    _, rows = summary((tmp_path / "report.md").read_text())
    assert rows["bp"] == ["bp", "1", "0.900", "0.300", "control", "–"]
    assert rows["usf"] == ["usf", "1", "0.900", "0.550", "+0.250 †", "–"]
    assert read_csv(tmp_path / "paired.csv") == []
    records = read_csv(tmp_path / "report.csv")
    assert all(r["ci_low"] == r["ci_high"] == "" for r in records)
    (note,) = [n for n in build_report([tmp_path], tmp_path / "x.md").notes if "outcomes" in n]
    assert f"`{tmp_path / 'bp'}`, `{tmp_path / 'usf'}`" in note and "without paired" in note


# --------------------------------------------------------------------------- figures


def test_figures_put_the_worst_case_first_with_interval_bands(tmp_path, monkeypatch):
    drawn = {}

    def record(path, title, panels, *, ylabel):
        drawn[path.name] = (title, panels)
        return path

    monkeypatch.setattr(sslr.report_plots, "plot_robustness", record)
    usf, bp = outcomes(correct=5, wrong=8, only_first=6, only_second=1)
    usf_cells, bp_cells = many_eps_cells(usf, bp)
    write_run(tmp_path / "bp", "bp", bp_cells)
    write_run(tmp_path / "usf", "usf", usf_cells)
    report = build_report([tmp_path], tmp_path / "report.md")
    [(name, (title, panels))] = drawn.items()
    assert name == "report_classification_Digits_resnet18_Linf.png"
    assert list(panels) == ["worst case", "pgd-10 · rule", "pgd-10 · exact"]
    assert list(panels["worst case"]) == ["bp", "usf"]
    records = [r for r in read_csv(report.csv_path) if r["attack"] == "worst"]
    for rule, points in panels["worst case"].items():
        assert [p[0] for p in points] == [0.0, *E.values()]
        for eps, value, low, high in points:
            (row,) = [r for r in records if r["rule"] == rule and r["eps"] == f"{eps:.10g}"]
            assert (f3(value), f3(low), f3(high)) == (
                f3(row["value"]), f3(row["ci_low"]), f3(row["ci_high"])
            )  # fmt: skip
            assert low <= value <= high
