"""What the suite leaves behind: robustness.csv (exact columns), the PNG, and logged metrics
(CSVLogger's metrics.csv; a W&B offline run with the table and line plots)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from sslr.robustness import COLUMNS, SuiteConfig, metric_name, read_csv, run_suite

CONFIG = SuiteConfig(
    attacks=["fgsm", "pgd", "square"],
    norms=["linf", "l2"],
    eps=[0.0, 8 / 255, 0.25],
    eps_l2=[0.0, 2.0],
    gradients=["rule", "exact"],
    steps=3,
    queries=10,
    n_samples=32,
)


@pytest.fixture
def dataset(test_subset):
    return torch.utils.data.TensorDataset(*test_subset)


def test_csv_png_and_csv_logger(target, dataset, tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    rows = run_suite(target, dataset, CONFIG, loggers=[logger], out_dir=tmp_path, step=7)
    # 2 white-box attacks x 2 norms x 2 sources x their eps, + square and worst x (3 + 2) eps
    assert len(rows) == 2 * 2 * (3 + 2) + 2 * (3 + 2)

    with (tmp_path / "robustness.csv").open() as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == [
        *("attack", "norm", "eps", "steps", "gradient", "accuracy", "n", "metric"),
        *("ci_low", "ci_high"),
    ]
    assert {line[7] for line in body} == {"accuracy"}
    for row in rows:  # the 95% interval holds the value
        assert row.ci_low <= row.accuracy <= row.ci_high and row.ci_high - row.ci_low > 0.05
    assert tuple(header) == COLUMNS and len(body) == len(rows)
    assert read_csv(tmp_path / "robustness.csv") == rows
    assert {r.gradient for r in rows if r.attack == "square"} == {"none"}
    assert {r.steps for r in rows} == {0, 1, 3, 10}  # worst: 0

    png = (tmp_path / "robustness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    with open(logger.log_dir + "/metrics.csv") as f:
        logged = list(csv.DictReader(f))
    assert len(logged) == 1 and logged[0]["step"] == "7"
    for row in rows:
        assert float(logged[0][metric_name(row)]) == pytest.approx(row.accuracy)
    assert "robust/pgd/rule/eps=0.03137" in logged[0]
    assert "robust/pgd-l2/exact/eps=2" in logged[0]


def test_wandb_offline_run_gets_table_and_line_plots(target, dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    wandb.teardown()  # an earlier test's disabled-mode settings would outlive the env change
    assert wandb.run is None  # an earlier command left no run open for this logger to reuse
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="sslr-test")
    config = SuiteConfig(
        attacks=["pgd"], eps=[0.0, 0.25], gradients=["rule", "exact"], steps=2, n_samples=16
    )
    rows = run_suite(target, dataset, config, loggers=[logger], out_dir=tmp_path)
    summary = dict(logger.experiment.summary)
    logger.experiment.finish()

    media = list((tmp_path / "wandb").glob("offline-run-*/files/media"))
    assert len(media) == 1, list((tmp_path / "wandb").rglob("*"))
    (table_file,) = media[0].glob("table/robust/table_*.table.json")
    table = json.loads(table_file.read_text())
    meta = ["rule", "backbone", "dataset"]
    assert table["columns"] == [
        *meta,
        "attack",
        "norm",
        "eps",
        "gradient",
        "accuracy",
        "n",
        "ci_low",
        "ci_high",
    ]
    logged = sorted(tuple(r[3:]) for r in table["data"])
    expected = [
        (r.attack, r.norm, r.eps, r.gradient, r.accuracy, r.n, r.ci_low, r.ci_high) for r in rows
    ]
    assert logged == sorted(expected)
    assert len(list(media[0].glob("table/robust/chart_accuracy_linf_table_*.table.json"))) == 1
    assert len(list(media[0].glob("images/robust/plot_*.png"))) == 1
    (exact,) = [r for r in rows if (r.attack, r.gradient, r.eps) == ("pgd", "exact", 0.25)]
    assert summary["robust/pgd/exact/eps=0.25"] == pytest.approx(exact.accuracy)
