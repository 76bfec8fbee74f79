"""W&B runs that compare rules, read back from the offline run's own files (no key, no network).

An offline run keeps its name, group, config and history in ``run-<id>.wandb`` (the records
``wandb sync`` uploads) and its tables as JSON under ``files/media``; the tests read both.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import yaml

from sslr.cli import main, parse
from sslr.loggers import WandbLogger, describe_run, log_robustness

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")
WANDB = str(ROOT / "configs" / "overlays" / "wandb.yaml")


def wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The records of a finished offline run, once W&B's writer process has written its ``exit``
    record (it flushes after ``finish()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        records = _read_records(run_dir)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{run_dir}: no exit record after {timeout} s"
        time.sleep(0.5)


def _read_records(run_dir: Path) -> list:
    """The protobuf records of an offline run: its .wandb file is a LevelDB-style log (a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks: 4-byte CRC, 2-byte length, 1-byte type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    if len(data) < 7:
        return []
    assert data[:4] == b":W&B"
    records, pos, block, chunks = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        if len(payload) < length:  # the writer is mid-record
            break
        pos += 7 + length
        chunks = payload if kind in (1, 2) else chunks + payload  # full/first | middle/last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def run_info(run_dir: Path) -> dict:
    """Name, group, job type, tags, config (top-level keys, JSON-decoded) and history rows."""
    info = {"config": {}, "history": [], "metrics": {}}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info.update(id=run.run_id, name=run.display_name, group=run.run_group)
            info.update(job_type=run.job_type, tags=list(run.tags))
            info["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            info["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            info["history"].append(row)
        elif kind == "metric":
            info["metrics"][record.metric.name] = record.metric.step_metric
    return info


def offline_runs(folder: Path) -> dict[str, dict]:
    """Every offline run under ``folder/wandb``, by job type."""
    runs = {}
    for run_dir in sorted((folder / "wandb").glob("offline-run-*")):
        info = run_info(run_dir)
        info["dir"] = run_dir
        runs[info["job_type"]] = info
    return runs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One offline W&B fit (usf, overlays in the order wandb then debug) and a `sslr test` of
    its checkpoint, in a fresh folder."""
    folder = tmp_path_factory.mktemp("wandb_fit")
    cwd, mode = os.getcwd(), os.environ.get("WANDB_MODE")
    os.chdir(folder)
    os.environ["WANDB_MODE"] = "offline"
    try:
        args = ["fit", "--config", QUICK, "--config", WANDB, "--config", DEBUG]
        args += ["--model.rule", "usf", "--trainer.limit_train_batches", "2"]
        args += ["--trainer.limit_val_batches", "1"]
        assert main(args) == 0
        run = folder / "runs" / "debug" / "Digits" / "resnet18_usf" / "version_0"
        ckpt = run / "checkpoints" / "last.ckpt"
        assert ckpt.is_file()
        test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)]
        assert main([*test, "--trainer.limit_test_batches", "1"]) == 0
        # As the README says: add the W&B overlay to any command, here over a W&B run's config.
        attack = ["attack", "--config", str(run / "config.yaml"), "--config", WANDB]
        attack += ["--ckpt_path", str(ckpt), "--suite.attacks", "[fgsm]", "--suite.n_samples", "8"]
        attack += ["--suite.gradients", "[exact]", "--suite.eps", "[0, 0.1]"]
        assert main(attack) == 0
        import wandb

        assert wandb.run is None  # each command's W&B run ended with the command
    finally:
        os.chdir(cwd)
        if mode is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = mode
    return folder, run


def test_fit_run_is_named_grouped_and_carries_the_whole_config(fitted):
    folder, run = fitted
    assert (run / "metrics.csv").is_file()  # the CSV run folder survives the W&B overlay
    fit = offline_runs(folder)["fit"]
    assert fit["name"] == "resnet18_usf_xavier_train"
    assert fit["group"] == "Digits/resnet18"
    assert {"usf", "resnet18", "Digits"} <= set(fit["tags"])
    config = fit["config"]
    assert config["optimizer"]["class"] == "SGD" and config["optimizer"]["lr"] == 0.05
    assert config["lr_scheduler"]["class"] == "CosineAnnealingLR"
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["limit_train_batches"] == 2
    assert config["data"]["class"] == "Digits" and config["data"]["batch_size"] == 64
    assert config["rule"] == "usf" and config["dataset"] == "Digits"
    assert any("train/loss" in row for row in fit["history"])
    record = json.loads((run / "wandb.json").read_text())
    assert record["id"] == fit["id"] and Path(record["dir"]) == fit["dir"].resolve()


def test_test_of_a_checkpoint_links_to_its_fit(fitted):
    folder, _ = fitted
    runs = offline_runs(folder)
    fit, test = runs["fit"], runs["test"]
    assert test["name"] == "resnet18_usf_xavier_test"
    assert test["group"] == fit["group"]
    assert test["config"]["fit_run_id"] == fit["id"]
    assert test["config"]["optimizer"] == fit["config"]["optimizer"]
    assert any("test/acc" in row for row in test["history"])


def test_an_attack_with_the_overlay_over_a_wandb_runs_config_logs_once(fitted):
    folder, _ = fitted
    attack = offline_runs(folder)["attack"]
    assert attack["name"] == "resnet18_usf_xavier_attack"
    tables = sorted((attack["dir"] / "files" / "media" / "table" / "robust").glob("table_*.json"))
    assert len(tables) == 1, tables  # two WandbLoggers on one W&B run logged each table twice
    curve = [row for row in attack["history"] if "robust/accuracy/fgsm-linf/exact" in row]
    assert [row["robust/eps_linf"] for row in curve] == [0.0, 0.1]  # each point once


OVERLAYS = sorted((ROOT / "configs" / "overlays").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
@pytest.mark.parametrize("subcommand", ["fit", "test", "attack"])
def test_every_overlay_over_a_wandb_runs_config_keeps_one_logger_per_kind(
    fitted, overlay, subcommand
):
    _, run = fitted
    base = [subcommand, "--config", str(run / "config.yaml"), "--config", str(overlay)]
    for args in (base, [*base, "--config", WANDB]):
        if subcommand != "fit":
            args = [*args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
        loggers = parse(args)["trainer"]["logger"]
        kinds = [entry["class_path"].rsplit(".", 1)[-1] for entry in loggers]
        assert kinds == ["CSVLogger", "WandbLogger"], (overlay.name, args)
        wandb = loggers[1]["init_args"]
        assert wandb["project"] == "sslr" and wandb["group"] == "Digits/resnet18"


def test_a_later_loggers_own_options_win_over_the_earlier_one(fitted, tmp_path):
    _, run = fitted
    other = tmp_path / "other_project.yaml"
    other.write_text(
        "trainer:\n  logger+:\n    - class_path: lightning.pytorch.loggers.WandbLogger\n"
        "      init_args: {project: elsewhere}\n"
    )
    loggers = parse(["fit", "--config", str(run / "config.yaml"), "--config", str(other)])
    loggers = loggers["trainer"]["logger"]
    assert [e["class_path"].rsplit(".", 1)[-1] for e in loggers] == ["CSVLogger", "WandbLogger"]
    assert loggers[1]["class_path"] == "sslr.loggers.WandbLogger"  # the first one's class
    assert loggers[1]["init_args"]["project"] == "elsewhere"
    assert loggers[1]["init_args"]["group"] == "Digits/resnet18"  # the run's own, kept


@pytest.mark.parametrize("first,second", [(WANDB, DEBUG), (DEBUG, WANDB)], ids=["wd", "dw"])
def test_overlays_compose_in_either_order(first, second, capsys):
    assert (
        main(["fit", "--config", QUICK, "--config", first, "--config", second, "--print_config"])
        == 0
    )
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    kinds = [entry["class_path"].rsplit(".", 1)[-1] for entry in trainer["logger"]]
    assert kinds == ["CSVLogger", "WandbLogger"]
    assert trainer["default_root_dir"] == "runs/debug" and trainer["enable_progress_bar"] is False


def test_run_description_covers_bits_and_stage():
    config = {
        "model": {"class_path": "sslr.tasks.HashingTask",
                  "init_args": {"backbone": "vgg16", "rule": "frsf", "scale": "xavier",
                                "bits": 32, "pretrained_ckpt": "x.ckpt"}},
        "data": {"class_path": "sslr.data.CIFAR10Hashing", "init_args": {}},
    }  # fmt: skip
    meta = describe_run(config, "fit")
    assert meta["name"] == "vgg16_frsf_xavier_32bits_finetune"
    assert meta["group"] == "CIFAR10Hashing/vgg16/32bits"
    assert describe_run(config, "attack")["name"].endswith("_attack")


def test_log_robustness_writes_tables_charts_and_eps_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(name="r", save_dir=str(tmp_path), offline=True)
    rows = [
        {"attack": "pgd", "norm": "linf", "eps": eps, "gradient": g, "accuracy": acc, "n": 64}
        for g, accs in (("rule", (0.9, 0.6, 0.3)), ("exact", (0.9, 0.4, 0.1)))
        for eps, acc in zip((0.0, 4 / 255, 8 / 255), accs, strict=True)
    ]
    rows.append(
        {"attack": "pgd", "norm": "linf", "eps": 8 / 255, "gradient": "rule", "accuracy": 0.5,
         "n": 32, "metric": "mAP"}
    )  # fmt: skip
    meta = {"rule": "usf", "backbone": "resnet18", "dataset": "Digits"}
    tables = log_robustness([logger], rows, meta)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()

    columns = ["rule", "backbone", "dataset", "attack", "norm", "eps", "gradient"]
    (accuracy_file,) = (run_dir / "files" / "media" / "table" / "robust").glob("table_[0-9]*.json")
    table = json.loads(accuracy_file.read_text())
    assert table["columns"] == [*columns, "accuracy", "n", "ci_low", "ci_high"]
    assert len(table["data"]) == 6 and {r[0] for r in table["data"]} == {"usf"}
    row = ["usf", "resnet18", "Digits", "pgd", "linf", 8 / 255, "exact", 0.1, 64, None, None]
    assert row in table["data"]  # rows without an interval: empty interval cells
    assert tables["mAP"][0] == [*columns, "mAP", "n", "ci_low", "ci_high"]
    (map_file,) = (run_dir / "files" / "media" / "table" / "robust").glob("table_mAP_*.json")
    assert json.loads(map_file.read_text())["data"][0][7] == 0.5

    info = run_info(run_dir)
    assert info["metrics"]["robust/accuracy/pgd-linf/rule"] == "robust/eps_linf"
    curve = {
        row["robust/eps_linf"]: row["robust/accuracy/pgd-linf/exact"]
        for row in info["history"]
        if "robust/accuracy/pgd-linf/exact" in row
    }
    assert curve == {0.0: 0.9, 4 / 255: 0.4, 8 / 255: 0.1}
    assert any("robust/chart_accuracy_linf_table" in key for row in info["history"] for key in row)
