"""BP first, then the rule: the paper's fine-tuning regime inside one run."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sslr.feedback import set_rule


class RuleSwitch(Callback):
    """Train with bp for ``switch_epoch`` epochs, then switch to the task's rule in place.

    The switch goes through :func:`sslr.feedback.set_rule`: no module is replaced and the
    parameters stay the same objects, so the optimizer and its state carry over. The task's
    ``hparams.rule`` names the rule switched to; the epoch of the switch is logged as
    ``rule_switch/epoch`` and the rule in use as ``rule_switch/active`` (0 = bp, 1 = the rule).
    """

    def __init__(self, switch_epoch: int = 1) -> None:
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0, got {switch_epoch}")
        self.switch_epoch = switch_epoch

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run past the switch already has the rule (restored from the checkpoint).
        if trainer.current_epoch < self.switch_epoch:
            set_rule(pl_module.network, "bp")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        target = pl_module.hparams.rule
        if trainer.current_epoch == self.switch_epoch and pl_module.rule != target:
            set_rule(pl_module.network, target)
            rank_zero_info(f"RuleSwitch: epoch {trainer.current_epoch}: bp -> {target}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        active = float(pl_module.rule != "bp")
        pl_module.log("rule_switch/active", active, on_epoch=True, sync_dist=False)
        pl_module.log("rule_switch/epoch", float(self.switch_epoch), on_epoch=True)
