"""Feedback that learns: Kolen-Pollack's and the weight mirror's updates of B.

kp and wm layers keep B as the buffer ``feedback_weight`` (see :mod:`sslr.feedback.rules`).
:class:`FeedbackLearning` updates it around an optimizer's steps through torch's optimizer
step hooks, so it works in any training loop, Lightning's included (the tasks attach it for
every fit), and for any optimizer:

- **kp**: before the step W is copied; after it, B <- B + (W' - W) - r * (B - W), i.e.
  B - W <- (1 - r) (B - W) with B moved by W's step, where r is the layer's parameter group's
  lr * weight_decay (the paper's decay, as the optimizer applies it to W) or ``kp_decay``.
  Three in-place kernels per layer and step, all layers at once (``torch._foreach_*``).
- **wm**: every ``Mirror.every`` optimizer steps, a mirror step per layer: ``Mirror.batch``
  noise inputs x ~ N(0, noise^2) shaped like the layer's last input, y = W x (the layer's
  convolution or product, no bias), and B <- B + rate * (y x^T / (n noise^2) - decay * B),
  which tends to W / decay (a padded conv: each kernel tap times the share of output
  positions where it sees the input rather than the padding, e.g. 0.56 at the corners of a
  3x3 kernel, pad 1, on a 4 x 4 input):
  a forward and a weight-gradient kernel of a small batch per layer, no second backward
  pass of the network. The noise is drawn on the layer's device from a generator seeded by
  (layer seed, mirror counter), so a resumed run mirrors the same noise.

Torch's optimizer hooks exist for this (``register_step_pre_hook`` /
``register_step_post_hook``); no library offers learned feedback for arbitrary CNNs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import feedback_layers
from .layers import FeedbackConv2d
from .rule_state import _MIRRORS, FeedbackLayer
from .seeding import derive_seed

MIRROR = 3  # seed stream of the mirror noise (see seeding: FIXED 0, TRAIN 1, RESAMPLE 2)

_convolution_backward = torch.ops.aten.convolution_backward.default


@dataclass(frozen=True)
class Mirror:
    """How wm layers mirror: ``rate`` (step size of B's update), ``noise`` (standard deviation
    of the noise inputs), ``decay`` (B's decay per mirror step: B tends to W / decay),
    ``batch`` (noise inputs per mirror step) and ``every`` (a mirror step after every
    ``every``-th optimizer step)."""

    rate: float = 0.02
    noise: float = 1.0
    decay: float = 1.0
    batch: int = 16
    every: int = 1

    def __post_init__(self) -> None:
        for name in ("rate", "noise", "decay"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"mirror {name} must be > 0, got {getattr(self, name)}")
        if self.rate * self.decay >= 2:
            raise ValueError(
                f"mirror rate * decay must be below 2 (B would diverge), got {self.rate} * "
                f"{self.decay}: lower the rate"
            )
        for name in ("batch", "every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"mirror {name} must be >= 1, got {getattr(self, name)}")


def mirror_correlation(layer: FeedbackLayer, x: Tensor) -> Tensor:
    """y x^T / n for inputs ``x`` (n samples of the layer's input): the layer's weight-shaped
    correlation of its response y = W x (no bias) with x; a conv layer's sums over output
    positions and divides by their number as well."""
    w = layer.weight.detach()
    if isinstance(layer, FeedbackConv2d):
        if layer._explicit_pad is not None:
            x = F.pad(x, layer._explicit_pad, mode=layer._pad_mode)
        stride, padding, dilation, groups = layer._conv
        y = F.conv2d(x, w, None, stride, padding, dilation, groups)
        (_, grad_w, _) = _convolution_backward(
            y, x, w, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False]
        )
        return grad_w / (x.shape[0] * y.shape[-2] * y.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    y2 = F.linear(x2, w)
    return y2.t().mm(x2) / x2.shape[0]


@torch.no_grad()
def mirror_step(layer: FeedbackLayer, mirror: Mirror, input_shape: tuple[int, ...]) -> None:
    """One mirror step of a wm ``layer`` on noise shaped ``(mirror.batch, *input_shape)``."""
    b = layer._buffers["feedback_weight"]
    counter = layer._buffers[_MIRRORS]
    generator = torch.Generator(device=b.device)
    generator.manual_seed(derive_seed(layer._seed, MIRROR, int(counter)))
    x = torch.randn(
        (mirror.batch, *input_shape), generator=generator, device=b.device, dtype=b.dtype
    ).mul_(mirror.noise)
    c = mirror_correlation(layer, x)
    b.add_(c.div_(mirror.noise**2).sub_(b, alpha=mirror.decay), alpha=mirror.rate)
    counter.add_(1)


class FeedbackLearning:
    """Keeps the B of ``model``'s kp and wm layers learning around ``optimizer``'s steps.

    ``FeedbackLearning(model, optimizer)`` registers the hooks; ``remove()`` takes them off.
    Layers are looked up at every step, so a rule switched mid-run (``set_rule``,
    ``RuleSwitch``) is followed (the model's layers are listed when the hooks are attached:
    attach after converting); a layer whose weight the optimizer does not hold, or inside
    ``exact_gradients``, is left alone. A wm layer mirrors once it has seen an input (its
    shape is the noise's). ``kp_decay``: B - W's decay per step instead of lr * weight_decay;
    ``steps``: optimizer steps already taken (a resumed run), which ``Mirror.every`` counts.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mirror: Mirror | None = None,
        kp_decay: float | None = None,
        steps: int = 0,
    ) -> None:
        if kp_decay is not None and not 0 <= kp_decay < 1:
            raise ValueError(f"kp_decay must be in [0, 1), got {kp_decay}")
        self.model, self.optimizer = model, optimizer
        self.mirror = Mirror() if mirror is None else mirror
        self.kp_decay = kp_decay
        self.steps = steps  # optimizer steps taken (a resumed run: those before it)
        self._warned = False
        self._before: list[tuple[FeedbackLayer, Tensor]] = []
        self._layers = [layer for _, layer in feedback_layers(model)]
        self._groups: dict[int, dict] | None = None  # id(parameter) -> its group
        self._n_groups = 0
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _learning(self, kind: str) -> list[FeedbackLayer]:
        # The layers are listed once (conversion is done); their rules are read every step.
        # A parameter group added later (add_param_group) is picked up by the lookup's size.
        groups = self.optimizer.param_groups
        if self._groups is None or self._n_groups != len(groups):
            self._groups = {id(p): g for g in groups for p in g["params"]}
            self._n_groups = len(groups)
        return [
            layer
            for layer in self._layers
            if layer._rule.learns == kind
            and not layer._exact_depth
            and id(layer.weight) in self._groups
        ]

    def _pre_step(self, optimizer, args, kwargs) -> None:
        layers = self._learning("kolen-pollack")
        if layers:
            with torch.no_grad():
                weights = [m.weight.detach() for m in layers]
                self._before = list(zip(layers, torch._foreach_mul(weights, 1.0), strict=True))
        else:
            self._before = []

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self._before:
            layers = [m for m, _ in self._before]
            bs = [m._buffers["feedback_weight"] for m in layers]
            rates = [self._kp_rate(m) for m in layers]
            if not self._warned and not any(rates):
                self._warned = True
                warnings.warn(
                    "kp: no weight decay on the kp layers' parameters and no kp_decay: B - W "
                    "never shrinks (B takes W's updates only); set weight_decay or "
                    "--model.kp_decay",
                    stacklevel=2,
                )
            torch._foreach_sub_(bs, [w for _, w in self._before])
            torch._foreach_mul_(bs, [1.0 - r for r in rates])
            torch._foreach_add_(bs, [m.weight.detach() for m in layers])
            self._before = []
        if self.steps % self.mirror.every == 0:
            for layer in self._learning("mirror"):
                shape = (
                    layer.__dict__.get("_input_shape")
                    if isinstance(layer, FeedbackConv2d)
                    else (layer.weight.shape[1],)
                )
                if shape is not None:
                    mirror_step(layer, self.mirror, shape)

    def _kp_rate(self, layer: FeedbackLayer) -> float:
        if self.kp_decay is not None:
            return self.kp_decay
        group = self._groups[id(layer.weight)]
        return float(group["lr"]) * float(group.get("weight_decay", 0.0))
