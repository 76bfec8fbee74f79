"""Watch how well each layer's feedback B aligns with its weights W during training."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from sslr.feedback import alignment


class AlignmentMonitor(Callback):
    """Log, every ``every_n_epochs`` epochs, the angle between B and W (degrees) and the norm
    ratio ||B|| / ||W|| of each feedback layer, and their means over layers.

    Metrics: ``align/angle/<layer>``, ``align/ratio/<layer>`` (with ``per_layer``), and
    ``align/angle_mean``, ``align/ratio_mean``. For bp the angle is 0 and the ratio 1; for
    usf the angle measures how far the weights are from their own signs.
    """

    def __init__(self, every_n_epochs: int = 1, per_layer: bool = True) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.per_layer = per_layer

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:
            return
        stats = alignment(pl_module.network)
        if not stats:
            return
        metrics = {
            "align/angle_mean": sum(a for a, _ in stats.values()) / len(stats),
            "align/ratio_mean": sum(r for _, r in stats.values()) / len(stats),
        }
        if self.per_layer:
            for name, (angle, ratio) in stats.items():
                metrics[f"align/angle/{name}"] = angle
                metrics[f"align/ratio/{name}"] = ratio
        pl_module.log_dict(metrics, on_epoch=True)
