"""sslr's Trainer: Lightning's, plus the ``attack`` entry point that ``sslr attack`` runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities import rank_zero_info

from sslr import checkpoints
from sslr.attack_run import RetiredHashingOptions, attack_checkpoint, load_weights
from sslr.errors import UserError
from sslr.robustness import SuiteConfig
from sslr.robustness.shards import Shard


class SubmititSignals(_SignalConnector):
    """Lightning's signal handlers, with SIGTERM left to submitit, in a job submitit runs on SLURM.

    Lightning stops a fit at the first SIGTERM (``SIGTERMException``). SLURM sends SIGTERM as soon
    as it preempts a job (https://slurm.schedmd.com/preempt.html), and then, where the cluster
    signals preemptions, the job's USR2; 90 s before a time limit USR2 alone. submitit ignores
    SIGTERM on purpose and at USR2 has the stage checkpointed
    (:meth:`sslr.grid.launch.StageJob.checkpoint`) and requeued. Stopped by Lightning first, the
    fit would end as a failed job, never requeued, so here SIGTERM keeps the handler it had before
    the fit (submitit's). Lightning installs its handler whatever the cluster environment's
    ``auto_requeue``, hence this subclass.
    """

    def register_signal_handlers(self) -> None:
        super().register_signal_handlers()
        before = self._original_handlers.get(signal.SIGTERM)
        if before is not None:
            self._register_signal(signal.SIGTERM, before)


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
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # a job of sslr grid --launcher slurm
            self._signal_connector = SubmititSignals(self)

    def attack(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        suite: SuiteConfig | None = None,
        hashing: RetiredHashingOptions | None = None,
        out_dir: str | None = None,
        weights_only: bool | None = None,
    ) -> list:
        """Attack a checkpoint, classification or hashing alike: robustness.csv, its PNG and
        the resolved settings (suite.yaml) in a folder of this attack under the run folder
        (``<run>/attacks/<checkpoint>-<key>/``), logged too, and the table printed.

        Args:
            model: the task of the run's config (its weights come from ``ckpt_path``).
            datamodule: the run's data; the fixed, seeded subset is drawn from its test split
                (hashing: the test queries, scored against the test database).
            ckpt_path: the checkpoint to evaluate (runs/.../checkpoints/best.ckpt).
            suite: attacks, norms, epsilons, gradient sources, subset size (``--suite.*``),
                for either task.
            hashing: retired (``--hashing.*`` now fails, naming the ``--suite`` key to use).
            out_dir: write the CSV, PNG and suite.yaml here instead.
            weights_only: ignored (every checkpoint is opened safely); accepted so a run's
                saved fit config works as ``--config`` here.
        """
        if hashing is not None and not isinstance(hashing, RetiredHashingOptions):
            given = hashing.as_dict() if hasattr(hashing, "as_dict") else dict(hashing)
            RetiredHashingOptions(**given)  # raises, naming the --suite key that replaced it
        if not ckpt_path:
            raise UserError(
                "sslr attack needs --ckpt_path: the checkpoint to evaluate "
                "(runs/<name>/version_<k>/checkpoints/best.ckpt)"
            )
        # Through Lightning's launcher, as fit and test: under DDP (``--trainer.devices N
        # --trainer.strategy ddp``, torchrun, srun) every process runs the attack on its share.
        return call._call_and_handle_interrupt(
            self, self._attack_impl, model, datamodule, ckpt_path, suite or SuiteConfig(), out_dir
        )

    def _attack_impl(self, model, datamodule, ckpt_path, suite, out_dir) -> list:
        self.strategy.setup_environment()  # the process group, this process's device
        shard = Shard(self.global_rank, self.world_size)
        devices = shard.gather(str(self.strategy.root_device))
        if shard.world_size > 1:
            rank_zero_info(
                f"sslr attack: {shard.world_size} processes share the work, on "
                f"{', '.join(devices)} ({self.num_nodes} node{'s' * (self.num_nodes > 1)})"
            )
        return attack_checkpoint(
            model,
            datamodule,
            ckpt_path,
            suite,
            device=self.strategy.root_device,
            loggers=self.loggers,
            run_dir=run_folder(ckpt_path),
            out_dir=out_dir,
            say=rank_zero_info,
            shard=shard,
        )


def load_checkpoint(model: LightningModule, ckpt_path: str, weights_only: bool = True) -> None:
    """Load a Lightning checkpoint into ``model`` in place (rule and feedback state included),
    opened safely and checked to fit ``model`` (:func:`sslr.attack_run.load_weights`)."""
    load_weights(model, ckpt_path, weights_only)


def run_folder(ckpt_path: str) -> Path:
    """The run folder of a checkpoint: runs/<name>/version_<k>/checkpoints/x.ckpt -> version_<k>."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
