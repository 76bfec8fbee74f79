"""Image classification with a torchvision backbone fine-tuned by a feedback learning rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from sslr.feedback.learning import Mirror
from sslr.tasks.backbones import build_network
from sslr.tasks.base import IMAGENET_MEAN, IMAGENET_STD, CompileMode, FeedbackTask

Rule = Literal["bp", "fa", "dfa", "ldfa", "usf", "frsf", "brsf", "kp", "wm"]
Scale = Literal["xavier", "meanabs", "none"]


class ClassificationTask(FeedbackTask):
    """A classifier whose Conv2d/Linear layers learn with ``rule``.

    Args:
        backbone: a torchvision classification model name (``torchvision.models.get_model``).
        num_classes: classes of the data (linked from the DataModule by the CLI).
        rule: the learning rule of every converted layer: bp, fa, dfa, ldfa, usf, frsf, brsf, kp or
            wm
            (``sslr fit --help`` and the README's Rules say what each is).
        scale: the feedback scale: xavier (the paper's, via BioTorch), meanabs or none.
        exclude: fnmatch patterns of module names kept on plain BP (e.g. ``["fc"]``).
        weights: torchvision weights to start from (e.g. IMAGENET1K_V1), or None.
        pretrained_ckpt: an sslr checkpoint or plain state dict to start from (wins over
            ``weights``); heads of another size are re-initialized.
        small_input: 32-px stem for ResNets (3x3 stride-1 first conv, no max-pool).
        mean, std: normalization applied inside ``forward`` (linked from the DataModule).
        seed: seed of the feedback matrices (fa, frsf) and of brsf's draws.
        feedback_rank: ldfa only: the rank of B (default: the network's output size).
        kp_decay: kp only: the decay of B - W per optimizer step; None (the default) takes the
            optimizer's lr * weight_decay, as Kolen-Pollack does.
        mirror_rate, mirror_noise, mirror_decay, mirror_batch, mirror_every: wm only: the step
            size of B's mirror update, the noise's standard deviation, B's decay (B tends to
            W / decay), the noise inputs per mirror step, and a mirror step after every
            ``mirror_every``-th optimizer step (:class:`sslr.feedback.learning.Mirror`).
        label_smoothing: cross-entropy label smoothing.
        compile: run the network through ``torch.compile`` inside the Trainer: true (the
            default mode) or a mode, e.g. ``max-autotune-no-cudagraphs``. The first steps pay
            the compilation; see the README's Speed section for when it pays off.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        rule: Rule = "bp",
        scale: Scale = "xavier",
        exclude: Sequence[str] = (),
        weights: str | None = None,
        pretrained_ckpt: str | None = None,
        small_input: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        feedback_rank: int | None = None,
        kp_decay: float | None = None,
        mirror_rate: float = 0.02,
        mirror_noise: float = 1.0,
        mirror_decay: float = 1.0,
        mirror_batch: int = 16,
        mirror_every: int = 1,
        label_smoothing: float = 0.0,
        compile: bool | CompileMode = False,
    ) -> None:
        super().__init__()
        self._check_compile(compile)
        self.save_hyperparameters()
        network = build_network(backbone, num_classes, small_input=small_input)
        self._init_feedback(
            network,
            rule=rule,
            scale=scale,
            exclude=exclude,
            seed=seed,
            mean=mean,
            std=std,
            rank=feedback_rank,
            kp_decay=kp_decay,
            mirror=Mirror(mirror_rate, mirror_noise, mirror_decay, mirror_batch, mirror_every),
        )
        self.num_classes = num_classes
        top5 = min(5, num_classes)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images ``x`` (N, 3, H, W) in [0, 1]."""
        return self.network(self.normalize(x))

    def _step(self, batch, metrics) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        metrics.update(logits.detach(), y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_metrics)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._step(batch, self.val_metrics)
        self.log("val/loss", loss)
        self.log_dict(self.val_metrics, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss = self._step(batch, self.test_metrics)
        self.log("test/loss", loss)
        self.log_dict(self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    def configure_callbacks(self):
        return self.checkpoint_callbacks("val/acc")
