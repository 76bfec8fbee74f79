"""RobustnessEvaluation: the attack suite during a Lightning run (end of fit and test,
optionally every N epochs) on a small fixed subset, logged as metrics and curves; for
classification and hashing tasks alike (the engine's ``run_suite``)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from sslr.robustness import (
    GradientSource,
    RobustnessRow,
    SuiteConfig,
    log_rows,
    plot_curves,
    run_suite,
    write_csv,
)
from sslr.robustness.shards import Shard


class RobustnessEvaluation(Callback):
    """Run the attack suite on the task's network (a ClassificationTask: accuracy; a
    HashingTask: mAP / t-mAP of the split's queries against its database) and log
    ``robust/<attack>/<gradient>/eps=<eps>`` metrics to every logger (for W&B also a table and
    score-vs-eps line plots), at the end of fit (validation split), at the end of test (test
    split) and, with ``every_n_epochs``, after every N training epochs (validation split).

    Attacks run in ``torch.inference_mode(False)`` with gradients on (Lightning tests under
    inference mode), in eval mode, and leave the model exactly as they found it: training
    flags, parameters, ``.grad``, buffers and global random states. Under DDP every rank
    attacks its share of the subset's batches (:mod:`sslr.robustness.shards`: the numbers of a
    single process) and global rank 0 writes and logs. ``sslr attack`` is the full evaluation of
    a checkpoint; this is the monitor.

    Args:
        suite: the attacks, epsilons and gradient sources (default: the ``SuiteConfig``
            defaults on a 256-image subset).
        every_n_epochs: also evaluate after every N training epochs (0: never).
        at_fit_end: evaluate when training ends.
        at_test_end: evaluate when testing ends.
        save_files: write ``<stage>_step=<global step>.csv`` and ``.png`` under
            ``<log_dir>/robustness/``.
        prefix: metric-name prefix; ``{stage}`` in it becomes ``fit`` or ``test`` (e.g.
            ``"robust_{stage}"`` keeps the validation and test evaluations apart in
            metrics.csv, where both land at the same step after ``trainer.test``).
    """

    def __init__(
        self,
        suite: SuiteConfig | None = None,
        every_n_epochs: int = 0,
        at_fit_end: bool = True,
        at_test_end: bool = True,
        save_files: bool = True,
        prefix: str = "robust",
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.suite = suite if suite is not None else SuiteConfig(n_samples=256)
        self.every_n_epochs = int(every_n_epochs)
        self.at_fit_end = at_fit_end
        self.at_test_end = at_test_end
        self.save_files = save_files
        self.prefix = prefix
        # (stage, global step, rows) of every evaluation, in order
        self.results: list[tuple[str, int, list[RobustnessRow]]] = []
        self._surrogate = None
        self._last_fit_step: int | None = None
        wants_transfer = GradientSource.TRANSFER in self.suite.gradient_sources
        if wants_transfer and self.suite.surrogate_ckpt is None:
            raise ValueError(
                "gradient 'transfer' needs a surrogate: set suite.surrogate_ckpt to the bp "
                "fine-tuned model's checkpoint"
            )

    # --- hooks -----------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, "fit", trainer.val_dataloaders)
            self._last_fit_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_train_end, not on_fit_end: by then the strategy has moved the model to the CPU.
        # Not twice for the same weights (every_n_epochs may have just evaluated them).
        if self.at_fit_end and self._last_fit_step != trainer.global_step:
            self._run(trainer, pl_module, "fit", trainer.val_dataloaders)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_test_end:
            self._run(trainer, pl_module, "test", trainer.test_dataloaders)

    # --- work --------------------------------------------------------------------------------

    def _run(self, trainer: Trainer, pl_module: LightningModule, stage: str, loaders) -> None:
        if trainer.sanity_checking:
            return
        if loaders is None or (isinstance(loaders, (list, tuple)) and not loaders):
            split = "validation" if stage == "fit" else "test"
            rank_zero_warn(f"RobustnessEvaluation: no {split} data at the end of {stage}; skipped")
            return
        surrogate = self._load_surrogate(pl_module)
        shard = Shard(trainer.global_rank, trainer.world_size)
        if shard.world_size > 1:  # every rank reads the whole split, not its sampler's share
            loaders = _whole(loaders)
        # The model is in training mode during fit: attacked in eval mode, put back after.
        rows = run_suite(
            pl_module, loaders, self.suite, surrogate=surrogate, warn_train_mode=False, shard=shard
        )
        log_dir = trainer.log_dir  # under DDP a broadcast from rank 0: every rank asks
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        png = None
        if self.save_files:
            out_dir = Path(log_dir or trainer.default_root_dir) / "robustness"
            out_dir.mkdir(parents=True, exist_ok=True)
            write_csv(rows, out_dir / f"{stage}_step={step}.csv")
            png = plot_curves(
                rows, out_dir / f"{stage}_step={step}.png", title=f"{stage}, step {step}"
            )
        prefix = self.prefix.format(stage=stage)
        from sslr.loggers import run_meta_of

        meta = run_meta_of(pl_module, getattr(trainer, "datamodule", None))
        log_rows(rows, trainer.loggers, step=step, png=png, prefix=prefix, run_meta=meta)
        self.results.append((stage, step, rows))

    def _load_surrogate(self, pl_module: LightningModule):
        wants = GradientSource.TRANSFER in self.suite.gradient_sources
        if wants and self._surrogate is None and self.suite.surrogate_ckpt is not None:
            from sslr.attack_run import load_surrogate

            self._surrogate = load_surrogate(pl_module, self.suite.surrogate_ckpt, pl_module.device)
        return self._surrogate if wants else None


def _whole(loaders):
    """Lightning's loaders under DDP read each rank's share (a DistributedSampler, padded with
    duplicates): the same data in order, whole, for the engine to deal out itself."""
    from torch.utils.data import DataLoader

    def whole(loader):
        dataset = getattr(loader, "dataset", None)
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
            return loader
        return DataLoader(dataset, batch_size=loader.batch_size or 1, shuffle=False)

    if isinstance(loaders, (list, tuple)):
        return [whole(loader) for loader in loaders]
    return whole(loaders)
