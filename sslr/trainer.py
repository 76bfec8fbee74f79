"""sslr's Trainer: Lightning's, plus the ``attack`` entry point that ``sslr attack`` runs."""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sslr import checkpoints
from sslr.errors import UserError
from sslr.hashing.suite import HashingSuiteConfig, run_hashing_suite
from sslr.robustness import SuiteConfig, run_suite
from sslr.tasks.hashing import HashingTask


class SslrTrainer(Trainer):
    """Lightning's Trainer with ``attack``: the robustness suite as a subcommand.

    Checkpoints are read without running code and written atomically
    (:class:`sslr.checkpoints.SafeCheckpointIO`) unless a CheckpointIO plugin is given.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        connector = self._accelerator_connector
        if not isinstance(getattr(connector, "checkpoint_io", None), CheckpointIO):
            self.strategy.checkpoint_io = checkpoints.SafeCheckpointIO()

    def attack(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        suite: SuiteConfig | None = None,
        hashing: HashingSuiteConfig | None = None,
        out_dir: str | None = None,
        weights_only: bool | None = None,
    ) -> list:
        """Attack a checkpoint: robustness.csv and robustness.png in its run folder, logged too.

        Args:
            model: the task of the run's config (its weights come from ``ckpt_path``).
            datamodule: the run's data; the fixed, seeded subset is drawn from its test split.
            ckpt_path: the checkpoint to evaluate (runs/.../checkpoints/best.ckpt).
            suite: classification attacks: attacks, norms, epsilons, gradient sources, subset
                size (``--suite.*``).
            hashing: the hashing attack suite for a HashingTask checkpoint (``--hashing.*``):
                untargeted PGD/HAG (mAP) and targeted P2P/DHTA (t-mAP).
            out_dir: where the CSV and PNG go; by default the checkpoint's run folder.
            weights_only: passed to ``torch.load`` (default: False, a checkpoint sslr wrote);
                accepted so a run's saved fit config works as ``--config`` here.
        """
        if not ckpt_path:
            raise UserError(
                "sslr attack needs --ckpt_path: the checkpoint to evaluate "
                "(runs/<name>/version_<k>/checkpoints/best.ckpt)"
            )
        load_checkpoint(model, ckpt_path, weights_only=bool(weights_only))
        model.to(self.strategy.root_device).eval()
        folder = Path(out_dir) if out_dir else run_folder(ckpt_path)
        rank_zero_info(f"sslr attack: {ckpt_path} (rule {model.rule}) -> {folder}")
        if isinstance(model, HashingTask):
            config = hashing or HashingSuiteConfig()
            return run_hashing_suite(
                model, datamodule, config, loggers=self.loggers, out_dir=folder
            )
        config = suite or SuiteConfig()
        return run_suite(model, datamodule, config, loggers=self.loggers, out_dir=folder)


def load_checkpoint(model: LightningModule, ckpt_path: str, weights_only: bool = True) -> None:
    """Load a Lightning checkpoint into ``model`` in place (rule and feedback state included).

    The file is opened safely (:func:`sslr.checkpoints.load_checkpoint`) whatever
    ``weights_only`` says, and must fit ``model`` (:func:`sslr.checkpoints.check_fits`).
    """
    del weights_only  # kept for callers; no checkpoint is ever opened unsafely
    checkpoint = checkpoints.load_checkpoint(ckpt_path, "--ckpt_path")
    checkpoints.check_fits(checkpoint, model, ckpt_path, "--ckpt_path")
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def run_folder(ckpt_path: str) -> Path:
    """The run folder of a checkpoint: runs/<name>/version_<k>/checkpoints/x.ckpt -> version_<k>."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
