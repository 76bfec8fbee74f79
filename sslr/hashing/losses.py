"""Deep-hashing losses: DPSH, HashNet, DCH and CSQ, behind one registry (HyP2, with its
learnable proxies, is registered from :mod:`sslr.hashing.hyp2`).

Every loss is an ``nn.Module`` called as ``loss(u, labels) -> scalar`` with

- ``u``: (N, K) real-valued codes in (-1, 1), the network output after tanh (for HashNet,
  tanh(beta * z) with beta from :func:`hashnet_beta`: the continuation lives in the network's
  activation, not in the loss, because it changes the codes the task reports too);
- ``labels``: (N, C) multi-hot (float or bool), or (N,) class indices.

Notation: b = sign(u); s_ij = 1 if samples i and j share a label, else 0. Pairwise losses use
every ordered pair (i, j), i != j, of the batch (self-pairs carry no information) and return the
mean over them; with fewer than two samples the pairwise term is 0. Reference implementations
(DeepHash-pytorch) pair the batch with a memory bank of the whole training set; that variant is
not implemented here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslr.hashing.codes import hash_centers, multilabel_centers

# The public names are exported by sslr.hashing (its __all__), not listed again here.

_LOSSES: dict[str, type[HashingLoss]] = {}


def register_loss(name: str) -> Callable[[type[HashingLoss]], type[HashingLoss]]:
    """Class decorator adding a loss to the registry under ``name``; refuses duplicates."""

    def add(cls: type[HashingLoss]) -> type[HashingLoss]:
        if name in _LOSSES:
            raise ValueError(f"a hashing loss named {name!r} is already registered.")
        _LOSSES[name] = cls
        cls.name = name
        return cls

    return add


def list_losses() -> list[str]:
    """Names accepted by :func:`get_loss`, sorted."""
    return sorted(_LOSSES)


def get_loss(name: str, bits: int, num_classes: int, **kwargs: object) -> HashingLoss:
    """Build the loss registered as ``name`` (case-insensitive) for K = ``bits`` codes."""
    key = name.lower()
    if key not in _LOSSES:
        raise ValueError(
            f"unknown hashing loss {name!r}; choose one of: {', '.join(list_losses())}."
        )
    cls = _LOSSES[key]
    options = [p for p in inspect.signature(cls).parameters if p not in ("bits", "num_classes")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"hashing loss {key!r} has no option {', '.join(unknown)}; its options are: "
            f"{', '.join(options) or 'none'}."
        )
    return cls(bits, num_classes, **kwargs)


def hashnet_beta(
    step: int,
    *,
    step_size: int = 200,
    gamma: float = 0.005,
    power: float = 0.5,
    init: float = 1.0,
) -> float:
    """HashNet's continuation scale at training step ``step``: u = tanh(beta * z).

    beta = init * (1 + gamma * t) ** power, with t = step rounded down to a multiple of
    ``step_size``: beta is raised stepwise, every ``step_size`` iterations, so tanh(beta z)
    tends to sign(z) (Cao et al. 2017; the defaults are those of the authors' code).
    """
    if step < 0 or step_size < 1:
        raise ValueError(f"need step >= 0 and step_size >= 1, got {step} and {step_size}.")
    t = (step // step_size) * step_size
    return init * (1.0 + gamma * t) ** power


class HashingLoss(nn.Module):
    """Base class: input checks, label handling and the pairwise similarity s_ij."""

    name: ClassVar[str] = ""
    # True for losses meant to be used with a continuation schedule on tanh (HashNet).
    continuation: ClassVar[bool] = False

    def __init__(self, bits: int, num_classes: int) -> None:
        super().__init__()
        for arg, value in (("bits", bits), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
        self.bits = bits
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"bits={self.bits}, num_classes={self.num_classes}"

    def forward(self, u: Tensor, labels: Tensor) -> Tensor:
        """The loss of codes u (N, K) given labels (N, C) multi-hot or (N,) class indices.

        Computed in float32 (float64 stays float64) with autocast off: the logs and exps are
        not safe in bf16/fp16.
        """
        labels = self._check(u, labels)
        dtype = torch.promote_types(u.dtype, torch.float32)
        with torch.autocast(device_type=u.device.type, enabled=False):
            return self._loss(u.to(dtype), labels.to(dtype))

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def _check(self, u: Tensor, labels: Tensor) -> Tensor:
        """Validate shapes; return the labels as multi-hot (N, C) on u's device."""
        if u.dim() != 2 or u.shape[1] != self.bits:
            raise ValueError(
                f"{type(self).__name__} was built for {self.bits}-bit codes (N, {self.bits}), "
                f"got u of shape {tuple(u.shape)}."
            )
        if labels.dim() == 1 and not labels.is_floating_point():
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"class indices must lie in [0, {self.num_classes}), got values from "
                    f"{int(labels.min())} to {int(labels.max())}."
                )
            labels = F.one_hot(labels.long(), self.num_classes)
        if labels.dim() != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(
                f"labels must be multi-hot (N, {self.num_classes}) or class indices (N,), "
                f"got shape {tuple(labels.shape)}."
            )
        if labels.shape[0] != u.shape[0]:
            raise ValueError(
                f"got {u.shape[0]} codes but {labels.shape[0]} label rows; pass one per code."
            )
        return labels.to(device=u.device)

    @staticmethod
    def _pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
        """s_ij (N, N) as float, and the off-diagonal mask (N, N) bool."""
        s = ((labels @ labels.T) > 0).to(labels.dtype)
        off = ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        return s, off

    @staticmethod
    def _balance(s: Tensor, off: Tensor) -> Tensor:
        """HashNet/DCH weights: |S|/|S1| on similar pairs, |S|/|S0| on dissimilar ones.

        S is the set of pairs, S1 the similar and S0 the dissimilar ones; when either is empty
        every weight is 1. The weights average to 2 over S when both are present.
        """
        n_pos = (s * off).sum()
        total = off.sum()
        n_neg = total - n_pos
        # With one group empty the other's weight is total / total = 1 (the clamp only avoids
        # a division by zero; the empty group's weight multiplies nothing off the diagonal).
        return torch.where(s > 0, total / n_pos.clamp(min=1), total / n_neg.clamp(min=1))

    @staticmethod
    def _pair_mean(values: Tensor, off: Tensor) -> Tensor:
        if off.shape[0] < 2:
            return values.sum() * 0.0  # keeps the graph for a batch of one
        return values[off].mean()


