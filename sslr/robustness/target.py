"""The object attacks act on: a network that takes normalized input, plus its normalization, so
that attacks and epsilons live in [0, 1] pixel units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslr.feedback import feedback_layers


@dataclass
class AttackTarget:
    """A classifier under attack: ``network`` maps normalized images to logits; ``mean`` and
    ``std`` (one value per channel) normalize [0, 1] pixels. A ``ClassificationTask`` gives one
    through :meth:`from_task`; a plain ``nn.Module`` that takes pixels directly is
    ``AttackTarget(model, (0, 0, 0), (1, 1, 1), num_classes)``.
    """

    network: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(
                f"mean and std need one value per channel and std > 0, got {self.mean}, {self.std}"
            )
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        self._stats: dict = {}

    @classmethod
    def from_task(cls, task) -> AttackTarget:
        """The target of a ``ClassificationTask`` (``.network``, ``.mean``, ``.std``,
        ``.hparams.num_classes``)."""
        return cls(task.network, task.mean, task.std, task.hparams.num_classes)

    @property
    def device(self) -> torch.device:
        param = next(self.network.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def rules(self) -> set[str]:
        """The learning rules of the network's feedback layers (empty for a plain network)."""
        return {layer.rule for _, layer in feedback_layers(self.network)}

    @property
    def stochastic_feedback(self) -> bool:
        """Whether the backward pass is random (brsf): what makes ``eot`` differ from ``rule``."""
        return "brsf" in self.rules

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize [0, 1] images (N, C, H, W) for ``network``."""
        key = (x.device, x.dtype)
        if key not in self._stats:  # made once per device: a host-to-device copy syncs the GPU
            self._stats[key] = tuple(
                torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                for v in (self.mean, self.std)
            )
        mean, std = self._stats[key]
        return (x - mean) / std

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes (N,) of [0, 1] images; forward only, so the rule plays no part."""
        return self.network(self.normalize(x)).argmax(dim=1)


def as_target(model) -> AttackTarget:
    """An :class:`AttackTarget`, or one made from a ``ClassificationTask``."""
    if isinstance(model, AttackTarget):
        return model
    if hasattr(model, "network") and hasattr(model, "mean") and hasattr(model, "hparams"):
        return AttackTarget.from_task(model)
    raise TypeError(
        f"Cannot attack a {type(model).__name__}: give an AttackTarget(network, mean, std, "
        "num_classes) or a ClassificationTask"
    )


def load_target(ckpt_path: str | Path, device: torch.device | str = "cpu") -> AttackTarget:
    """The target of a ``ClassificationTask`` checkpoint (e.g. the ``transfer`` surrogate)."""
    from sslr.checkpoints import load_task
    from sslr.tasks import ClassificationTask

    task = load_task(ClassificationTask, ckpt_path, "surrogate_ckpt", map_location=device)
    return AttackTarget.from_task(task.eval())
