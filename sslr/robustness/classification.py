"""The classification task of the evaluation engine: one-hot labels as every attack's target
information, the cross-entropy as its objective, and per image whether the attacked model
still predicts the true class; a cell's score is the accuracy of the subset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslr.robustness.registry import AttackSpec
from sslr.robustness.target import AttackTarget


@dataclass
class ClassificationEvaluation:
    """The images ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), attacked on ``target``
    (``transfer``: crafted on ``surrogate``)."""

    target: AttackTarget
    surrogate: AttackTarget | None
    x: torch.Tensor
    y: torch.Tensor
    task: str = "classification"
    labels: str = "classes"
    index: list[int] | None = None  # the images' indices in their split (None: 0..N-1)

    def __post_init__(self) -> None:
        if self.surrogate is not None and self.surrogate.num_classes != self.target.num_classes:
            raise ValueError(
                f"The surrogate has {self.surrogate.num_classes} classes, the target "
                f"{self.target.num_classes}"
            )
        self._clean: torch.Tensor | None = None

    def view(self, model: AttackTarget) -> AttackTarget:
        return model

    def loss(self, spec: AttackSpec):
        return None  # the provider's default: cross-entropy

    def metric(self, spec: AttackSpec) -> str:
        return "accuracy"

    def clean(self, batch_size: int) -> torch.Tensor:
        """Per image: correctly classified without attack (bool (N,), cached)."""
        if self._clean is None:
            device = self.target.device
            parts = []
            for i in range(0, self.x.shape[0], batch_size):
                xb, yb = self.x[i : i + batch_size].to(device), self.y[i : i + batch_size]
                parts.append(self.target.predict(xb) == yb.to(device))
            self._clean = torch.cat(parts)
        return self._clean

    def begin(self, spec: AttackSpec, config) -> dict:
        goals = {}
        for model in (self.target, self.surrogate):
            if model is not None:
                goals[id(model)] = F.one_hot(self.y, model.num_classes).float()  # what ART takes
        return {"goals": goals}

    def outcome(self, adv: torch.Tensor, index: slice) -> torch.Tensor:
        """Per image: still correctly classified after the attack."""
        return self.target.predict(adv) == self.y[index].to(adv.device)

    def score(self, context: dict, outcomes: torch.Tensor) -> float:
        return int(outcomes.sum()) / outcomes.numel()
