"""The application through the CLI users run: `sslr fit/validate/test` on real data (Digits)."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslr.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")


def run_dir(name: str = "resnet18_bp", version: int = 0, root: str = "runs/debug") -> Path:
    return Path(root) / "Digits" / name / f"version_{version}"


def last_metric(folder: Path, key: str) -> float:
    with open(folder / "metrics.csv") as f:
        values = [row[key] for row in csv.DictReader(f) if row.get(key)]
    assert values, f"{key} never logged in {folder}"
    return float(values[-1])


def network_state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_fit_debug_writes_checkpoint_and_validate_reproduces_it(capsys):
    assert main(["fit", "--config", QUICK, "--config", DEBUG]) == 0
    run = run_dir()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    logged = last_metric(run, "val/acc")
    # The fit ends saying the validation metrics it ended with, as metrics.csv has them.
    said = capsys.readouterr().out.strip().splitlines()
    assert said[-1] == f"sslr fit: done; run folder {run}"
    assert said[-2].startswith("sslr fit: last validation: ")
    shown = dict(part.rsplit(" ", 1) for part in said[-2].split("validation: ")[1].split(", "))
    assert float(shown["val/acc"]) == pytest.approx(logged, abs=1e-4)
    assert set(shown) >= {"val/acc", "val/loss"}

    assert main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    assert last_metric(run / "validate-last", "val/acc") == pytest.approx(logged, abs=1e-6)

    # `last` names the run's own last.ckpt; the test lands in the run's folder too.
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "last"]) == 0
    assert 0.0 <= last_metric(run / "test-last", "test/acc") <= 1.0
    assert not run_dir(version=1).exists()  # one run, one folder
    assert last_metric(run, "val/acc") == logged  # the fit's own metrics are untouched


def test_bp_learns_digits_and_usf_finetuning_keeps_accuracy(bp_digits_run):
    # Chance is 0.10 on the 10 digit classes; 4 BP epochs reach well above 0.85 on real data.
    bp_acc = last_metric(bp_digits_run, "val/acc")
    assert bp_acc > 0.85, bp_acc

    fast = ["--trainer.enable_progress_bar", "false", "--trainer.logger.save_dir", "runs"]
    ckpt = str(bp_digits_run / "checkpoints" / "best.ckpt")
    tune = [*fast, "--trainer.max_epochs", "2", "--optimizer.lr", "0.01"]
    tune += ["--model.pretrained_ckpt", ckpt]
    accs = {}
    for rule in ("bp", "usf"):
        assert main(["fit", "--config", QUICK, *tune, "--model.rule", rule]) == 0
        accs[rule] = last_metric(Path(f"runs/Digits/resnet18_{rule}/version_0"), "val/acc")
    # Fine-tuning from a good start: usf stays within 5 points of bp fine-tuning.
    assert accs["bp"] > 0.85, accs
    assert accs["usf"] > accs["bp"] - 0.05, accs


@pytest.mark.parametrize("rule", ["frsf", "brsf"])
def test_resume_reproduces_uninterrupted_run(rule):
    common = ["--config", QUICK, "--config", DEBUG, "--model.rule", rule]
    common += ["--trainer.limit_val_batches", "1", "--seed_everything", "3"]
    assert main(["fit", *common, "--trainer.max_epochs", "2"]) == 0
    straight = network_state(run_dir(f"resnet18_{rule}", 0) / "checkpoints" / "last.ckpt")

    assert main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    half = run_dir(f"resnet18_{rule}", 1) / "checkpoints" / "last.ckpt"
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", str(half)]
    assert main(["fit", *common, *resume]) == 0
    # The resume continues the half run's own folder (one run, one folder).
    assert not run_dir(f"resnet18_{rule}", 2).exists()
    resumed = network_state(half)

    assert straight.keys() == resumed.keys()
    assert any(".feedback_" in k for k in straight)  # the rule's state is compared too
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_alignment_monitor_logs_angles():
    args = ["fit", "--config", QUICK, "--config", DEBUG, "--model.rule", "usf"]
    args += ["--trainer.callbacks+=AlignmentMonitor"]
    assert main(args) == 0
    run = run_dir("resnet18_usf")
    angle = last_metric(run, "align/angle_mean")
    ratio = last_metric(run, "align/ratio_mean")
    # usf's B = s*sign(W) is at an acute, non-zero angle to a trained W.
    assert 0.0 < angle < 90.0
    assert math.isfinite(ratio) and ratio > 0
    assert last_metric(run, "align/angle/fc") > 0


def test_nonfinite_loss_stops_with_message_and_keeps_last_good_checkpoint(capsys):
    # Epoch 0 trains normally; StepLR then multiplies the learning rate by 1e12 and it diverges.
    args = ["fit", "--config", QUICK, "--config", DEBUG, "--model.rule", "usf"]
    args += ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "8"]
    args += ["--lr_scheduler", "torch.optim.lr_scheduler.StepLR"]
    args += ["--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "1e12"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sslr: error: Non-finite"), err
    assert "rule usf" in err and "at step" in err
    # The checkpoint it names as the last good one is one, and is the run's last.ckpt.
    named = re.search(r"last good checkpoint \(all tensors finite\) is (\S+?)\.? ", err)
    assert named, err
    last = run_dir("resnet18_usf") / "checkpoints" / "last.ckpt"
    assert Path(named.group(1)).resolve() == last.resolve()
    state = network_state(last)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


BAD_INPUTS = {
    "unknown rule": (["--model.rule", "nosuchrule"], "nosuchrule"),
    "unknown backbone": (["--model.backbone", "resnet1800"], "resnet1800"),
    "unknown dataset": (["--data", "NoSuchData"], "NoSuchData"),
    "missing checkpoint": (["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
    "misspelt key": (["--model.init_args.rulee", "usf"], "rulee"),
    "missing data offline": (["--data", "CIFAR10", "--data.root", "nowhere"], "nowhere"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_line(case, capsys):
    extra, needle = BAD_INPUTS[case]
    code = main(["fit", "--config", QUICK, "--config", DEBUG, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sslr: error:") and needle in last, err


def test_misspelt_key_in_a_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    rulee: usf\n")
    assert main(["fit", "--config", QUICK, "--config", str(bad)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sslr: error:") and "rulee" in last


# Fit configs (overlays are checked composed; grid files are `sslr grid` protocols, tested there).
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if not {"overlays", "grid"} & set(p.parts)
)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_parses(config, capsys):
    if "attacks" in config.parts:  # suite settings for `sslr attack`, composed with a run's config
        args = ["attack", "--config", QUICK, "--config", str(config)]
    else:
        args = ["fit", "--config", str(config)]
    assert main([*args, "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "class_path" in printed and "rule:" in printed


@pytest.mark.parametrize("overlay", ["debug", "wandb", "ddp"])
def test_overlays_compose(overlay, capsys):
    extra = str(ROOT / "configs" / "overlays" / f"{overlay}.yaml")
    assert main(["fit", "--config", QUICK, "--config", extra, "--print_config"]) == 0
    assert "trainer:" in capsys.readouterr().out


def test_python_dash_m_and_help():
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, "-m", "sslr", "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "fit" in out.stdout and "report" in out.stdout


def test_ddp_two_cpu_processes_with_a_rule():
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sslr", "fit", "--config", QUICK, "--config", DEBUG]
    cmd += ["--model.rule", "usf", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    cmd += ["--trainer.accelerator", "cpu"]
    # The robustness monitor at the end of fit: every rank attacks its share of the batches.
    cmd += ["--trainer.callbacks+=RobustnessEvaluation", "--trainer.callbacks.suite.n_samples=12"]
    cmd += ["--trainer.callbacks.suite.batch_size=4", "--trainer.callbacks.suite.attacks=[fgsm]"]
    cmd += ["--trainer.callbacks.suite.gradients=[exact]"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir("resnet18_usf") / "checkpoints" / "last.ckpt").is_file()
    (written,) = (run_dir("resnet18_usf") / "robustness").glob("fit_step=*.csv")
    with open(written) as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["n"] == "12" for r in rows)  # the whole subset once, not a shard


def test_attack_subcommand_on_a_fitted_run(bp_digits_run, capsys):
    # usf fine-tuned briefly from the BP-trained fixture: its clean accuracy is that of a
    # learned model, not of a two-epoch run from scratch (which varies by machine).
    start = ["--model.pretrained_ckpt", str(bp_digits_run / "checkpoints" / "best.ckpt")]
    start += ["--optimizer.lr", "0.01"]
    assert main(["fit", "--config", QUICK, "--config", DEBUG, "--model.rule", "usf", *start]) == 0
    run = run_dir("resnet18_usf")
    attack = ["attack", "--config", str(run / "config.yaml")]
    attack += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    suite = ["--suite.attacks", "[fgsm, pgd]", "--suite.n_samples", "24", "--suite.steps", "3"]
    suite += ["--suite.eps", "[0, 0.03, 0.3]", "--suite.gradients", "[rule, exact]"]
    assert main([*attack, *suite]) == 0
    (folder,) = (run / "attacks").iterdir()  # one folder per attack run, with its settings
    assert (folder / "suite.yaml").is_file()
    # Its logged metrics are there too, not in a second folder for the same attack.
    assert (folder / "metrics.csv").is_file()
    assert [p.name for p in run.iterdir() if p.name.startswith("attack")] == ["attacks"]
    with open(folder / "robustness.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        *(
            "attack",
            "norm",
            "eps",
            "steps",
            "gradient",
            "accuracy",
            "n",
            "metric",
            "ci_low",
            "ci_high",
        )
    ]
    cells = [r for r in rows if r["attack"] != "worst"]
    worst = {float(r["eps"]): float(r["accuracy"]) for r in rows if r["attack"] == "worst"}
    assert len(cells) == 2 * 2 * 3  # attacks x gradient sources x epsilons
    assert sorted(worst) == [0, 0.03, 0.3]  # one per-image worst case per eps
    acc = {(r["attack"], r["gradient"], float(r["eps"])): float(r["accuracy"]) for r in cells}
    for (_, _, eps), value in acc.items():
        assert worst[eps] <= value  # the worst case is at most every row it covers
    clean = {v for (_, _, eps), v in acc.items() if eps == 0}
    assert len(clean) == 1  # eps = 0 is the clean accuracy of the same subset, for every row
    (clean,) = clean
    assert clean > 0.5, acc  # fine-tuned from a trained model: far above chance (0.1)
    # A large L-inf ball with the true gradient: PGD drives accuracy far below clean.
    assert acc[("pgd", "exact", 0.3)] < clean - 0.3, acc
    assert (folder / "robustness.png").stat().st_size > 1000
    assert (folder / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    # A second attack with other settings keeps its own results beside the first.
    assert main([*attack, *suite[:-2], "--suite.gradients", "[exact]"]) == 0
    assert len(list((run / "attacks").glob("*/robustness.csv"))) == 2

    capsys.readouterr()
    assert main([*attack, "--suite.eps", "[-0.1]"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sslr: error:") and "eps" in last


def test_an_attack_on_a_loose_checkpoint_writes_only_into_the_folder_it_prints(
    bp_digits_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    loose = tmp_path / "shared" / "model.ckpt"  # a checkpoint outside any run folder
    loose.parent.mkdir()
    shutil.copy(bp_digits_run / "checkpoints" / "best.ckpt", loose)
    attack = ["attack", "--config", QUICK, "--config", DEBUG, "--ckpt_path", str(loose)]
    attack += ["--suite.attacks", "[fgsm]", "--suite.n_samples", "8", "--suite.eps", "[0, 0.1]"]
    before = set(tmp_path.rglob("*"))
    assert main([*attack, "--suite.gradients", "[exact]"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    (folder,) = (loose.parent / "attacks").iterdir()
    assert printed == f"sslr attack: done; run folder {folder}"
    new = set(tmp_path.rglob("*")) - before
    assert new == {folder.parent, folder, *folder.rglob("*")}  # nothing in runs/, nowhere else
    names = {p.name for p in folder.iterdir()}
    assert {"robustness.csv", "masking.csv", "suite.yaml", "metrics.csv"} <= names
    # Every file of the folder has the mode of Lightning's metrics.csv (the umask's).
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if not p.name[0] == "."}
    assert set(modes.values()) == {modes["metrics.csv"]}, modes


def test_an_attack_on_two_processes_writes_the_files_of_one(bp_digits_run, tmp_path):
    """`sslr attack --trainer.devices 2 --trainer.strategy ddp` (gloo on the CPU): both
    processes attack their batches, rank 0 writes the same files as a single process."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    best = str(bp_digits_run / "checkpoints" / "best.ckpt")
    cmd = [sys.executable, "-m", "sslr", "attack", "--config", str(bp_digits_run / "config.yaml")]
    cmd += ["--ckpt_path", best, "--suite.attacks", "[fgsm, pgd, square]", "--suite.queries", "20"]
    cmd += ["--suite.gradients", "[rule, exact, transfer]", "--suite.surrogate_ckpt", best]
    cmd += ["--suite.n_samples", "20", "--suite.batch_size", "4", "--suite.steps", "2"]
    cmd += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    outs = {}
    for devices in (1, 2):
        folder = tmp_path / f"devices_{devices}"
        extra = ["--trainer.devices", str(devices), "--out_dir", str(folder)]
        extra += ["--trainer.strategy", "ddp"] if devices > 1 else []
        out = subprocess.run(
            [*cmd, *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        outs[devices] = out.stdout + out.stderr
    assert "2 processes share the work, on cpu, cpu" in outs[2]
    for name in ("robustness.csv", "masking.csv", "outcomes.json", "suite.yaml"):
        one = (tmp_path / "devices_1" / name).read_bytes()
        assert one == (tmp_path / "devices_2" / name).read_bytes(), name
    assert not (tmp_path / "devices_2" / ".batches").exists()  # finished: the store is gone
    rows = list(csv.DictReader(open(tmp_path / "devices_1" / "robustness.csv")))
    assert {r["n"] for r in rows} == {"20"}  # 5 batches dealt to 2 processes, each image once
    clean = next(float(r["accuracy"]) for r in rows if float(r["eps"]) == 0)
    assert min(float(r["accuracy"]) for r in rows) < clean  # the attacks broke some images


def test_attack_subcommand_on_a_hashing_run():
    config = str(ROOT / "configs" / "hashing" / "quickstart_digits.yaml")
    assert main(["fit", "--config", config, "--config", DEBUG]) == 0
    run = Path("runs/debug/HashingDigits/resnet18_bp_16bits/version_0")
    args = ["attack", "--config", str(run / "config.yaml")]
    args += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--suite.n_samples", "8"]
    args += ["--suite.steps", "2", "--suite.attacks", "[pgd, p2p]"]
    args += ["--suite.gradients", "[exact]"]
    assert main(args) == 0
    (csv_path,) = (run / "attacks").glob("*/robustness.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} == {"mAP", "t-mAP"}
    assert {r["attack"] for r in rows} == {"pgd", "p2p", "worst"}  # worst: per metric
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)


def test_retired_hashing_options_name_their_suite_key(capsys):
    config = str(ROOT / "configs" / "hashing" / "quickstart_digits.yaml")
    args = ["attack", "--config", config, "--hashing.n_queries", "8"]  # fails before any work
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--suite.n_samples" in err[0] and "--hashing.n_queries" in err[0]
