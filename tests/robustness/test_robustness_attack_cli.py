"""``sslr attack`` with the reference attacks on the BP-trained quickstart model: rows for each
attack (AutoAttack's members and ensemble included), a ``worst`` row per eps and norm that is
at most every row it covers, and ``masking.csv`` beside robustness.csv. Kept small: 16 images,
few steps, one eps."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest

from sslr.cli import main


def test_attack_writes_reference_rows_worst_rows_and_masking_csv(
    bp_digits_run, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO)  # the table goes through Lightning's rank-zero logger
    run = tmp_path / "run"
    shutil.copytree(bp_digits_run, run)
    args = ["attack", "--config", str(run / "config.yaml")]
    args += ["--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    args += ["--suite.attacks", "[apgd-ce, apgd-dlr, autoattack, square]"]
    args += ["--suite.n_samples", "16", "--suite.steps", "3", "--suite.queries", "20"]
    args += ["--suite.target_classes", "2", "--suite.eps", "[0, 0.03]"]
    args += ["--suite.gradients", "[exact]"]
    assert main(args) == 0
    (folder,) = (run / "attacks").iterdir()
    with open(folder / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    attacks = {r["attack"] for r in rows}
    assert attacks == {
        "apgd-ce",
        "apgd-dlr",
        "autoattack/apgd-ce",
        "autoattack/apgd-t",
        "autoattack/fab-t",
        "autoattack/square",
        "autoattack",
        "square",
        "worst",
    }
    worst = [r for r in rows if r["attack"] == "worst"]
    assert sorted(float(r["eps"]) for r in worst) == [0.0, 0.03]
    for w in worst:
        covered = [
            float(r["accuracy"])
            for r in rows
            if r["attack"] != "worst" and (r["norm"], r["eps"]) == (w["norm"], w["eps"])
        ]
        assert len(covered) == 8 and float(w["accuracy"]) <= min(covered)
    clean = float(next(r["accuracy"] for r in worst if float(r["eps"]) == 0))
    assert clean > 0.5  # a trained model: far above chance
    with open(folder / "masking.csv") as f:
        checks = list(csv.DictReader(f))
    assert {c["check"] for c in checks} >= {"rule_vs_exact", "large_eps", "monotonic"}
    assert all(c["flagged"] in ("True", "False") for c in checks)
    captured = capsys.readouterr()
    out = captured.out + captured.err + caplog.text
    table = out[out.index("robustness (n = ") :]
    assert table.splitlines()[2].lstrip().startswith("worst")  # first line after the header
    assert "check" in out and "degenerate_gradients" in out  # the verdict is printed


def test_an_offline_wandb_attack_run_has_the_robustness_table(bp_digits_run, tmp_path, monkeypatch):
    """The engine's logger output reaches W&B as log_robustness's table: one row per attack,
    norm, gradient and eps, with the model's rule, and the worst case among them."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(bp_digits_run, run)
    args = ["attack", "--config", str(run / "config.yaml")]
    args += ["--config", str(root / "configs" / "overlays" / "wandb.yaml")]
    args += ["--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    args += ["--suite.attacks", "[fgsm]", "--suite.n_samples", "8"]
    args += ["--suite.eps", "[0, 0.03]", "--suite.gradients", "[rule, exact]"]
    assert main(args) == 0
    import wandb

    assert wandb.run is None  # the command's W&B run ended with it
    tables = list(tmp_path.rglob("files/media/table/robust/table_*.json"))
    assert tables, sorted(str(p) for p in tmp_path.rglob("*.json"))
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    for name in ("rule", "attack", "norm", "eps", "gradient", "accuracy", "n"):
        assert name in columns, columns
    data = [dict(zip(columns, row, strict=True)) for row in table["data"]]
    assert {d["rule"] for d in data} == {"bp"}
    assert {(d["attack"], d["gradient"]) for d in data} == {
        ("fgsm", "rule"),
        ("fgsm", "exact"),
        ("worst", "any"),
    }
    assert sorted({d["eps"] for d in data}) == [0.0, 0.03]


def test_attack_folder_keeps_per_image_outcomes_and_intervals(
    bp_digits_run, tmp_path, capsys, caplog
):
    """outcomes.json holds every cell's per-image outcomes keyed by the images' split indices:
    each cell's mean is its robustness.csv accuracy, the worst case is the AND of the cells, and
    each row's interval is Wilson's for its count; the verdict's rule_vs_exact is paired."""
    from sslr.outcomes import read_outcomes
    from sslr.results import read_rows
    from sslr.stats import wilson

    caplog.set_level(logging.INFO)  # the table goes through Lightning's rank-zero logger
    run = tmp_path / "run"
    shutil.copytree(bp_digits_run, run)
    args = ["attack", "--config", str(run / "config.yaml")]
    args += ["--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    args += ["--suite.attacks", "[fgsm, pgd]", "--suite.n_samples", "24", "--suite.steps", "3"]
    args += ["--suite.eps", "[0, 0.03]", "--suite.gradients", "[rule, exact]"]
    assert main(args) == 0
    (folder,) = (run / "attacks").iterdir()
    rows = read_rows(folder / "robustness.csv")
    found = read_outcomes(folder / "outcomes.json")
    assert len(found.index) == 24 and found.index == sorted(set(found.index))
    assert found.seed == 0 and all(i >= 0 for i in found.index)
    for row in rows:
        values = found.values(row.attack, row.norm, row.gradient, row.eps)
        assert values is not None and len(values) == row.n == 24, row
        assert sum(values) / 24 == pytest.approx(row.accuracy)
        assert (row.ci_low, row.ci_high) == pytest.approx(wilson(round(sum(values)), 24), abs=1e-6)
        assert row.ci_low <= row.accuracy <= row.ci_high
    cells = [k for k in found.cells if k[0] != "worst" and k[3] == 0.03]
    worst = found.values("worst", "linf", "any", 0.03)
    assert worst == [float(all(found.cells[k][i] for k in cells)) for i in range(24)]
    clean = found.values("worst", "linf", "any", 0.0)
    assert all(found.values(a, n, g, 0.0) == clean for a, n, g, _, _ in cells)
    with open(folder / "masking.csv") as f:
        checks = {c["check"]: c for c in csv.DictReader(f)}
    assert checks["rule_vs_exact"]["test"] == "exact McNemar"
    out = capsys.readouterr()
    assert "[95% interval: Wilson]" in out.out + out.err + caplog.text
