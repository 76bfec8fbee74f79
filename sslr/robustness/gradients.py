"""Gradient sources: which backward pass a white-box attack follows (rule, exact, eot), as ART
classifiers whose ``loss_gradient`` says so."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch
from torch import nn

from sslr.attacks.gradient import degenerate_gradients
from sslr.feedback import exact_gradients, feedback_layers, resampling
from sslr.robustness.config import GradientSource
from sslr.robustness.target import AttackTarget


def gradient_context(
    network: nn.Module, source: GradientSource, draw_start: int = 0
) -> AbstractContextManager:
    """The context a backward pass of ``source`` runs in.

    ``rule`` and ``eot`` run under ``resampling``: brsf layers draw a fresh B at every forward,
    eval mode included (the paper's threat model; a no-op for the other rules). ``exact`` runs
    under ``exact_gradients`` (B = W). ``none`` (query attacks) and a network without feedback
    layers need neither. ``draw_start``: the index of the first forward's brsf draw.
    """
    if source is GradientSource.TRANSFER:
        raise ValueError("Gradient source 'transfer' is the surrogate's 'rule' gradient")
    if source is GradientSource.NONE or next(iter(feedback_layers(network)), None) is None:
        return nullcontext()
    if source is GradientSource.EXACT:
        return exact_gradients(network)
    return resampling(network, start=draw_start)


class _DeviceStandardisation(StandardisationMeanStdPyTorch):
    """ART's (x - mean) / std with the statistics kept on the device. ART's own builds them from
    NumPy at every call: a host-to-device copy that synchronizes the GPU at every attack step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        key = (x.device, x.dtype, x.dim())
        if key not in self._stats:
            shape = (1, -1) + (1,) * (x.dim() - 2)  # (1, C, 1, 1): channels first
            self._stats[key] = tuple(
                torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(shape)
                for v in (self.mean, self.std)
            )
        mean, std = self._stats[key]
        return (x - mean) / std, y


class GradientSourceClassifier(PyTorchClassifier):
    """ART's ``PyTorchClassifier`` on ``target.network`` with the target's normalization as ART
    preprocessing (inputs and epsilons in [0, 1] pixel units, ``clip_values=(0, 1)``), whose
    ``loss_gradient`` follows a gradient source: ``rule`` (the model's own backward; brsf draws
    a fresh B at every forward), ``exact`` (B = W) or ``eot`` (the mean over ``eot_samples``
    backward passes, each with a fresh B: Athalye et al. 2018).

    Use it as a context manager around a whole attack: the source's context is entered once,
    so that brsf's draws run on through the attack (``resampling`` restarts its stream on
    entry: entered per gradient call, every step would get the same B)::

        with attack_mode(target.network), GradientSourceClassifier(target, shape, src) as clf:
            adv = pgd(clf, x, y_onehot, ...)

    ``attack_mode`` restores what ART's ``loss_gradient`` changes (``zero_grad``, ``train``).

    It is the provider every registered attack receives (see :mod:`sslr.robustness.registry`):
    ``loss`` is the task's objective on the network's outputs (cross-entropy by default; a
    hashing code objective with ``labels="codes"``, whose (N, K) targets reach the loss
    untouched). NaN gradient entries are counted into :attr:`nan_count` (on the device, no
    sync) and treated as 0, as ART does.
    """

    def __init__(
        self,
        target: AttackTarget,
        input_shape: Sequence[int],
        source: GradientSource = GradientSource.RULE,
        eot_samples: int = 1,
        loss: nn.Module | None = None,
        labels: str = "classes",
    ) -> None:
        device = target.device
        if eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
        device_type = "gpu" if device.type == "cuda" else "cpu"
        # ART picks the current CUDA device and moves the model there: make that the model's own.
        where = torch.cuda.device(device) if device.type == "cuda" else nullcontext()
        with where:
            super().__init__(
                model=target.network,
                loss=loss if loss is not None else nn.CrossEntropyLoss(),
                input_shape=tuple(input_shape),
                nb_classes=target.num_classes,
                clip_values=(0.0, 1.0),
                preprocessing=_DeviceStandardisation(
                    mean=np.asarray(target.mean),
                    std=np.asarray(target.std),
                    device_type=device_type,
                ),
                device_type=device_type,
            )
        self.target = target
        self.source = GradientSource(source)
        self.eot_samples = eot_samples if self.source is GradientSource.EOT else 1
        self._stack: ExitStack | None = None
        self.nan_count = torch.zeros((), dtype=torch.long, device=device)
        # Input gradients seen, and those all zero or not finite (the masking verdict's share)
        self.gradient_count = torch.zeros((), dtype=torch.long, device=device)
        self.degenerate_count = torch.zeros((), dtype=torch.long, device=device)
        self.transfer = False  # crafted on a surrogate (set by the engine)
        self.draw_start = 0  # the first brsf draw's index once entered (set per batch)
        self._codes = labels == "codes"
        if self._codes:  # ART set these for its CrossEntropyLoss; code targets reduce nothing
            self._reduce_labels = self._int_labels = self._probability_labels = False

    def __enter__(self) -> GradientSourceClassifier:
        if self._stack is not None:
            raise RuntimeError("GradientSourceClassifier is already entered")
        self._stack = ExitStack()
        self._stack.enter_context(
            gradient_context(self.target.network, self.source, self.draw_start)
        )
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.close()

    def reduce_labels(self, y):
        """One-hot (N, K) tensors -> class indices, without ART's check for probability labels
        (a ``torch.equal``, i.e. a device sync at every attack step): sslr's labels are one-hot
        by construction. Code targets (hashing) go to the loss as they are."""
        if self._codes:
            return y
        if isinstance(y, torch.Tensor) and y.dim() == 2:
            return y.argmax(dim=1)
        return super().reduce_labels(y)

    def _check_entered(self) -> None:
        if self._stack is None:
            raise RuntimeError(
                "Use GradientSourceClassifier as a context manager around the attack "
                "(`with GradientSourceClassifier(...) as classifier:`): its gradient source "
                "applies inside"
            )

    def _count_nan(self, grad: torch.Tensor) -> torch.Tensor:
        if not isinstance(grad, torch.Tensor):  # ART's NumPy path (the art backend)
            return grad
        self.note_degenerate(degenerate_gradients(grad))
        nan = grad.isnan()
        self.nan_count += nan.sum().to(self.nan_count.device)
        return grad.masked_fill(nan, 0.0)

    def note_degenerate(self, degenerate: torch.Tensor, white_box: bool = True) -> None:
        """Count per-image flags (N,) bool: the input gradient was all zero or not finite."""
        if white_box:
            self.gradient_count += degenerate.numel()
            self.degenerate_count += degenerate.sum().to(self.degenerate_count.device)

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """Gradient of the objective w.r.t. ``x`` (pixel units) along the gradient source."""
        self._check_entered()
        grad = super().loss_gradient(x, y, training_mode=training_mode, **kwargs)
        for _ in range(self.eot_samples - 1):
            grad = grad + super().loss_gradient(x, y, training_mode=training_mode, **kwargs)
        return self._count_nan(grad / self.eot_samples if self.eot_samples > 1 else grad)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs (logits, or a hashing model's codes u) on [0, 1] pixels,
        differentiable along the gradient source (the context is entered around the attack)."""
        self._check_entered()
        return self.target.network(self.target.normalize(x))

    def gradient(self, x: torch.Tensor, y: torch.Tensor, loss) -> torch.Tensor:
        """d loss(outputs(x), y) / dx (summed over the batch) along the gradient source, the
        mean over ``eot_samples`` draws for ``eot``: for attacks with their own objective."""
        self._check_entered()
        total = torch.zeros_like(x)
        for _ in range(self.eot_samples):
            x_in = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(self(x_in), y), x_in)
            total = total + grad
        return self._count_nan(total / self.eot_samples)