@register_loss("dpsh")
class DPSHLoss(HashingLoss):
    """DPSH (Li, Wang & Kang 2016, "Feature Learning based Deep Supervised Hashing with
    Pairwise Labels").

        theta_ij = 1/2 u_i . u_j
        L = mean_{i != j} [log(1 + exp(theta_ij)) - s_ij theta_ij]
            + quantization_weight * mean_{i,k} (u_ik - b_ik)^2

    The negative log-likelihood of s under p(s_ij = 1) = sigmoid(theta_ij), plus the paper's
    quantization penalty ||b - u||^2 (the paper's eta). Both terms are means, as in
    DeepHash-pytorch, whose default weight 0.1 this follows; the paper sums and tunes eta.
    """

    def __init__(self, bits: int, num_classes: int, quantization_weight: float = 0.1) -> None:
        super().__init__(bits, num_classes)
        self.quantization_weight = quantization_weight

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        s, off = self._pairs(labels)
        theta = 0.5 * u @ u.T
        likelihood = F.softplus(theta) - s * theta  # stable log(1 + e^theta) - s theta
        quantization = (u - u.detach().sign()).pow(2).mean()
        return self._pair_mean(likelihood, off) + self.quantization_weight * quantization


@register_loss("hashnet")
class HashNetLoss(HashingLoss):
    """HashNet (Cao, Long, Wang & Yu 2017, "HashNet: Deep Learning to Hash by Continuation").

        theta_ij = alpha u_i . u_j
        L = mean_{i != j} w_ij [log(1 + exp(theta_ij)) - s_ij theta_ij]
        w_ij = |S| / |S1| if s_ij = 1,  |S| / |S0| if s_ij = 0

    A weighted pairwise log-likelihood: the weights balance the few similar pairs against the
    many dissimilar ones. alpha defaults to 10 / K (the authors' code). Call it on
    u = tanh(beta z) with beta raised by :func:`hashnet_beta` (``continuation = True``), which
    replaces a quantization term. The paper's extra factor c_ij for multi-label similarity
    is not used (s_ij is binary here, as in the reference implementations).
    """

    continuation: ClassVar[bool] = True

    def __init__(self, bits: int, num_classes: int, alpha: float | None = None) -> None:
        super().__init__(bits, num_classes)
        self.alpha = 10.0 / bits if alpha is None else alpha

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        s, off = self._pairs(labels)
        theta = self.alpha * u @ u.T
        likelihood = F.softplus(theta) - s * theta
        return self._pair_mean(self._balance(s, off) * likelihood, off)


