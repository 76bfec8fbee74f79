"""Adversarial attacks on hashing retrieval: perturb a query image so its code moves away from
its own code (untargeted: PGD on the code, HAG) or towards an anchor code of a target label
(targeted: P2P, DHTA). Inputs in [0, 1], normalization inside the model, L-inf or L2 balls.

Notation: u = tanh(beta z) (N, K) the real-valued code of x + delta (beta = 1 except after
HashNet's continuation), b = sign(u(x)) the clean code, a an anchor code. Every objective is
written as the quantity the attack *ascends* (ART's ``loss_gradient`` convention):

- ``pgd`` (untargeted): L = -(1/K) u . b, pushing every bit of u against the clean code.
- ``hag`` (Yang et al. 2018, "Adversarial Examples for Hamming Space Search"): the same with
  weights w_k = 1[|u_k - b_k| < 1 + t], t = 0.5 (a constant of each step): bits already pushed
  past -t (flipped with margin) drop out, so the steps go to the bits not yet flipped.
- ``p2p`` / ``dhta`` (Bai et al. 2020, "Targeted Attack for Deep Hashing based Retrieval"):
  L = (1/K) u . a, i.e. minimising -(1/K) h(x + delta) . a, with the anchor a = sign(sum of the
  codes of n_t images of the target label) (component-wise majority vote; P2P: n_t = 1; a tied
  bit is 0 and pulls neither way).

The gradient of L comes from ART's ``PyTorchClassifier.loss_gradient`` through
:class:`~sslr.robustness.GradientSourceClassifier` with this custom loss and ``nb_classes = K``:
ART hands the (N, K) code targets to the loss untouched, and the gradient source (``rule``,
``exact``, ``eot``) applies exactly as for classifiers. The iterations are sslr's PGD loop
(:func:`sslr.robustness.attacks.pgd`) rather than ART's ``generate``: besides the speed reasons
given there, ART's ``generate`` scores success by argmax over the K "classes", which means
nothing for codes. Hashing attacks in the literature step by the sign of the gradient
(L-inf); the L2 ball uses the normalized gradient, as for classifiers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from sslr.feedback import feedback_layers
from sslr.metrics import binarize
from sslr.robustness.attacks import bound_excess, check_bounds, pgd
from sslr.robustness.config import GradientSource, Norm
from sslr.robustness.gradients import GradientSourceClassifier
from sslr.robustness.target import AttackTarget

__all__ = [
    "CodeLoss",
    "CodeNetwork",
    "HashAttack",
    "HashingGradientClassifier",
    "HashingTarget",
    "anchor_codes",
    "as_hashing_target",
    "attack_queries",
    "draw_targets",
    "load_hashing_target",
]


class HashAttack(str, Enum):
    """Hashing attacks: ``pgd`` and ``hag`` are untargeted (scored by mAP with the true labels),
    ``p2p`` and ``dhta`` targeted (scored by t-mAP, with the target label as relevance)."""

    PGD = "pgd"
    HAG = "hag"
    P2P = "p2p"
    DHTA = "dhta"

    @property
    def targeted(self) -> bool:
        return self in (HashAttack.P2P, HashAttack.DHTA)

    @property
    def metric(self) -> str:
        """The ``metric`` column of this attack's rows."""
        return "t-mAP" if self.targeted else "mAP"


class CodeNetwork(nn.Module):
    """u = tanh(scale * network(x)) (N, K) for normalized input: what the attacks see."""

    def __init__(self, network: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scale * self.network(x))


