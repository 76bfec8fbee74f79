"""HashingTask: the hash layer, the two learning rates, HashNet's continuation, and a short run
on real data (Digits) that must learn codes far better than random ones."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslr.cli import main
from sslr.feedback import FeedbackLinear
from sslr.hashing import hashnet_beta
from sslr.metrics import mean_average_precision
from sslr.tasks.hashing import HashingTask


def logged(run_dir, key: str) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_short_run_learns_codes_far_better_than_random(trained):
    task, dm = trained.model, trained.datamodule
    trained.trainer.test(task, datamodule=dm, verbose=False)
    test_map = float(trained.trainer.callback_metrics["test/mAP"])

    # The same queries and database with random codes: mAP ~ 0.1 (10 balanced classes).
    queries, database = (dm.split(name)[1] for name in ("query", "database"))
    gen = torch.Generator().manual_seed(0)
    random = [
        torch.randint(0, 2, (len(y), 16), generator=gen) * 2.0 - 1 for y in (queries, database)
    ]
    random_map = mean_average_precision(*random, queries, database)

    assert random_map < 0.2, random_map
    # Margins checked over seeds 0, 1, 2 of this short run from scratch (--seed_everything):
    # test mAP 0.598, 0.646, 0.706 and val mAP 0.637, 0.660, 0.756; the bounds sit 0.2 below
    # the lowest, still far above random codes (about 0.1).
    assert test_map > 0.4 and test_map > random_map + 0.25, (test_map, random_map)
    assert logged(trained.run_dir, "val/mAP")[-1] > 0.4
    assert (trained.run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (trained.run_dir / "checkpoints" / "last.ckpt").is_file()


def test_yaml_optimizer_gets_two_learning_rates(trained):
    # No top-level `optimizer:` in the config: LightningCLI keeps HashingTask's
    # configure_optimizers, with the optimizer injected from model.init_args.optimizer.
    optimizer = trained.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.Adam)
    groups = {g["name"]: g for g in optimizer.param_groups}
    hp = trained.model.hparams
    assert groups["backbone"]["lr"] == pytest.approx(hp.lr)
    assert groups["hash_layer"]["lr"] == pytest.approx(hp.lr * hp.head_lr_mult)
    assert [p.shape for p in groups["hash_layer"]["params"]] == [(16, 512), (16,)]
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(trained.model.parameters()))


def test_checkpoint_reloads_weights_only_with_the_same_codes(trained):
    ckpt = trained.run_dir / "checkpoints" / "last.ckpt"
    loaded = HashingTask.load_from_checkpoint(ckpt, weights_only=True).eval()
    x = trained.datamodule.split("query")[0][:8]
    assert torch.equal(loaded.encode(x), trained.model.encode(x))


@pytest.mark.parametrize("rule", ["bp", "usf"])
def test_hash_layer_replaces_the_head(rule):
    task = HashingTask(backbone="resnet18", bits=48, num_classes=10, rule=rule, lr=1e-5)
    head = task.network.get_submodule(task.hash_layer)
    assert isinstance(head, FeedbackLinear) and head.rule == rule
    assert (head.in_features, head.out_features) == (512, 48)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)  # N(0, 0.01), as the paper
    assert torch.all(head.bias == 0)
    u = task.eval()(torch.rand(3, 3, 16, 16))
    assert u.shape == (3, 48) and bool((u.abs() < 1).all())
    groups = task.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-4])  # head_lr_mult 10


def test_excluded_hash_layer_stays_plain():
    task = HashingTask(backbone="resnet18", bits=16, num_classes=10, rule="usf", exclude=["fc"])
    assert type(task.network.fc) is nn.Linear
    assert isinstance(task.network.layer4[1].conv2, type(task.network.conv1))


@pytest.mark.parametrize("bits", [0, -32, 2.5, True])
def test_bits_must_be_a_positive_integer(bits):
    with pytest.raises(ValueError, match="bits must be a positive integer") as err:
        HashingTask(bits=bits)
    assert "16, 32, 48, 64" in str(err.value)


def test_bad_bits_through_the_cli_is_one_line(capsys, quick_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *quick_args, "--model.init_args.bits", "0"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "bits must be a positive integer" in last, err


def test_unknown_loss_option_is_an_error():
    with pytest.raises(ValueError, match="no option"):
        HashingTask(bits=16, loss="dch", loss_options={"gama": 10.0})


def test_hashnet_continuation_raises_beta_and_keeps_it(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    labels = nn.functional.one_hot(torch.arange(8) % 2, 2).float()
    task = HashingTask(bits=16, num_classes=2, loss="hashnet", continuation_step=1, lr=1e-4)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,  # configure_callbacks adds a ModelCheckpoint
    )
    trainer.fit(task, DataLoader(TensorDataset(x, labels), batch_size=4))
    beta = hashnet_beta(2, step_size=1)  # the last of steps 0, 1, 2
    assert beta > 1 and float(task.code_scale) == pytest.approx(beta)
    assert "code_scale" in task.state_dict()
    task.eval()
    z = task.network(task.normalize(x))
    assert torch.allclose(task(x), torch.tanh(beta * z), atol=1e-6)


def test_test_logs_map_and_map_at_k(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(12, 3, 16, 16)
    labels = nn.functional.one_hot(torch.arange(12) % 3, 3).float()
    queries = DataLoader(TensorDataset(x[:4], labels[:4]), batch_size=4)
    database = DataLoader(TensorDataset(x[4:], labels[4:]), batch_size=4)
    task = HashingTask(bits=8, num_classes=3, map_topk=5)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.test(task, [queries, database], verbose=False)
    results = {k: float(v) for k, v in trainer.callback_metrics.items()}
    task.eval()  # the Trainer gives the task back in training mode (BatchNorm: batch statistics)
    codes = torch.cat([task.encode(x[:4]), task.encode(x[4:])])
    expected = mean_average_precision(codes[:4], codes[4:], labels[:4], labels[4:])
    assert results["test/mAP"] == pytest.approx(expected, abs=1e-6)
    top5 = mean_average_precision(codes[:4], codes[4:], labels[:4], labels[4:], topk=5)
    assert results["test/mAP@5"] == pytest.approx(top5, abs=1e-6)
