"""Deep-hashing image retrieval: a torchvision backbone whose head is a K-bit hash layer,
fine-tuned by a feedback learning rule with a pairwise or central hashing loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from sslr.feedback.learning import Mirror
from sslr.hashing.losses import get_loss, hashnet_beta
from sslr.metrics import MeanAveragePrecision, binarize
from sslr.tasks.backbones import build_network, head_name
from sslr.tasks.base import IMAGENET_MEAN, IMAGENET_STD, CompileMode, FeedbackTask
from sslr.tasks.classification import Rule, Scale

LossName = Literal["dpsh", "hashnet", "dch", "csq", "hyp2"]

USUAL_BITS = (16, 32, 48, 64)


def _check_positive_int(name: str, value, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{hint}, got {value!r}")


class HashingTask(FeedbackTask):
    """Learning to hash with a feedback rule: u = tanh(network(x)) (N, K), codes b = sign(u).

    The backbone's last ``nn.Linear`` (``head_name``) becomes the hash layer Linear(in, bits),
    initialized N(0, 0.01) with zero bias as in the paper's code; like every other Conv2d/Linear
    it learns with ``rule`` unless ``exclude`` names it. Retrieval is scored by the mAP of
    Hamming ranking (:class:`sslr.metrics.MeanAveragePrecision`) of the queries (dataloader 0)
    against the database (dataloader 1): ``val/mAP`` and ``test/mAP`` over the whole database,
    plus ``test/mAP@<map_topk>`` when ``map_topk`` is set.

    Optimization: two parameter groups, the backbone at ``lr`` and the hash layer at
    ``lr * head_lr_mult`` (the paper: Adam, 1e-5 and 1e-4, weight decay 5e-4); a loss with
    parameters (HyP2's proxies) adds a third, ``loss``, at the hash layer's rate. ``optimizer``
    and ``lr_scheduler`` are callables injected by LightningCLI from the model's own config
    (``model.init_args.optimizer: {class_path: torch.optim.Adam, init_args: {weight_decay:
    5.0e-4}}``); the groups' ``lr`` wins over an ``lr`` given there. Configs must not have a
    top-level ``optimizer:`` key: LightningCLI would then replace this ``configure_optimizers``
    (one group, one learning rate) with a warning.

    Args:
        backbone: a torchvision classification model name (alexnet, vgg16, resnet18, ...).
        bits: code length K, a positive integer; the literature uses 16, 32, 48 or 64.
        num_classes: label classes of the data (linked from the DataModule by the CLI).
        loss: hashing loss (:mod:`sslr.hashing.losses`): dpsh, hashnet, dch, csq or hyp2.
        loss_options: keyword options of the loss (e.g. ``{quantization_weight: 0.1}``,
            DCH's ``gamma``, HyP2's ``pair_weight`` and ``threshold``); unknown names are an
            error.
        rule: the learning rule of every converted layer: bp, fa, dfa, ldfa, usf, frsf, brsf, kp or
            wm
            (``sslr fit --help`` and the README's Rules say what each is).
        scale: the feedback scale: xavier (the paper's, via BioTorch), meanabs or none.
        exclude: fnmatch patterns of module names kept on plain BP (e.g. ``["fc"]``).
        weights: torchvision weights to start from (e.g. IMAGENET1K_V1), or None.
        pretrained_ckpt: an sslr checkpoint or plain state dict to start from (wins over
            ``weights``); a head of another size keeps the hash layer's initialization.
        small_input: 32-px stem for ResNets (3x3 stride-1 first conv, no max-pool).
        mean, std: normalization applied inside ``forward`` (linked from the DataModule).
        seed: seed of the feedback matrices (fa, frsf), of brsf's draws and of CSQ's centers.
        feedback_rank: ldfa only: the rank of B (default: the network's output size).
        kp_decay: kp only: the decay of B - W per optimizer step; None (the default) takes the
            optimizer's lr * weight_decay, as Kolen-Pollack does.
        mirror_rate, mirror_noise, mirror_decay, mirror_batch, mirror_every: wm only: the step
            size of B's mirror update, the noise's standard deviation, B's decay (B tends to
            W / decay), the noise inputs per mirror step, and a mirror step after every
            ``mirror_every``-th optimizer step (:class:`sslr.feedback.learning.Mirror`).
        optimizer: optimizer class (or callable taking parameter groups); default Adam.
        lr: learning rate of the backbone.
        head_lr_mult: the hash layer learns at ``lr * head_lr_mult``.
        lr_scheduler: optional scheduler callable (stepped every epoch; ReduceLROnPlateau
            monitors ``val/mAP``).
        map_topk: depth of the extra ``test/mAP@K`` (NUS-WIDE and COCO 5000, ImageNet-100
            1000); None logs ``test/mAP`` over the whole database only (CIFAR-10).
        continuation_step: HashNet only: beta of u = tanh(beta z) is raised every this many
            training steps (:func:`sslr.hashing.hashnet_beta`); the last value is kept in the
            checkpoint and used for evaluation and attacks.
        compile: run the network through ``torch.compile`` inside the Trainer: true (the
            default mode) or a mode, e.g. ``max-autotune-no-cudagraphs``. The first steps pay
            the compilation; see the README's Speed section for when it pays off.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        bits: int = 32,
        num_classes: int = 10,
        loss: LossName = "dch",
        loss_options: dict[str, int | float] | None = None,
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
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr: float = 1e-5,
        head_lr_mult: float = 10.0,
        lr_scheduler: LRSchedulerCallable | None = None,
        map_topk: int | None = None,
        continuation_step: int = 200,
        compile: bool | CompileMode = False,
    ) -> None:
        super().__init__()
        self._check_compile(compile)
        _check_positive_int("bits", bits, f" (usually one of {', '.join(map(str, USUAL_BITS))})")
        if map_topk is not None:
            _check_positive_int("map_topk", map_topk, " or null (the whole database)")
        _check_positive_int("continuation_step", continuation_step)
        if not lr > 0 or not head_lr_mult > 0:
            raise ValueError(f"lr and head_lr_mult must be > 0, got {lr} and {head_lr_mult}")
        self.save_hyperparameters()
        # Under LightningCLI the optimizer and scheduler are saved as their config (class_path,
        # init_args). Given from Python they are classes or partials, which a checkpoint read
        # with weights_only=True (pretrained_ckpt, sslr attack) cannot hold: they are left out
        # of the hyperparameters then, and load_from_checkpoint builds the defaults.
        self.remove_ignored_hparams(
            [key for key in ("optimizer", "lr_scheduler") if callable(self.hparams.get(key))]
        )
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

        network = build_network(backbone, bits, small_input=small_input)
        head = network.get_submodule(head_name(network))
        nn.init.normal_(head.weight, 0.0, 0.01)  # the hash layer, as the paper's code
        nn.init.zeros_(head.bias)
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
        self.bits = bits
        self.num_classes = num_classes
        self.loss_fn = get_loss(loss, bits, num_classes, **(loss_options or {}))
        # beta of u = tanh(beta z): 1 except under HashNet's continuation. Saved with the model.
        self.register_buffer("code_scale", torch.ones(()))

        self.val_map = MeanAveragePrecision()
        self.test_map = MeanAveragePrecision()
        self.test_map_topk = MeanAveragePrecision(topk=map_topk) if map_topk else None

    @property
    def hash_layer(self) -> str:
        """Qualified name (in ``self.network``) of the hash layer."""
        return head_name(self.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real-valued codes u = tanh(beta * z) (N, bits) for images ``x`` (N, 3, H, W) in [0, 1]."""
        return torch.tanh(self.code_scale * self.network(self.normalize(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, bits) in {-1, +1} (float) of images in [0, 1] (in the module's
        current mode: call ``.eval()`` first for BatchNorm's running statistics)."""
        return binarize(self(x))

    # --- steps --------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.loss_fn.continuation:
            beta = hashnet_beta(self.global_step, step_size=self.hparams.continuation_step)
            self.code_scale.fill_(beta)
        x, labels = batch
        loss = self.loss_fn(self(x), labels)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        if self.loss_fn.continuation:
            self.log("train/beta", self.code_scale)
        return loss

    def _update(self, metrics, batch, dataloader_idx: int) -> None:
        x, labels = batch
        u = self(x)
        for metric in metrics:
            if metric is not None:
                metric.update(u, labels, is_query=dataloader_idx == 0)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update([self.val_map], batch, dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update([self.test_map, self.test_map_topk], batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val/mAP", prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test/mAP")
        if self.test_map_topk is not None:
            self._log_map(self.test_map_topk, f"test/mAP@{self.hparams.map_topk}")

    def _log_map(self, metric: MeanAveragePrecision, name: str, prog_bar: bool = False) -> None:
        # Both roles must have been seen (a run with limit_*_batches = 0 sees neither).
        if len(metric.query_codes) and len(metric.db_codes):
            self.log(name, metric.compute(), prog_bar=prog_bar)
        metric.reset()

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return binarize(self(x))

    # --- optimization -------------------------------------------------------------------

    def parameter_groups(self) -> list[dict]:
        """[backbone at ``lr``, hash layer at ``lr * head_lr_mult``] (trainable parameters),
        and the loss's own parameters (HyP2's class proxies), if any, as a third group
        ``loss`` at the hash layer's rate: like the hash layer they start from a random
        initialization, and the HyP2 authors train them at least as fast as the network
        (SGD, proxies 0.02 against 0.01-0.02 for the network)."""
        prefix = f"network.{self.hash_layer}."
        backbone, head, loss = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("loss_fn."):
                loss.append(p)
            else:
                (head if name.startswith(prefix) else backbone).append(p)
        lr = self.hparams.lr
        head_lr = lr * self.hparams.head_lr_mult
        groups = [
            {"params": backbone, "lr": lr, "name": "backbone"},
            {"params": head, "lr": head_lr, "name": "hash_layer"},
        ]
        if loss:
            groups.append({"params": loss, "lr": head_lr, "name": "loss"})
        return groups

    def configure_optimizers(self):
        # Each group carries its own lr, which wins over an lr in the optimizer's init_args.
        optimizer = self.optimizer(self.parameter_groups())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/mAP"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def configure_callbacks(self):
        return self.checkpoint_callbacks("val/mAP")