@dataclass
class HashingTarget:
    """A hashing network under attack: ``network`` maps normalized images to the pre-tanh
    output z (N, bits); codes are sign(tanh(scale * z)). A ``HashingTask`` gives one through
    :meth:`from_task` (its ``code_scale`` is HashNet's last beta, 1 otherwise)."""

    network: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    bits: int
    scale: float = 1.0
    codes: CodeNetwork = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 2:
            raise ValueError(f"hashing attacks need codes of at least 2 bits, got {self.bits!r}")
        self.codes = CodeNetwork(self.network, self.scale)
        # The normalization and the ART view: AttackTarget validates mean/std.
        self._attack_target = AttackTarget(self.codes, self.mean, self.std, self.bits)
        self.mean, self.std = self._attack_target.mean, self._attack_target.std

    @classmethod
    def from_task(cls, task) -> HashingTarget:
        """The target of a ``HashingTask`` (``.network``, ``.mean``, ``.std``, ``.bits``)."""
        scale = float(getattr(task, "code_scale", 1.0))
        return cls(task.network, task.mean, task.std, int(task.hparams.bits), scale)

    @property
    def attack_target(self) -> AttackTarget:
        """The :class:`AttackTarget` view (network = :attr:`codes`, ``num_classes`` = bits)."""
        return self._attack_target

    @property
    def device(self) -> torch.device:
        return self._attack_target.device

    @property
    def rules(self) -> set[str]:
        return {layer.rule for _, layer in feedback_layers(self.network)}

    @property
    def stochastic_feedback(self) -> bool:
        """Whether the backward pass is random (brsf): what makes ``eot`` differ from ``rule``."""
        return "brsf" in self.rules

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, bits) in {-1, +1} of [0, 1] images; forward only, so the rule plays
        no part (brsf draws nothing in a forward)."""
        return binarize(self.codes(self._attack_target.normalize(x)))


def anchor_codes(codes: torch.Tensor) -> torch.Tensor:
    """DHTA's anchor: component-wise majority vote of (N, n_t, K) codes -> (N, K) in {-1, 0, 1}
    (0 where the vote ties, possible for even n_t; P2P's n_t = 1 gives the code itself)."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be (N, n_t, K), got shape {tuple(codes.shape)}")
    return codes.sum(dim=1).sign()


def draw_targets(
    query_labels: torch.Tensor, db_labels: torch.Tensor, n_anchors: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, a target label and ``n_anchors`` database items of that label (the anchor
    set), drawn with ``seed``.

    The target label is the label row of a random database item that shares no label with
    the query (so the target differs from the query's own label); the anchor set is drawn
    without replacement from the database items sharing a label with it (all of them when
    fewer exist). Returns target labels (N, C) and anchor indices (N, n_anchors) into the
    database, a row padded by repeating its draws when the label has fewer items.
    """
    generator = torch.Generator().manual_seed(seed + 7919)  # a stream apart from the subset's
    db = db_labels.float()
    targets, anchors = [], []
    for row in query_labels.float():
        foreign = ((db @ row) == 0) & (db.sum(1) > 0)  # (N_db,) items with none of its labels
        candidates = foreign.nonzero().flatten()
        if candidates.numel() == 0:
            raise ValueError(
                "a targeted attack needs, for every query, a database item of another label"
            )
        pick = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
        target = db[pick[0]]
        members = ((db @ target) > 0).nonzero().flatten()
        chosen = members[torch.randperm(members.numel(), generator=generator)[:n_anchors]]
        chosen = chosen.repeat(math.ceil(n_anchors / chosen.numel()))[:n_anchors]
        targets.append(target)
        anchors.append(chosen)
    return torch.stack(targets), torch.stack(anchors)


def as_hashing_target(model) -> HashingTarget:
    """A :class:`HashingTarget`, or one made from a ``HashingTask``."""
    if isinstance(model, HashingTarget):
        return model
    if hasattr(model, "network") and hasattr(model, "hparams") and "bits" in model.hparams:
        return HashingTarget.from_task(model)
    raise TypeError(
        f"Cannot attack a {type(model).__name__} as a hashing model: give a HashingTask or a "
        "HashingTarget(network, mean, std, bits)"
    )


def load_hashing_target(ckpt_path: str | Path, device: torch.device | str = "cpu"):
    """The target of a ``HashingTask`` checkpoint (e.g. the ``transfer`` surrogate)."""
    from sslr.checkpoints import load_task
    from sslr.tasks.hashing import HashingTask

    task = load_task(HashingTask, ckpt_path, "surrogate_ckpt", map_location=device)
    return HashingTarget.from_task(task.eval())


class CodeLoss(nn.Module):
    """The objective an attack ascends, on u (N, K) and code targets (N, K) (see the module
    docstring): ``pgd``/``hag`` take the clean codes b, ``p2p``/``dhta`` the anchors a. Summed
    over the batch, so a sample's gradient does not depend on the batch size."""

    def __init__(self, attack: HashAttack | str, margin: float = 0.5) -> None:
        super().__init__()
        self.attack = HashAttack(attack)
        if not margin >= 0:
            raise ValueError(f"the HAG margin t must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(u.dtype)
        agreement = u * target  # (N, K)
        if self.attack.targeted:
            return agreement.sum() / u.shape[1]
        if self.attack is HashAttack.HAG:
            weight = ((u - target).abs() < 1 + self.margin).to(u.dtype).detach()
            agreement = weight * agreement
        return -agreement.sum() / u.shape[1]


class HashingGradientClassifier(GradientSourceClassifier):
    """A :class:`GradientSourceClassifier` on a hashing target whose ``loss_gradient`` is the
    gradient of a :class:`CodeLoss` along the gradient source (``rule``, ``exact``, ``eot``).
    ``y`` is the (N, K) code target (clean codes or anchors), passed to the loss untouched.
    Use it as a context manager around a whole attack, inside ``attack_mode``."""

    def __init__(
        self,
        target: HashingTarget,
        input_shape: Sequence[int],
        attack: HashAttack | str,
        source: GradientSource = GradientSource.RULE,
        eot_samples: int = 1,
        margin: float = 0.5,
    ) -> None:
        super().__init__(target.attack_target, input_shape, source, eot_samples)
        self._loss = CodeLoss(attack, margin)
        # ART set these for its CrossEntropyLoss; with a custom loss it reduces nothing.
        self._reduce_labels = self._int_labels = self._probability_labels = False

    def reduce_labels(self, y):
        """Code targets are not labels: they go to the loss as they are."""
        return y


def attack_queries(
    target: HashingTarget,
    x: torch.Tensor,
    code_targets: torch.Tensor,
    *,
    attack: HashAttack | str,
    norm: Norm | str,
    eps: float,
    step: float,
    steps: int,
    gradient: GradientSource | str,
    batch_size: int,
    random_start: bool = False,
    seed: int = 0,
    eot_samples: int = 1,
    margin: float = 0.5,
    surrogate: HashingTarget | None = None,
) -> torch.Tensor:
    """Adversarial versions of the queries ``x`` (N, C, H, W) in [0, 1], returned as the binary
    codes (N, K) that ``target`` gives them.

    ``code_targets`` (N, K') are the clean codes (untargeted) or anchors (targeted) in the code
    space of the network the examples are crafted on: ``target``, or ``surrogate`` for
    ``gradient="transfer"`` (crafted with the surrogate's own ``rule`` gradient). Every example
    is checked to lie in its eps ball and in [0, 1] (:class:`AttackBoundsError` otherwise).
    Call it inside ``attack_mode`` on the networks involved.
    """
    attack, norm, gradient = HashAttack(attack), Norm(norm), GradientSource(gradient)
    if eps <= 0:
        raise ValueError("eps must be > 0 here: eps = 0 is the clean evaluation")
    if gradient is GradientSource.NONE:
        raise ValueError("hashing attacks are white box: choose rule, exact, eot or transfer")
    if gradient is GradientSource.TRANSFER:
        if surrogate is None:
            raise ValueError("gradient 'transfer' needs a surrogate model")
        source, crafted_on = GradientSource.RULE, surrogate
    else:
        source, crafted_on = gradient, target
    if code_targets.shape != (x.shape[0], crafted_on.bits):
        raise ValueError(
            f"code_targets must be (N, {crafted_on.bits}) for {x.shape[0]} queries, got "
            f"{tuple(code_targets.shape)}"
        )
    classifier = HashingGradientClassifier(
        crafted_on, x.shape[1:], attack, source=source, eot_samples=eot_samples, margin=margin
    )
    device = crafted_on.device
    codes, excess = [], torch.full((), -1.0, device=target.device)
    nan_count = torch.zeros((), dtype=torch.long, device=device)
    # One gradient context for the whole run: brsf's draws go on from step to step.
    with classifier:
        generator = torch.Generator(device=device).manual_seed(seed)
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device)
            tb = code_targets[i : i + batch_size].to(device)
            adv = pgd(
                classifier,
                xb,
                tb,
                norm=norm,
                eps=eps,
                step=step,
                steps=steps,
                start_random=random_start,
                generator=generator,
                nan_count=nan_count,
            )
            xb, adv = xb.to(target.device), adv.to(target.device)
            excess = torch.maximum(excess, bound_excess(xb, adv, eps, norm))
            codes.append(target.encode(adv))
    what = f"{attack.value} ({norm.value}, eps={eps:.4g}, gradient={gradient.value})"
    check_bounds(excess, what)
    if int(nan_count):
        warnings.warn(
            f"{what}: {int(nan_count)} NaN input-gradient entries were treated as 0",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.cat(codes)
