"""RobustnessEvaluation in a real Trainer: at the end of fit (and every N epochs) and of test
(under Lightning's inference mode), metrics in the loggers, files in the run folder, the model
as it was."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from sslr.callbacks.robustness import RobustnessEvaluation
from sslr.robustness import SuiteConfig


class ContractTask(LightningModule):
    """The ClassificationTask contract: .network (normalized input), .mean/.std, forward(x01),
    hparams.num_classes."""

    def __init__(self, network: torch.nn.Module, mean, std, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x):
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return self.network((x - mean) / std)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


SUITE = SuiteConfig(
    attacks=["pgd"], eps=[0.0, 0.25], gradients=["rule", "exact"], steps=2, n_samples=24
)


def test_callback_at_fit_end_every_epoch_and_test_end(target, digits, tmp_path):
    (x_train, y_train), (x_test, y_test) = digits
    train = DataLoader(TensorDataset(x_train[:64], y_train[:64]), batch_size=32)
    val = DataLoader(TensorDataset(x_test[:48], y_test[:48]), batch_size=48)
    test = DataLoader(TensorDataset(x_test[48:96], y_test[48:96]), batch_size=48)
    task = ContractTask(target.network.train(), target.mean, target.std)
    callback = RobustnessEvaluation(suite=SUITE, every_n_epochs=1)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, train, val)
    assert task.training  # given back in training mode
    # after epoch 0 (2 steps) and epoch 1 (4 steps); not again at fit end (same weights)
    assert [(stage, step) for stage, step, _ in callback.results] == [("fit", 2), ("fit", 4)]
    trainer.test(task, test)
    assert [s for s, _, _ in callback.results] == ["fit", "fit", "test"]

    for _, _, rows in callback.results:
        rows = [r for r in rows if r.attack != "worst"]
        assert [r.gradient for r in rows] == ["rule", "rule", "exact", "exact"]
        assert rows[0].accuracy >= 0.8 and rows[1].accuracy <= 0.1  # attacked, also under test
        assert all(r.n == 24 for r in rows)

    with open(f"{trainer.log_dir}/metrics.csv") as f:
        logged = list(csv.DictReader(f))
    key = "robust/pgd/rule/eps=0.25"
    values = [float(r[key]) for r in logged if r.get(key)]
    assert len(values) == 3
    assert values[-1] == pytest.approx(callback.results[-1][2][1].accuracy)
    assert any(r.get("robust/pgd/exact/eps=0") for r in logged)
    files = sorted(p.name for p in (tmp_path / "run" / "version_0" / "robustness").iterdir())
    assert files == [
        "fit_step=2.csv",
        "fit_step=2.png",
        "fit_step=4.csv",
        "fit_step=4.png",
        "test_step=4.csv",
        "test_step=4.png",
    ]


def test_callback_at_fit_end_only_by_default(target, digits, tmp_path):
    (x_train, y_train), (x_test, y_test) = digits
    train = DataLoader(TensorDataset(x_train[:32], y_train[:32]), batch_size=32)
    val = DataLoader(TensorDataset(x_test[:24], y_test[:24]), batch_size=24)
    callback = RobustnessEvaluation(suite=SUITE, save_files=False, prefix="robust_{stage}")
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(ContractTask(target.network.train(), target.mean, target.std), train, val)
    assert [(stage, step) for stage, step, _ in callback.results] == [("fit", 2)]
    with open(f"{trainer.log_dir}/metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("robust_fit/pgd/exact/eps=0.25")]
    assert len(logged) == 1 and logged[0]["step"] == "2"
    assert not (tmp_path / "run" / "version_0" / "robustness").exists()  # save_files=False


def test_callback_rejects_transfer_without_surrogate():
    with pytest.raises(ValueError, match="surrogate"):
        RobustnessEvaluation(suite=SuiteConfig(gradients=["transfer"]))
    with pytest.raises(ValueError, match="every_n_epochs"):
        RobustnessEvaluation(every_n_epochs=-1)


def test_callback_is_configurable_from_yaml(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RobustnessEvaluation, "robustness")
    path = tmp_path / "cb.yaml"
    path.write_text(
        "robustness:\n  every_n_epochs: 5\n  suite:\n    attacks: [fgsm]\n    n_samples: 128\n"
    )
    parser.add_argument("--config", action="config")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = instantiate(parser.parse_args(["--config", str(path)]))
    callback = cfg.robustness
    assert isinstance(callback, RobustnessEvaluation)
    assert callback.every_n_epochs == 5
    assert callback.suite.attacks == ["fgsm"] and callback.suite.n_samples == 128
