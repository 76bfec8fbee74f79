"""kill -9 at any moment of `sslr fit` leaves every file complete or absent, and rerunning the
same command (or ``--config <run>/config.yaml --ckpt_path last``) finishes the run exactly as an
uninterrupted run would, in the same run folder."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sslr.checkpoints import load_checkpoint
from sslr.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")
# frsf: its feedback matrices are state too; 2 epochs of 4 steps, one validation batch.
ARGS = ["--config", QUICK, "--config", DEBUG, "--model.rule", "frsf", "--seed_everything", "3"]
ARGS += ["--trainer.limit_val_batches", "1", "--trainer.max_epochs", "2"]
ARGS += ["--trainer.log_every_n_steps", "1"]


def _fit(cwd: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
    return _sslr(cwd, "fit", *ARGS, *extra, kill=kill)


def _sslr(
    cwd: Path, *args: str, kill: str | None = None, rank: int | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("SSLR_TEST_KILL", None)
    env.pop("SSLR_TEST_KILL_RANK", None)
    if kill:
        env["SSLR_TEST_KILL"] = kill
    if rank is not None:
        env["SSLR_TEST_KILL_RANK"] = str(rank)
    helper = str(Path(__file__).with_name("kill_points.py"))
    cmd = [sys.executable, helper, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt)["state_dict"]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["step:6", "save:3"], ids=["mid-epoch", "mid-checkpoint-write"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(kill, tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir()
    killed_dir.mkdir()
    run_name = Path("runs/debug/Digits/resnet18_frsf/version_0")
    done = _fit(straight_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = straight_dir / run_name

    killed = _fit(killed_dir, kill=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = killed_dir / run_name
    # Complete or absent: every checkpoint there loads; the half-written one is not among them.
    # (A write cut short is a hidden temporary file, never under a checkpoint's name; the next
    # start removes it, checked below.)
    ckpts = sorted(p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith("."))
    assert ckpts, "epoch 0's checkpoints were written before the kill"
    for ckpt in ckpts:
        assert load_checkpoint(ckpt)["global_step"] == 4, ckpt  # epoch 0's, whole
    rows = _rows(run)
    assert all(len(row) == len(rows[0]) for row in rows)

    # The same command again: it finds its unfinished run and resumes it, in its folder.
    resumed = _fit(killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert "resuming the unfinished run" in said and "(epoch 0, step 4)" in said, said[-3000:]
    assert not (run.parent / "version_1").exists()  # one run, one folder
    assert (run / "fit.done").is_file()
    hidden = [p.name for p in run.rglob(".*") if p.name != ".sslr.lock"]
    assert hidden == [], hidden  # the interrupted write's temporary file is gone
    a, b = _state(straight / "checkpoints" / "last.ckpt"), _state(run / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and any(".feedback_" in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    # The run's metrics: the uninterrupted run's rows, each once, in its order (a row is its
    # epoch, step and the columns it fills: a step's loss and its epoch's metrics share a step).
    def rows(folder: Path) -> list[tuple]:
        return [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v)) for r in _rows(folder)]

    assert rows(run) == rows(straight)


def test_resume_of_a_run_continues_its_folder_and_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = [*ARGS[:-4], "--trainer.max_epochs", "1"]
    assert main(["fit", *args]) == 0
    run = Path("runs/debug/Digits/resnet18_frsf/version_0")
    before = _rows(run)
    assert (
        main(
            [
                "fit",
                "--config",
                str(run / "config.yaml"),
                # After the run's config, which holds max_epochs 1: the last value given wins.
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                "last",
            ]
        )
        == 0
    )
    assert not run.with_name("version_1").exists()
    after = _rows(run)
    assert after[: len(before)] == before  # epoch 0's rows kept, not deleted
    assert {r.get("epoch") for r in after if r.get("val/acc")} == {"0", "1"}
    lines = (run / "metrics.csv").read_bytes().split(b"\n")[:-1]
    assert lines and all(line.endswith(b"\r") for line in lines)  # one line ending throughout
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 8
    # The run is finished: its first command once more starts a new run, not a resume.
    assert (run / "fit.done").is_file()
    assert main(["fit", *args]) == 0
    assert (run.with_name("version_1") / "fit.done").is_file()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_kill_9_mid_attack_then_the_same_command_completes(bp_digits_run, tmp_path):
    run = tmp_path / "run"  # a copy: the session's fixture run stays as it was
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(bp_digits_run / "config.yaml", run / "config.yaml")
    shutil.copy(bp_digits_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    attack = ["attack", "--config", str(run / "config.yaml")]
    attack += ["--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    attack += ["--suite.attacks", "[fgsm, pgd]", "--suite.n_samples", "16", "--suite.steps", "2"]
    attack += ["--suite.eps", "[0, 0.1]", "--suite.gradients", "[exact]"]

    killed = _sslr(tmp_path, *attack, kill="say:3")  # the suite's second progress line
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (folder,) = (run / "attacks").iterdir()
    assert not (folder / "robustness.csv").exists()  # absent, not half-written
    assert not (folder / "robustness.png").exists()
    kept = sorted(p.parent.name for p in (folder / ".batches").rglob("*.pt"))
    assert kept and kept[0].startswith("fgsm-")  # the finished cell's batches were kept

    again = _sslr(tmp_path, *attack)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (run / "attacks").iterdir()] == [folder.name]  # the same folder
    with open(folder / "robustness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["attack"], float(r["eps"])) for r in rows) == [
        ("fgsm", 0.0), ("fgsm", 0.1), ("pgd", 0.0), ("pgd", 0.1), ("worst", 0.0), ("worst", 0.1)
    ]  # fmt: skip
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and r["n"] == "16" for r in rows)
    assert (folder / "suite.yaml").is_file()
    assert [p.name for p in folder.rglob(".*") if p.name != ".sslr.lock"] == []
    # The resumed attack ends with the files of one never interrupted.
    straight = _sslr(tmp_path, *attack, "--out_dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    for name in ("robustness.csv", "masking.csv"):
        assert (folder / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


@pytest.mark.slow
def test_kill_9_of_one_rank_mid_attack_ends_every_process_and_the_rerun_completes(
    bp_digits_run, tmp_path
):
    """Two processes (gloo); rank 1 is killed at the suite's first cell line: rank 0 does not
    wait for it forever, and the same command (here on one process) finishes from the batches
    kept, with the files of an attack never interrupted."""
    best = str(bp_digits_run / "checkpoints" / "best.ckpt")
    attack = ["attack", "--config", str(bp_digits_run / "config.yaml"), "--ckpt_path", best]
    attack += ["--suite.attacks", "[fgsm, pgd]", "--suite.n_samples", "16", "--suite.steps", "2"]
    attack += ["--suite.eps", "[0, 0.1]", "--suite.gradients", "[exact]", "--suite.batch_size", "4"]
    attack += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    folder = tmp_path / "killed"
    began = time.monotonic()
    killed = _sslr(tmp_path, *attack, *ddp, "--out_dir", str(folder), kill="say:3", rank=1)
    assert killed.returncode != 0, killed.stdout[-2000:]  # ended, and said it failed
    assert time.monotonic() - began < 300
    assert not (folder / "robustness.csv").exists()
    assert list((folder / ".batches").rglob("*.pt"))  # rank 0's finished batches were kept
    again = _sslr(tmp_path, *attack, "--out_dir", str(folder))
    assert again.returncode == 0, again.stderr[-3000:]
    straight = _sslr(tmp_path, *attack, "--out_dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    for name in ("robustness.csv", "masking.csv"):
        assert (folder / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


GRID = """\
name: kill_grid
base_config: {root}/configs/quickstart.yaml
overlays:
  - {root}/configs/overlays/debug.yaml
  - trainer: {{limit_train_batches: 2, limit_val_batches: 0.2, limit_test_batches: 0.1}}
    data: {{init_args: {{batch_size: 32}}}}