@register_loss("dch")
class DCHLoss(HashingLoss):
    """DCH (Cao, Long, Liu & Wang 2018, "Deep Cauchy Hashing for Hamming Space Retrieval").

        d(u_i, u_j) = K/2 (1 - cos(u_i, u_j))                 (normalized Hamming distance)
        p(s_ij = 1) = gamma / (gamma + d_ij)                   (Cauchy probability)
        L = mean_{i != j} w_ij [s_ij log(d_ij / gamma) + log(1 + gamma / d_ij)]
            + quantization_weight * mean_i log(1 + d(|u_i|, 1) / gamma)

    The pair term is the cross-entropy of the Cauchy probability: s log(1 + d/gamma) +
    (1 - s) log(1 + gamma/d), rewritten; w_ij are HashNet's balance weights (|S|/|S1|,
    |S|/|S0|). The quantization term pulls |u| towards the all-ones direction (it measures the
    angle only, as in the paper). cos is clipped at 0.99, as in DeepHash-pytorch, so that
    d >= 0.005 K and the logs stay finite. Defaults gamma = 20, quantization_weight (the
    paper's lambda) = 0.1 follow DeepHash-pytorch; the paper selects both by cross-validation.
    """

    def __init__(
        self,
        bits: int,
        num_classes: int,
        gamma: float = 20.0,
        quantization_weight: float = 0.1,
    ) -> None:
        super().__init__(bits, num_classes)
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}.")
        self.gamma = gamma
        self.quantization_weight = quantization_weight

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        cos = F.normalize(a, dim=1, eps=1e-4) @ F.normalize(b, dim=1, eps=1e-4).T
        return self.bits / 2 * (1 - cos.clamp(max=0.99))

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        s, off = self._pairs(labels)
        d = self._distance(u, u)
        cauchy = s * torch.log(d / self.gamma) + torch.log1p(self.gamma / d)
        pairs = self._pair_mean(self._balance(s, off) * cauchy, off)
        ones = torch.ones(1, self.bits, dtype=u.dtype, device=u.device)
        quantization = torch.log1p(self._distance(u.abs(), ones) / self.gamma).mean()
        return pairs + self.quantization_weight * quantization


@register_loss("csq")
class CSQLoss(HashingLoss):
    """CSQ (Yuan et al. 2020, "Central Similarity Quantization for Efficient Image and Video
    Retrieval").

        c_i = sign(sum of the hash centers of sample i's labels)     (ties: a fixed random code)
        L = BCE((u_i + 1) / 2, (c_i + 1) / 2) + quantization_weight * mean_{i,k} (|u_ik| - 1)^2

    Each class has a fixed center (``self.centers``, (C, K), from :func:`hash_centers`: rows
    of [H; -H] of a Hadamard matrix, then far-apart random codes); the loss pulls every code to
    its center bit by bit. BCE and the penalty are means over all bits; quantization_weight
    (the paper's lambda) defaults to 1e-4. The centers are buffers, so they are saved with a
    checkpoint; ``seed`` fixes the random ones and the tie-break code.
    """

    def __init__(
        self,
        bits: int,
        num_classes: int,
        quantization_weight: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, num_classes)
        self.quantization_weight = quantization_weight
        self.register_buffer("centers", hash_centers(num_classes, bits, seed=seed))
        generator = torch.Generator().manual_seed(seed + 1)
        tie = torch.randint(0, 2, (bits,), generator=generator).float() * 2 - 1
        self.register_buffer("tie_break", tie)

    def _loss(self, u: Tensor, labels: Tensor) -> Tensor:
        target = multilabel_centers(labels, self.centers.to(u.dtype), self.tie_break.to(u.dtype))
        center_loss = F.binary_cross_entropy((u + 1) / 2, (target + 1) / 2)
        quantization = (u.abs() - 1).pow(2).mean()
        return center_loss + self.quantization_weight * quantization
