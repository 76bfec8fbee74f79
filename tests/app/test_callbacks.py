"""RuleSwitch and the task's checkpoint handling, driven through a Lightning Trainer."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from sslr.callbacks import RuleSwitch
from sslr.data import Digits
from sslr.feedback import feedback_layers
from sslr.tasks import ClassificationTask


class Spy(Callback):
    """Records, at each training batch, the rule in use and the optimizer's parameters."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        params = [id(p) for group in opt.param_groups for p in group["params"]]
        momentum = sum(
            "momentum_buffer" in opt.state[p] for g in opt.param_groups for p in g["params"]
        )
        self.seen.append((trainer.current_epoch, pl_module.rule, params, momentum))


def make_task(rule: str) -> ClassificationTask:
    data = Digits(batch_size=32, num_workers=0)
    task = ClassificationTask("resnet18", data.num_classes, rule=rule, mean=data.mean, std=data.std)
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.01, momentum=0.9)
    return task, data


@pytest.mark.parametrize("rule", ["usf", "brsf"])
def test_rule_switch_switches_at_the_epoch_and_keeps_the_optimizer(rule, tmp_path):
    task, data = make_task(rule)
    param_ids = [id(p) for p in task.parameters()]
    spy = Spy()
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[RuleSwitch(switch_epoch=2), spy],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=data)
    rules = {epoch: r for epoch, r, _, _ in spy.seen}
    assert rules == {0: "bp", 1: "bp", 2: rule}
    # The same parameter objects throughout, and momentum kept across the switch.
    assert all(params == param_ids for _, _, params, _ in spy.seen)
    first_after = next(m for epoch, _, _, m in spy.seen if epoch == 2)
    assert first_after == len(param_ids)
    assert [id(p) for p in task.parameters()] == param_ids


def test_checkpoint_before_switch_loads_into_rule_model(tmp_path):
    task, data = make_task("frsf")
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[RuleSwitch(switch_epoch=5)],
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=data)
    ckpt = tmp_path / "bp_phase.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = ClassificationTask.load_from_checkpoint(ckpt)
    assert restored.rule == "bp"
    assert {layer.rule for _, layer in feedback_layers(restored.network)} == {"bp"}
    x = torch.rand(2, 3, 32, 32)
    task.eval(), restored.eval()
    torch.testing.assert_close(restored(x), task(x))
