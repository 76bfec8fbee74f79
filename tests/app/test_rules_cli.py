"""dfa, ldfa, kp and wm through the CLI users run: fine-tuned from the trained BP fixture they
keep a learned model's accuracy, kp's and wm's B align with W over the epochs, `sslr attack`
writes their `rule` and `exact` rows, and a kp or wm run resumed equals the uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from sslr.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.logger.save_dir", "runs"]

# val/acc after 2 epochs (lr 0.01) from the BP fixture (val/acc 0.958), seeds 0, 1, 2 on this
# project's CPU: dfa 0.979, 0.972, 0.916 (and 0.846 for seed 0 on one thread: dfa drifts
# more than the others and with the floating-point path); ldfa 0.972 (all three); kp 0.972
# (seed 0, default decay), 0.979 (seed 1, kp_decay 0.05); wm 0.972 (seeds 0, 1). Chance is 0.1.
MIN_ACCURACY = {"dfa": 0.7, "ldfa": 0.92, "kp": 0.92, "wm": 0.92}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def per_epoch(run: Path, key: str) -> list[float]:
    return [float(r[key]) for r in rows(run / "metrics.csv") if r.get(key)]


@pytest.mark.parametrize("rule", ["dfa", "ldfa", "kp", "wm"])
def test_a_rule_fine_tunes_from_bp_aligns_and_is_attacked_along_rule_and_exact(bp_digits_run, rule):
    tune = [*FAST, "--trainer.max_epochs", "2", "--optimizer.lr", "0.01"]
    tune += ["--model.pretrained_ckpt", str(bp_digits_run / "checkpoints" / "best.ckpt")]
    tune += ["--trainer.callbacks+=AlignmentMonitor", "--model.rule", rule]
    if rule == "kp":  # B - W decays by 5% a step: over 46 steps the angle falls visibly
        tune += ["--model.kp_decay", "0.05"]
    assert main(["fit", "--config", QUICK, *tune]) == 0
    run = Path(f"runs/Digits/resnet18_{rule}/version_0")
    acc = per_epoch(run, "val/acc")[-1]
    assert acc > MIN_ACCURACY[rule], acc

    angles = per_epoch(run, "align/angle_mean")
    if rule == "dfa":
        assert angles == []  # dfa's B projects the output error: no angle to W
    else:
        assert len(angles) == 2, angles
    if rule in ("kp", "wm"):
        # B starts as fa's random M (about 90 degrees from W) and learns W: the angle falls
        # from epoch to epoch, from below fa's start (measured: kp 19.5 then 5.2 degrees with
        # kp_decay 0.05; wm 63.4 then 45.5).
        assert angles[1] < angles[0] < 88, angles
    if rule == "ldfa":
        assert 80 < angles[1] < 100, angles  # fixed random: no alignment is learned (90.1)

    attack = ["attack", "--config", str(run / "config.yaml")]
    attack += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    attack += ["--suite.attacks", "[fgsm]", "--suite.n_samples", "32"]
    attack += ["--suite.eps", "[0, 0.2]", "--suite.gradients", "[rule, exact]"]
    assert main(attack) == 0
    (folder,) = (run / "attacks").iterdir()
    acc = {
        (r["gradient"], float(r["eps"])): float(r["accuracy"])
        for r in rows(folder / "robustness.csv")
        if r["attack"] == "fgsm"
    }
    assert set(acc) == {("rule", 0.0), ("rule", 0.2), ("exact", 0.0), ("exact", 0.2)}
    assert acc[("rule", 0.0)] == acc[("exact", 0.0)] > 0.5  # the clean subset: learned
    assert acc[("exact", 0.2)] < acc[("exact", 0.0)] - 0.1, acc  # the true gradient bites


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_a_kp_or_wm_run_resumed_equals_the_uninterrupted_run_b_included(rule):
    common = ["--config", QUICK, "--config", DEBUG, "--model.rule", rule]
    common += ["--trainer.limit_val_batches", "1", "--seed_everything", "3"]
    common += ["--optimizer.weight_decay", "0.01", "--model.mirror_every", "3"]
    assert main(["fit", *common, "--trainer.max_epochs", "2"]) == 0
    straight = torch.load(
        Path(f"runs/debug/Digits/resnet18_{rule}/version_0/checkpoints/last.ckpt"),
        weights_only=True,
    )["state_dict"]
    assert main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    half = Path(f"runs/debug/Digits/resnet18_{rule}/version_1/checkpoints/last.ckpt")
    middle = torch.load(half, weights_only=True)["state_dict"]
    assert main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(half)]) == 0
    resumed = torch.load(half, weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    learned = [k for k in straight if k.endswith(".feedback_weight")]
    # B is compared, and it learned during the resumed epoch
    assert learned and not torch.equal(middle[learned[0]], straight[learned[0]])
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    if rule == "wm":  # 8 optimizer steps, a mirror step after every third: steps 3 and 6
        counters = {int(v) for k, v in straight.items() if k.endswith(".feedback_mirrors")}
        assert counters == {2}, counters


def test_a_feedback_seed_of_its_own_draws_another_b():
    # The task and the data both have a `seed`; Lightning refused to log two different ones,
    # so `--model.seed 1` alone used to stop the fit with a RuntimeError.
    for seed in (0, 1):
        args = ["fit", "--config", QUICK, "--config", DEBUG, "--model.rule", "fa"]
        assert main([*args, "--model.seed", str(seed), "--trainer.limit_train_batches", "1"]) == 0
    states = [
        torch.load(
            Path(f"runs/debug/Digits/resnet18_fa/version_{v}/checkpoints/last.ckpt"),
            weights_only=True,
        )["state_dict"]
        for v in (0, 1)
    ]
    key = "network.fc.feedback_weight"
    assert not torch.equal(states[0][key], states[1][key])
