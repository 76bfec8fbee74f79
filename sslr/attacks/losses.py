"""Per-image attack losses on logits, each one to be *maximised* by the attacker.

- ``ce``: cross-entropy of the true class (untargeted); targeted: minus the cross-entropy of
  the target class.
- ``margin`` (Carlini & Wagner 2017): max_{i != y} z_i - z_y; targeted: z_t - max_{i != t} z_i.
  Positive exactly when the image is misclassified (reaches the target).
- ``dlr`` (Croce & Hein 2020, difference of logits ratio): -(z_y - max_{i != y} z_i) /
  (z_pi1 - z_pi3 + 1e-12) with z sorted descending (z_pi1 >= z_pi2 >= ...); targeted:
  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Invariant to shifting and scaling the
  logits, which is why AutoAttack uses it against models whose logits are rescaled.

Every function takes logits (N, K) and class indices (N,) and returns (N,) losses, so that
attacks can track each image's own loss and step size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")

# The fewest classes each loss is defined for (untargeted, targeted).
MIN_CLASSES = {"ce": (2, 3), "margin": (2, 3), "dlr": (3, 4)}

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _pick(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, index.view(-1, 1)).squeeze(1)  # (N,)


def _max_other(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """max_{i != index} z_i per row."""
    others = logits.scatter(1, index.view(-1, 1), float("-inf"))
    return others.amax(dim=1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true classes ``y``: (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cross_entropy_targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the ``target`` classes (maximised by reaching them): (N,)."""
    return -F.cross_entropy(logits, target, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{i != y} z_i - z_y: (N,); > 0 iff misclassified."""
    return _max_other(logits, y) - _pick(logits, y)


def margin_targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_t - max_{i != t} z_i: (N,); > 0 iff the prediction is the target."""
    return _pick(logits, target) - _max_other(logits, target)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12): (N,).
    Needs at least 3 classes."""
    top = logits.topk(3, dim=1).values  # (N, 3), descending
    return -(_pick(logits, y) - _max_other(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12): (N,).
    Needs at least 4 classes."""
    top = logits.topk(4, dim=1).values  # (N, 4), descending
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return -(_pick(logits, y) - _pick(logits, target)) / scale


def check_loss(loss: str, num_classes: int, targeted: bool) -> str:
    """The loss name, lower-cased, or a ValueError saying why it cannot be used."""
    name = str(getattr(loss, "value", loss)).lower()
    if name not in LOSSES:
        raise ValueError(f"Unknown attack loss {loss!r}: use one of {', '.join(LOSSES)}")
    need = MIN_CLASSES[name][int(targeted)]
    if num_classes < need:
        kind = "a targeted" if targeted else "an untargeted"
        raise ValueError(
            f"The {name} loss in {kind} attack needs at least {need} classes, the model has "
            f"{num_classes}: use another loss or an untargeted attack"
        )
    return name


def loss_function(loss: str, targeted: bool = False) -> LossFn:
    """``fn(logits, y, target)`` -> (N,) losses to maximise for the named loss; ``target`` is
    ignored by untargeted losses and required by targeted ones."""
    name = str(getattr(loss, "value", loss)).lower()
    if name not in LOSSES:
        raise ValueError(f"Unknown attack loss {loss!r}: use one of {', '.join(LOSSES)}")
    if not targeted:
        plain = {"ce": cross_entropy, "margin": margin, "dlr": dlr}[name]
        return lambda logits, y, target=None: plain(logits, y)
    if name == "dlr":
        return lambda logits, y, target: dlr_targeted(logits, y, target)
    if name == "ce":
        return lambda logits, y, target: cross_entropy_targeted(logits, target)
    return lambda logits, y, target: margin_targeted(logits, target)
