"""sslr's Trainer: Lightning's, plus the ``attack`` entry point that ``sslr attack`` runs."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sslr.errors import UserError
from sslr.robustness.config import SuiteConfig


class SslrTrainer(Trainer):
    """Lightning's Trainer with ``attack``: the robustness suite as a subcommand."""

    def attack(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        suite: SuiteConfig | None = None,
        out_dir: str | None = None,
    ) -> list:
        """Attack a checkpoint: robustness.csv and robustness.png in its run folder, logged too.

        Args:
            model: the task of the run's config (its weights come from ``ckpt_path``).
            datamodule: the run's data; the fixed, seeded subset is drawn from its test split.
            ckpt_path: the checkpoint to evaluate (runs/.../checkpoints/best.ckpt).
            suite: attacks, norms, epsilons, gradient sources, subset size (``--suite.*``).
            out_dir: where the CSV and PNG go; by default the checkpoint's run folder.
        """
        if not ckpt_path:
            raise UserError(
                "sslr attack needs --ckpt_path: the checkpoint to evaluate "
                "(runs/<name>/version_<k>/checkpoints/best.ckpt)"
            )
        suite = suite or SuiteConfig()
        load_checkpoint(model, ckpt_path)
        model.to(self.strategy.root_device).eval()
        folder = Path(out_dir) if out_dir else run_folder(ckpt_path)
        rank_zero_info(f"sslr attack: {ckpt_path} (rule {model.rule}) -> {folder}")
        if _is_hashing(model):
            from sslr.hashing.suite import HashingSuiteConfig, run_hashing_suite

            hashing = HashingSuiteConfig.from_suite(suite)
            return run_hashing_suite(
                model, datamodule, hashing, loggers=self.loggers, out_dir=folder
            )
        from sslr.robustness import run_suite

        return run_suite(model, datamodule, suite, loggers=self.loggers, out_dir=folder)


def load_checkpoint(model: LightningModule, ckpt_path: str) -> None:
    """Load a Lightning checkpoint into ``model`` in place (rule and feedback state included)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def run_folder(ckpt_path: str) -> Path:
    """The run folder of a checkpoint: runs/<name>/version_<k>/checkpoints/x.ckpt -> version_<k>."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _is_hashing(model: LightningModule) -> bool:
    return type(model).__name__ == "HashingTask"
