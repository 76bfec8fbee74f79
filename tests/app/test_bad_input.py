"""Bad input, entry point by entry point: exit status 2, one line that names the problem and
what to do, no traceback, and nothing written or overwritten. No case trains a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch

from sslr.cli import main
from sslr.tasks import ClassificationTask
from sslr.tasks.hashing import HashingTask

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
HASH = str(ROOT / "configs" / "hashing" / "quickstart_digits.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")
BASE = ["--config", QUICK, "--config", DEBUG]


def _checkpoint(path: Path, task) -> None:
    """A checkpoint as `sslr fit` writes one (its state and CLI hyperparameters), untrained."""
    hparams = {**dict(task.hparams), "_class_path": f"sslr.{type(task).__name__}"}
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": hparams}
    checkpoint.update({"pytorch-lightning_version": lightning.__version__, "global_step": 0})
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Bad (and one good) input files, made once."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "syntax.yaml").write_text("model:\n  init_args:\n    rule: [usf\n")
    (folder / "empty.yaml").write_text("")
    (folder / "misspelt.yaml").write_text("model:\n  init_args:\n    rulee: usf\n")
    (folder / "afile").write_text("a file where a folder should be\n")
    (folder / "text.ckpt").write_text("epoch,loss\n1,0.5\n")
    _checkpoint(folder / "good.ckpt", ClassificationTask(num_classes=10))
    data = (folder / "good.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    _checkpoint(folder / "hashing.ckpt", HashingTask(num_classes=10, bits=16))
    _checkpoint(folder / "resnet34.ckpt", ClassificationTask(backbone="resnet34", num_classes=10))
    _checkpoint(folder / "five.ckpt", ClassificationTask(num_classes=5))
    _checkpoint(folder / "two.ckpt", ClassificationTask(num_classes=2))
    runs = folder / "corrupt_runs" / "Digits" / "resnet18_bp" / "version_0"
    runs.mkdir(parents=True)
    (runs / "config.yaml").write_text("model: {}\n")
    (runs / "metrics.csv").write_bytes(b"\x00\x01\xff\xfe\x00garbage")
    (folder / "empty_runs").mkdir()
    good = folder / "good_runs" / "Digits" / "resnet18_bp" / "version_0"
    good.mkdir(parents=True)
    (good / "config.yaml").write_text(
        "model:\n  class_path: sslr.ClassificationTask\n  init_args: {rule: bp, backbone: resnet18}\n"
        "data:\n  class_path: sslr.data.Digits\n"
    )
    (good / "metrics.csv").write_text("epoch,step,val/acc,test/acc\n0,3,0.5,\n0,3,,0.6\n")
    return folder


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path


def _files(*folders: Path) -> dict[Path, bytes | None]:
    """Every file with its bytes and every folder (None): an empty folder left behind counts."""
    return {p: p.read_bytes() if p.is_file() else None for f in folders for p in f.rglob("*")}


def _check(args: list[str], needle: str, inputs: Path, cwd: Path, capsys) -> None:
    args = [a.replace("{in}", str(inputs)) for a in args]
    before = _files(inputs, cwd)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("sslr")]
    assert len(lines) == 1, err[-3000:]
    assert needle.replace("{in}", str(inputs)) in lines[0], lines[0]
    assert _files(inputs, cwd) == before  # nothing written, nothing overwritten


COMMON = {
    "unknown rule": (["--model.rule", "nosuchrule"], "'nosuchrule' is not one of"),
    "unknown backbone": (["--model.backbone", "resnet1800"], "'resnet1800'"),
    "unknown dataset": (["--data", "NoSuchData"], "unknown class 'NoSuchData'"),
    "batch size 0": (["--data.batch_size", "0"], "batch_size must be at least 1"),
    "batch size negative": (["--data.batch_size", "-4"], "batch_size must be at least 1"),
    "misspelt key": (["--model.init_args.rulee", "usf"], "rulee"),
    "misspelt key in a file": (["--config", "{in}/misspelt.yaml"], "rulee"),
    "YAML syntax error": (["--config", "{in}/syntax.yaml"], "syntax.yaml is not valid YAML"),
    "empty config": (["--config", "{in}/empty.yaml"], "empty.yaml is empty"),
    "missing config": (["--config", "{in}/nope.yaml"], "nope.yaml does not exist"),
    "max_epochs -3": (["--trainer.max_epochs", "-3"], "max_epochs"),
    "accelerator gpu without one": (["--trainer.accelerator", "gpu"], "accelerator cpu"),
    "unwritable output folder": (
        ["--trainer.logger.save_dir", "{in}/afile/runs"],
        "is not a writable folder; give --trainer.logger.save_dir a folder",
    ),
    "unwritable default_root_dir": (
        ["--trainer.default_root_dir", "{in}/afile/runs"],
        "is not a writable folder; give --trainer.default_root_dir a folder",
    ),
}

CKPT = {
    "missing --ckpt_path": (["--ckpt_path", "{in}/missing.ckpt"], "missing.ckpt' does not exist"),
    "truncated --ckpt_path": (["--ckpt_path", "{in}/truncated.ckpt"], "is truncated"),
    "non-checkpoint --ckpt_path": (["--ckpt_path", "{in}/text.ckpt"], "not a torch checkpoint"),
    "other-task --ckpt_path": (["--ckpt_path", "{in}/hashing.ckpt"], "task HashingTask"),
    "other-backbone --ckpt_path": (["--ckpt_path", "{in}/resnet34.ckpt"], "backbone 'resnet34'"),
    "--ckpt_path last without a run": (["--ckpt_path", "last"], "no run folder"),
    # The class count comes from the data: known once the model is built, before any folder.
    "other-class-count --ckpt_path": (["--ckpt_path", "{in}/five.ckpt"], "num_classes 5"),
}

# A 2-class model (an image folder of two classes: the attack is refused before it is read).
TWO_CLASSES = ["--data", "ImageFolderData", "--data.root", "{in}/no_images"]
TWO_CLASSES += ["--data.num_classes", "2", "--ckpt_path", "{in}/two.ckpt"]

FIT = {
    **COMMON,
    **CKPT,
    "limit_train_batches -1": (["--trainer.limit_train_batches", "-1"], "limit_train_batches"),
    "bits 0": (["--config", HASH, "--model.bits", "0"], "bits must be a positive integer"),
    "missing pretrained_ckpt": (
        ["--model.pretrained_ckpt", "{in}/missing.ckpt"],
        "missing.ckpt' does not exist",
    ),
    "other-backbone pretrained_ckpt": (
        ["--model.pretrained_ckpt", "{in}/resnet34.ckpt"],
        "another backbone",
    ),
    # Found missing once the fit starts (prepare_data), after the run folder was made: the
    # folder and the empty ones above it go again.
    "dataset not found": (
        ["--data", "CIFAR10", "--data.root", "{in}/no_data", "--data.download", "false"],
        "CIFAR-10 was not found",
    ),
}

TEST = {
    **{k: (["--ckpt_path", "{in}/good.ckpt", *a], n) for k, (a, n) in COMMON.items()},
    **CKPT,
    "limit_test_batches -1": (
        ["--ckpt_path", "{in}/good.ckpt", "--trainer.limit_test_batches", "-1"],
        "limit_test_batches",
    ),
}

ATTACK = {
    **{k: (a, n) for k, (a, n) in CKPT.items()},
    "no --ckpt_path": ([], "needs --ckpt_path"),
    "unknown rule": (["--ckpt_path", "{in}/good.ckpt", "--model.rule", "nosuchrule"], "nosuch"),
    "eps < 0": (["--ckpt_path", "{in}/good.ckpt", "--suite.eps", "[-0.1]"], "eps"),
    "eps not finite": (["--ckpt_path", "{in}/good.ckpt", "--suite.eps", "[nan]"], "eps"),
    "steps 0": (["--ckpt_path", "{in}/good.ckpt", "--suite.steps", "0"], "steps"),
    "unknown attack": (["--ckpt_path", "{in}/good.ckpt", "--suite.attacks", "[nosuch]"], "nosuch"),
    "transfer without a surrogate": (
        ["--ckpt_path", "{in}/good.ckpt", "--suite.gradients", "[rule, transfer]"],
        "needs a surrogate: --suite.surrogate_ckpt",
    ),
    "an attack list that is not a list": (
        ["--ckpt_path", "{in}/good.ckpt", "--suite.attacks", "fgsm"],
        "'fgsm' must be a list, e.g. [fgsm] (see `sslr attack --help`)",
    ),
    "unknown compile mode": (
        ["--ckpt_path", "{in}/good.ckpt", "--model.compile", "fastest"],
        "'fastest' is not one of true, false, default",
    ),
    "unwritable output folder": (
        ["--ckpt_path", "{in}/good.ckpt", "--out_dir", "{in}/afile/attack"],
        "is not a writable folder; give --out_dir a folder",
    ),
    "unknown gradient": (
        ["--ckpt_path", "{in}/good.ckpt", "--suite.gradients", "[nosuch]"],
        "nosuch",
    ),
    "apgd-dlr on 2 classes": (
        [*TWO_CLASSES, "--suite.attacks", "[apgd-dlr]"],
        "Attack 'apgd-dlr' needs at least 4 classes, the model has 2",
    ),
    "autoattack with the dlr loss on 2 classes": (
        [*TWO_CLASSES, "--suite.attacks", "[autoattack]", "--suite.loss", "dlr"],
        "The dlr loss needs at least 3 classes, the model has 2",
    ),
    "a hashing attack on a classifier": (
        ["--ckpt_path", "{in}/good.ckpt", "--suite.attacks", "[p2p]"],
        "Attack 'p2p' applies to hashing models, not to classification",
    ),
    "a classification attack on a hashing model": (
        ["--config", HASH, "--ckpt_path", "{in}/hashing.ckpt", "--suite.attacks", "[square]"],
        "Attack 'square' applies to classification models, not to hashing",
    ),
}

REPORT = {
    "missing folder": (["{in}/nowhere"], "does not exist"),
    "empty folder": (["{in}/empty_runs"], "no run folders"),
    "corrupt folder": (["{in}/corrupt_runs"], "corrupt_runs"),
}

REPORT_OUT = {"unwritable output folder": (["{in}/good_runs"], "Cannot write the report")}


def _skip_without_gpu_check(case: str) -> None:
    if case == "accelerator gpu without one" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the case is for machines without one")


@pytest.mark.parametrize("case", sorted(FIT))
def test_fit(case, inputs, cwd, capsys):
    _skip_without_gpu_check(case)
    args, needle = FIT[case]
    _check(["fit", *BASE, *args], needle, inputs, cwd, capsys)


def test_a_stopped_fit_leaves_the_folders_it_did_not_make(inputs, cwd, capsys):
    """The run's own empty folders go, up to the outermost one it made: an empty folder that was
    there before (here the debug overlay's runs/debug/) stays (``_check`` compares every folder)."""
    before = cwd / "runs" / "debug"  # the run goes to runs/debug/CIFAR10/resnet18_bp/version_0
    before.mkdir(parents=True)
    args, needle = FIT["dataset not found"]
    _check(["fit", *BASE, *args], needle, inputs, cwd, capsys)
    assert before.is_dir() and not any(before.iterdir())


@pytest.mark.parametrize("case", sorted(TEST))
def test_test(case, inputs, cwd, capsys):
    _skip_without_gpu_check(case)
    args, needle = TEST[case]
    _check(["test", *BASE, *args], needle, inputs, cwd, capsys)


@pytest.mark.parametrize("case", sorted(ATTACK))
def test_attack(case, inputs, cwd, capsys):
    args, needle = ATTACK[case]
    _check(["attack", *BASE, *args], needle, inputs, cwd, capsys)


@pytest.mark.parametrize("case", sorted(REPORT))
def test_report(case, inputs, cwd, capsys):
    args, needle = REPORT[case]
    _check(["report", *args, "--out", "report.md"], needle, inputs, cwd, capsys)


@pytest.mark.parametrize("case", sorted(REPORT_OUT))
def test_report_output(case, inputs, cwd, capsys):
    args, needle = REPORT_OUT[case]
    _check(["report", *args, "--out", "{in}/afile/report.md"], needle, inputs, cwd, capsys)


def test_under_ddp_only_rank_0_says_it(tmp_path):
    # Two processes (gloo on the CPU) meet the same error once the run has started (the image
    # folder is read in setup, on every rank): one line, from rank 0, and no traceback.
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sslr", "fit", *BASE, "--data", "ImageFolderData"]
    cmd += ["--data.root", str(tmp_path / "images"), "--data.num_classes", "10"]
    cmd += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-3000:]
    assert "MEMBER: 2/2" in said, said[-3000:]  # the second process did start
    assert "Traceback" not in said, said[-3000:]
    lines = [line for line in said.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("sslr: error:"), said[-3000:]
    assert "images" in lines[0] and "train" in lines[0], lines[0]