backbones: [resnet18]
rules: [bp, usf]
seed: 0
pretrain: {{epochs: 1}}
finetune: {{epochs: 1, args: ["--optimizer.lr", "0.01"]}}
attack:
  suite: {{attacks: [fgsm, pgd], eps: [0, 8/255], steps: 2, gradients: [rule, exact],
          n_samples: 16, batch_size: 16}}
"""


def _grid_results(out: Path) -> dict[str, object]:
    """What a grid leaves a reader: each stage's marker (without its times and hashes), each
    best checkpoint's tensors, each rule's robustness rows and masking rows, the report's rows
    (the run folder named relative to the grid's)."""
    import json

    found: dict[str, object] = {}
    for done in sorted(out.rglob("done.json")):
        marker = json.loads(done.read_text())
        # Not compared: times, and checkpoint hashes (a checkpoint records its folder's path);
        # the checkpoints' tensors are compared instead.
        marker.pop("seconds", None)
        marker.pop("finished", None)
        marker.pop("sha256", None)
        for key in ("checkpoint", "surrogate", "start"):
            if isinstance(marker.get("inputs"), dict) and key in marker["inputs"]:
                marker["inputs"][key] = marker["inputs"][key] is not None
        if marker["stage"] == "report":  # when each stage it read had finished: times
            marker = {"stage": "report", "inputs": [i[:2] for i in marker["inputs"]]}
        found[str(done.relative_to(out))] = marker
    for ckpt in sorted(out.rglob("best.ckpt")):
        found[str(ckpt.relative_to(out))] = _state(ckpt)
    for name in ("robustness.csv", "masking.csv", "report.csv"):
        for path in sorted(out.rglob(name)):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows:  # the run folder, named from where the report was asked for
                if "run_dir" in row:
                    row["run_dir"] = str(Path(row["run_dir"]).relative_to(out.name))
            found[str(path.relative_to(out))] = rows
    return found


def _complete_or_absent(out: Path) -> None:
    import json

    for ckpt in out.rglob("*.ckpt"):
        if not ckpt.name.startswith("."):  # a cut write is a hidden temporary, never a name
            load_checkpoint(ckpt)
    for marker in out.rglob("*.json"):
        if not marker.name.startswith("."):
            json.loads(marker.read_text())
    for table in out.rglob("*.csv"):
        with open(table, newline="") as f:
            rows = list(csv.reader(f))
        assert all(len(row) == len(rows[0]) for row in rows), table


@pytest.mark.slow
def test_kill_9_at_points_of_a_grid_then_the_same_command_finishes_it(tmp_path):
    """`sslr grid` killed between stages, in a checkpoint write, and in an attack stage: every
    file is complete or absent, and the same command again ends with the results of a grid
    that was never interrupted."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID.format(root=ROOT))
    straight = _sslr(tmp_path, "grid", "--config", str(spec), "--out", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _grid_results(tmp_path / "straight")
    assert {k for k in expected if k.endswith("robustness.csv")} == {
        "resnet18/bp/robustness.csv",
        "resnet18/usf/robustness.csv",
    }
    # The k-th printed line that is an attack stage's first progress line: mid-attack.
    lines = straight.stdout.splitlines()
    first_cell = next(i for i, line in enumerate(lines) if re.match(r"^    attack \d+/", line))
    kills = {"marker:3": "between stages", "save:4": "in a checkpoint write"}
    kills[f"echo:{first_cell + 1}"] = "in an attack stage"
    for kill, where in kills.items():
        out = f"killed-{kill.replace(':', '-')}"
        killed = _sslr(tmp_path, "grid", "--config", str(spec), "--out", out, kill=kill)
        assert killed.returncode == -signal.SIGKILL, (where, killed.stderr[-3000:])
        assert not (tmp_path / out / "done.json").exists(), where  # the grid had not finished
        _complete_or_absent(tmp_path / out)
        again = _sslr(tmp_path, "grid", "--config", str(spec), "--out", out)
        assert again.returncode == 0, (where, again.stderr[-3000:])
        assert (tmp_path / out / "done.json").is_file()
        results = _grid_results(tmp_path / out)
        assert results.keys() == expected.keys(), where
        for key, value in expected.items():
            if key.endswith(".ckpt"):  # the same weights, to the bit
                assert value.keys() == results[key].keys(), (where, key)
                for name, tensor in value.items():
                    assert torch.equal(results[key][name], tensor), (where, key, name)
            else:
                assert results[key] == value, (where, key)
        hidden = [p for p in (tmp_path / out).rglob(".*") if p.name != ".sslr.lock"]
        assert hidden == [], (where, hidden)


# --------------------------------------------------------------------------- SIGTERM under SLURM


@pytest.mark.parametrize("submitit_slurm", [False, True])
def test_sigterm_stops_a_fit_except_in_a_submitit_slurm_job(monkeypatch, submitit_slurm):
    """Lightning stops a fit at SIGTERM; in a job submitit runs on SLURM, SIGTERM goes to the
    handler the process had (submitit's, which ignores it and waits for USR2 to requeue the
    stage), the fit runs on to its end, and the handler is the same again after the fit."""

    from lightning.pytorch import Callback
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sslr.trainer import SslrTrainer

    received = []

    def submitit_bypass(signum, frame):  # what submitit installs in its jobs: log and go on
        received.append(signum)

    class TermAtStep2(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    if submitit_slurm:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    previous = signal.signal(signal.SIGTERM, submitit_bypass)
    try:
        trainer = SslrTrainer(
            max_epochs=1, limit_train_batches=6, limit_val_batches=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[TermAtStep2()], accelerator="cpu", devices=1,
        )  # fmt: skip
        if submitit_slurm:
            trainer.fit(BoringModel())
            assert trainer.state.status == "finished" and trainer.global_step == 6
        else:
            with pytest.raises(SIGTERMException):
                trainer.fit(BoringModel())
            assert trainer.interrupted and trainer.global_step == 2
        assert received == [signal.SIGTERM]  # the process's own handler ran either way
        assert signal.getsignal(signal.SIGTERM) is submitit_bypass
    finally:
        signal.signal(signal.SIGTERM, previous)
