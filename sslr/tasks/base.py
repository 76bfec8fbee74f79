"""What the classification and hashing tasks share: a converted backbone built from
hyperparameters, pixel-space inputs, the rule kept across checkpoints, and a guard against
non-finite losses."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sslr.checkpoints import CheckpointError, check_fits, load_task
from sslr.errors import UserError
from sslr.feedback import convert_model, feedback_layers, list_rules, list_scales, set_rule
from sslr.feedback.learning import FeedbackLearning, Mirror
from sslr.feedback.rules import get_rule
from sslr.tasks.backbones import checkpoint_state_dict, load_pretrained, torchvision_state_dict

log = logging.getLogger(__name__)

# torch.compile's modes, for the tasks' ``compile`` switch (True is torch.compile's default).
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


class FeedbackTask(LightningModule):
    """Base of the tasks: owns ``self.network`` (normalized input) and its feedback rule.

    Inputs are images in [0, 1] pixel units; ``forward`` normalizes with ``mean``/``std`` so
    adversarial epsilons are in pixel units. The network is converted to ``rule`` in
    ``__init__`` so that ``load_from_checkpoint`` rebuilds the same converted network; pretrained
    weights are loaded in ``setup`` only when a run starts fresh (a resumed run or an evaluated
    checkpoint brings its own weights).
    """

    network: nn.Module

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        *,
        unsafe_pickle: bool = False,
        **kwargs: Any,
    ):
        """The task saved in ``checkpoint_path``, as Lightning's ``load_from_checkpoint`` (the
        same arguments; ``kwargs`` override saved hyperparameters), opened without running code
        (:func:`sslr.checkpoints.load_task`): a file that is not a checkpoint of this task is
        one :class:`~sslr.checkpoints.CheckpointError` line.

        ``weights_only=False`` alone is refused: a pickle opened that way imports and calls
        whatever it names (``os.system`` included), and sslr's checkpoints never need it. For a
        file from elsewhere that does need it, ``unsafe_pickle=True`` opens it with Lightning's
        unrestricted loader: do so only for a file you would run as a program.
        """
        if unsafe_pickle:
            load = super().load_from_checkpoint
            return load(checkpoint_path, map_location, hparams_file, strict, False, **kwargs)
        if weights_only is False:
            raise CheckpointError(
                f"{cls.__name__}.load_from_checkpoint(weights_only=False) would run any code "
                f"{str(checkpoint_path)!r} names: sslr's checkpoints never need it, so drop it "
                "(or, for a file you would run as a program, pass unsafe_pickle=True)"
            )
        return load_task(
            cls,
            checkpoint_path,
            "checkpoint",
            map_location=map_location if map_location is not None else "cpu",
            hparams_file=hparams_file,
            strict=strict,
            **kwargs,
        )

    def _init_feedback(
        self,
        network: nn.Module,
        *,
        rule: str,
        scale: str,
        exclude: Sequence[str],
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        rank: int | None = None,
        kp_decay: float | None = None,
        mirror: Mirror | None = None,
    ) -> None:
        if rule not in list_rules():
            raise ValueError(f"Unknown rule {rule!r}: known rules are {', '.join(list_rules())}")
        if scale not in list_scales():
            raise ValueError(
                f"Unknown scale {scale!r}: known scales are {', '.join(list_scales())}"
            )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 numbers with std > 0, got {mean}, {std}")
        if kp_decay is not None and not 0 <= kp_decay < 1:
            raise ValueError(f"kp_decay must be in [0, 1) or null, got {kp_decay}")
        self.network = convert_model(
            network, rule, scale=scale, exclude=tuple(exclude), seed=seed, rank=rank
        )
        self._kp_decay, self._mirror = kp_decay, mirror or Mirror()
        self._learning: list[FeedbackLearning] = []
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self._pretrained_done = False
        self._rng_to_restore: torch.Tensor | None = None

    @staticmethod
    def _check_compile(compile: bool | str) -> None:
        if isinstance(compile, bool) or compile in COMPILE_MODES:
            return
        raise ValueError(
            f"compile must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
            f"got {compile!r}"
        )

    def configure_model(self) -> None:
        """With ``compile``: compile the network's forward once, when a Trainer first runs the
        task (fit, validate, test). The network stays the same module (``nn.Module.compile``),
        so checkpoints and state_dict keys are unchanged; outside a Trainer (``sslr attack``,
        the Python API) it runs eager."""
        mode = self.hparams.get("compile", False)
        if mode and not getattr(self, "_compiled", False):
            self.network.compile(mode=None if mode is True else mode)
            self._compiled = True

    @property
    def rule(self) -> str:
        """The rule the feedback layers use now (differs from hparams.rule before a RuleSwitch)."""
        rules = {layer.rule for _, layer in feedback_layers(self.network)}
        return rules.pop() if len(rules) == 1 else "mixed"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)  # (N, 3, H, W)

    # --- pretrained weights -------------------------------------------------------------

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        resuming = trainer is not None and trainer.ckpt_path is not None
        if not self._pretrained_done and not resuming:
            self.load_pretrained_weights()

    def load_pretrained_weights(self) -> None:
        """Load ``pretrained_ckpt`` or torchvision ``weights`` into the network, if set."""
        hp = self.hparams
        self._pretrained_done = True
        if hp.get("pretrained_ckpt"):
            state = checkpoint_state_dict(hp.pretrained_ckpt, type(self).__name__)
            source = hp.pretrained_ckpt
        elif hp.get("weights"):
            state = torchvision_state_dict(hp.backbone, hp.weights)
            source = f"torchvision {hp.backbone} {hp.weights}"
        else:
            return
        skipped = load_pretrained(self.network, state)
        note = f" (fresh: {', '.join(skipped)})" if skipped else ""
        log.info("loaded pretrained weights from %s%s", source, note)

    # --- checkpoints in the run folder -------------------------------------------------

    def checkpoint_callbacks(self, monitor: str) -> list[ModelCheckpoint]:
        """best.ckpt (by ``monitor``, higher is better) and last.ckpt (every epoch).

        Two callbacks, because Lightning's ``save_last`` refreshes last.ckpt only when the
        monitored metric improves, and a resume must start from the last epoch, not the best.
        """
        best = ModelCheckpoint(
            filename="best", monitor=monitor, mode="max", auto_insert_metric_name=False
        )
        last = ModelCheckpoint(filename="last", enable_version_counter=False)
        return [best, last]

    # --- training guard -----------------------------------------------------------------

    def check_finite(self, loss: torch.Tensor) -> None:
        """Note on the device the first step whose loss is not finite; no host sync here.

        The run stops at the next natural sync (a logging step, the end of the epoch, or a
        checkpoint about to be written: :meth:`raise_if_nonfinite`), so a non-finite state is
        never saved and the last checkpoint written is a good one.
        """
        bad = ~torch.isfinite(loss.detach()).all()
        if getattr(self, "_bad_step", None) is None or self._bad_step.device != loss.device:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_epoch = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.global_step, self._bad_step)
        self._bad_epoch = torch.where(first, self.current_epoch, self._bad_epoch)
        self._bad_loss = torch.where(first, loss.detach().reshape(()), self._bad_loss)

    def raise_if_nonfinite(self, state: dict | None = None) -> None:
        """Stop with one line if a loss was non-finite (or, given ``state``, a tensor is)."""
        step = int(self._bad_step) if getattr(self, "_bad_step", None) is not None else -1
        tensors = [] if state is None else [k for k, v in state.items() if not _finite(v)]
        if step < 0 and not tensors:
            return
        last = [c for c in self.trainer.checkpoint_callbacks if c.filename == "last"]
        ckpt = (last[0].best_model_path if last else "") or "none yet"
        if step >= 0:
            what = (
                f"Non-finite training loss ({float(self._bad_loss)}) at step {step} "
                f"(epoch {int(self._bad_epoch)})"
            )
        else:
            what = (
                f"Non-finite weights at step {self.global_step} ({len(tensors)} tensors, first: "
                f"{tensors[0]})"
            )
        raise NonFiniteLossError(
            f"{what} with rule {self.rule} (scale {self.hparams.scale}); the run stopped at "
            f"step {self.global_step} without saving it, the last good checkpoint (all tensors "
            f"finite) is {ckpt}. Lower the learning rate or use scale xavier/meanabs."
        )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50) or 50))
        if self.global_step % every == 0:  # the logger syncs here anyway
            self.raise_if_nonfinite()

    def on_train_epoch_end(self) -> None:
        self.raise_if_nonfinite()

    # --- checkpoints: the rule in use and the RNG, so a resumed run continues exactly -----

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.raise_if_nonfinite(checkpoint.get("state_dict", {}))
            # metrics.csv holds every row up to the checkpoint: after a kill -9, a resume from
            # it loses no logged row (the CSV logger would otherwise flush every 100 steps).
            for logger in self.trainer.loggers:
                logger.save()
        checkpoint["sslr_rule"] = self.rule
        checkpoint["sslr_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rule = checkpoint.get("sslr_rule")
        if rule and rule != "mixed" and rule != self.rule:
            # A checkpoint written before a RuleSwitch holds bp's (empty) feedback state.
            set_rule(self.network, rule)
        trainer = self._trainer
        path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        check_fits(checkpoint, self, path, "--ckpt_path")
        self._pretrained_done = True
        self._rng_to_restore = checkpoint.get("sslr_rng")

    # --- feedback that learns (kp, wm): B's updates follow the optimizer's steps ----------

    def _attach_learning(self) -> None:
        # For a fit whose rule learns B (kp, wm), from now or after a RuleSwitch, attached once
        # the checkpoint is restored: wm's ``mirror_every`` counts from the global step.
        self._detach_learning()
        if not get_rule(self.hparams.rule).learns:
            return
        self._learning = [
            FeedbackLearning(
                self.network,
                opt,
                mirror=self._mirror,
                kp_decay=self._kp_decay,
                steps=self.trainer.global_step,
            )
            for opt in self.trainer.optimizers
        ]

    def on_train_end(self) -> None:
        self._detach_learning()

    def _detach_learning(self) -> None:
        for learning in self._learning:
            learning.remove()
        self._learning = []

    def on_train_start(self) -> None:
        self._attach_learning()
        # Restored here, after the sanity check, which would otherwise consume random numbers.
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None


def _finite(value) -> bool:
    return not (isinstance(value, torch.Tensor) and value.is_floating_point()) or bool(
        torch.isfinite(value).all()
    )
