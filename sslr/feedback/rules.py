"""Registries of feedback rules (what B is) and scales (how large B is).

A feedback layer computes its forward pass with W; in the backward pass the error sent to the
layer below is multiplied by a feedback matrix B instead of W. Each rule here is a pure
recipe for B from the layer's weight W, an auxiliary tensor the layer owns (the random M of
fa/frsf/brsf) and a scale. The layers in :mod:`sslr.feedback.layers` own the state (buffers,
seeds, draw counters); this module only holds formulas, so the same code builds B inside
the backward pass and for :func:`sslr.feedback.alignment`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn.init import _calculate_fan_in_and_fan_out

RuleName = Literal["bp", "fa", "dfa", "ldfa", "usf", "frsf", "brsf", "kp", "wm"]
ScaleName = Literal["xavier", "meanabs", "none"]

_RULES: dict[str, FeedbackRule] = {}
_SCALES: dict[str, Scale] = {}


# ----------------------------------------------------------------------------------------
# Scales


class Scale:
    """How large B is: ``constant`` scales s*sign(W), ``bound`` is a in M ~ U(-a, a).

    ``adaptive`` scales are recomputed from the current W every time B is built.
    """

    name: ClassVar[str]
    adaptive: ClassVar[bool] = False

    def constant(self, weight: Tensor) -> float:
        """s of uSF's s*sign(W) for a non-adaptive scale (depends on W's shape only)."""
        raise NotImplementedError

    def bound(self, weight: Tensor) -> float:
        """a of the random draw M ~ U(-a, a) (fa, frsf, brsf)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Scale({self.name!r})"

    def __reduce__(self):  # singletons: unpickle to the registered instance
        return (get_scale, (self.name,))


def _register(registry: dict, kind: str, cls: type) -> type:
    # Rules and scales are registered singletons: one instance per name, duplicates refused.
    if cls.name in registry:
        raise ValueError(f"a {kind} named {cls.name!r} is already registered")
    registry[cls.name] = cls()
    return cls


def _lookup(registry: dict, kind: str, plural: str, value, base: type):
    if isinstance(value, base):
        return value
    try:
        return registry[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown feedback {kind} {value!r}; known {plural}: {', '.join(registry)}"
        ) from None


def register_scale(cls: type[Scale]) -> type[Scale]:
    """Class decorator adding a scale to the registry; duplicate names are refused."""
    return _register(_SCALES, "scale", cls)


def _fan_sum(weight: Tensor) -> int:
    # PyTorch's count: conv fans include the kernel size (fan_in = C_in/groups * kh * kw).
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    return fan_in + fan_out


@register_scale
class XavierScale(Scale):
    """Glorot/Xavier scale, BioTorch's and therefore the paper's default.

    uSF: s = sqrt(2 / (fan_in + fan_out)). Random M ~ U(-a, a), a = sqrt(6 / (fan_in +
    fan_out)) (xavier_uniform), so |M| ~ U(0, a) has root-mean-square s: uSF and frSF/brSF
    send errors of the same size. Fans as torch.nn.init counts them (conv: times kh*kw).
    """

    name = "xavier"

    def constant(self, weight: Tensor) -> float:
        return math.sqrt(2.0 / _fan_sum(weight))

    def bound(self, weight: Tensor) -> float:
        return math.sqrt(6.0 / _fan_sum(weight))


@register_scale
class MeanAbsScale(Scale):
    """s = mean|W| of the layer, recomputed from the current W whenever B is built.

    mean|W| is the least-squares best s for s*sign(W) (when W has no zeros). Random
    magnitudes are drawn from U(0, 1) (|M|, M ~ U(-1, 1)) and rescaled so that
    mean|B| = mean|W| exactly.
    """

    name = "meanabs"
    adaptive = True

    def constant(self, weight: Tensor) -> float:
        raise TypeError("meanabs is adaptive: its s is computed from the current W")

    def bound(self, weight: Tensor) -> float:
        return 1.0


@register_scale
class NoScale(Scale):
    """No scaling: uSF's B = sign(W) (s = 1); random M ~ U(-1, 1), so |M| ~ U(0, 1).

    Unscaled sign feedback makes errors explode through deep pretrained networks: this is the
    ablation, not a setting to fine-tune with.
    """

    name = "none"

    def constant(self, weight: Tensor) -> float:
        return 1.0

    def bound(self, weight: Tensor) -> float:
        return 1.0


def _meanabs_factor(weight: Tensor, reference: Tensor) -> Tensor:
    """mean|W| / mean|reference| as a 0-dim tensor (meanabs rescaling of random B)."""
    return weight.abs().mean() / reference.abs().mean()


# ----------------------------------------------------------------------------------------
# Rules


class FeedbackRule:
    """One learning rule: how B is built from W, the layer's auxiliary tensor and a scale.

    Class attributes describe the state a layer must own for the rule:
    ``exact`` (B = W: the layer runs as plain nn.Conv2d/nn.Linear), ``fixed_buffer`` (name of
    a persistent buffer drawn once from the layer's seed), ``resamples`` (a fresh random
    magnitude per training batch, from the layer's seed and draw counter) and ``learns``
    (the buffer is B itself and is updated after each optimizer step by
    :mod:`sslr.feedback.learning`: ``"kolen-pollack"`` or ``"mirror"``).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for --help
    exact: ClassVar[bool] = False
    fixed_buffer: ClassVar[str | None] = None
    resamples: ClassVar[bool] = False
    learns: ClassVar[str | None] = None
    draws_as: ClassVar[str | None] = None  # the rule whose random draw this one starts from
    direct: ClassVar[bool] = False  # B projects the network's output error (dfa)
    low_rank: ClassVar[bool] = False  # B has a rank set per network (ldfa: draw_low_rank)

    def draw_fixed(self, weight: Tensor, scale: Scale, generator: torch.Generator) -> Tensor:
        """The persistent random tensor (on the CPU, in float64) for ``fixed_buffer``."""
        raise NotImplementedError

    def matrix(self, weight: Tensor, aux: Tensor | None, scale: Scale, constant: float) -> Tensor:
        """B for weight W; ``aux`` is the layer's random tensor, ``constant`` its fixed s."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"FeedbackRule({self.name!r})"

    def __reduce__(self):
        return (get_rule, (self.name,))


def register_rule(cls: type[FeedbackRule]) -> type[FeedbackRule]:
    """Class decorator adding a rule to the registry; duplicate names are refused."""
    return _register(_RULES, "rule", cls)


def _uniform_magnitude(shape, bound: float, generator: torch.Generator) -> Tensor:
    # |M| with M ~ U(-a, a) is distributed as U(0, a): one draw, no abs.
    return torch.empty(shape, dtype=torch.float64).uniform_(0.0, bound, generator=generator)


def _signed_magnitude(weight: Tensor, magnitude: Tensor, scale: Scale) -> Tensor:
    # sign(W) from the full-precision weight: casting W first could flush tiny weights to 0.
    b = torch.sign(weight).mul_(magnitude)
    if scale.adaptive:
        b.mul_(_meanabs_factor(weight, magnitude))
    return b


@register_rule
class Backprop(FeedbackRule):
    """Backpropagation, the control: B = W.

    The layer runs as plain nn.Conv2d / nn.Linear, so its gradients are exactly theirs.
    (Rumelhart, Hinton & Williams 1986.)
    """

    name = "bp"
    summary = "backpropagation, B = W (the control)"
    exact = True

    def matrix(self, weight, aux, scale, constant):
        return weight


@register_rule
class FeedbackAlignment(FeedbackRule):
    """Feedback alignment: B = M, a fixed random matrix independent of W.

    M ~ U(-a, a) drawn once from the layer's seed and kept as the persistent buffer
    ``feedback_weight`` (a from the scale; meanabs rescales B so mean|B| = mean|W|).
    Lillicrap, Cownden, Tweed & Akerman 2016, "Random synaptic feedback weights support
    error backpropagation for deep learning". The baseline sign-symmetry improves on.
    """

    name = "fa"
    summary = "feedback alignment: B a fixed random matrix"
    fixed_buffer = "feedback_weight"

    def draw_fixed(self, weight, scale, generator):
        return _random_feedback(weight, scale, generator)

    def matrix(self, weight, aux, scale, constant):
        if scale.adaptive:
            return aux * _meanabs_factor(weight, aux)
        return aux


@register_rule
class DirectFeedbackAlignment(FeedbackAlignment):
    """Direct feedback alignment: each layer's error is the network's output error e (N, D)
    projected through its own fixed random B, (D, in) or (D, C_in, kh, kw), not the error
    from the layer above (:mod:`sslr.feedback.direct`).

    B ~ U(-a, a) with a from the scale on B's own shape (xavier: sqrt(6 / (fan_in +
    fan_out)) as BioTorch's xavier_uniform_ of ``weight_dfa``), drawn once from the layer's
    seed, the persistent buffer ``feedback_direct``; meanabs rescales it so mean|B| = mean|W|.
    Nøkland 2016, "Direct Feedback Alignment Provides Learning in Deep Neural Networks".
    """

    name = "dfa"
    summary = (
        "direct feedback alignment: each layer gets the output error through its own fixed random B"
    )
    fixed_buffer = "feedback_direct"
    direct = True
    # fa's draw and B: the layer passes a template of B's shape (D, in, ...) as ``weight``


@register_rule
class LowRankFeedbackAlignment(FeedbackAlignment):
    """Low-dimensional feedback alignment: fa with a rank-r B = Q P, Q (out, r) and P (r, in *
    kh * kw) fixed random, so the error a layer sends down lives in an r-dimensional space.

    The backward pathway of Hanut & Kadmon 2025 ("Training Large Neural Networks With
    Low-Dimensional Error Feedback", arXiv 2502.20580), with fixed random factors: their
    learning rules for Q and P (normative or local subspace learning) are not implemented.
    r: the model's ``feedback_rank``, by default the network's output size (their finding:
    an error dimension of the order of the task's suffices), capped at min(out, in * kh * kw).
    Q, P ~ U(-1, 1) drawn once from the layer's seed; B = Q P rescaled to the root-mean-square
    of fa's M (xavier: a / sqrt(3)) and kept whole in the buffer ``feedback_weight`` (the
    backward is fa's, one product; meanabs rescales B so mean|B| = mean|W|, as fa).
    """

    name = "ldfa"
    summary = "low-rank feedback alignment: fixed random B of rank --model.feedback_rank"
    fixed_buffer = "feedback_weight"
    low_rank = True

    def draw_low_rank(self, weight, scale, generator, rank: int) -> Tensor:
        rows = weight.shape[0]
        cols = weight[0].numel()
        r = max(1, min(int(rank), rows, cols))
        q = torch.empty((rows, r), dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
        p = torch.empty((r, cols), dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
        b = q.mm(p)
        target = scale.bound(weight) / math.sqrt(3.0)  # the rms of U(-a, a)
        return b.mul_(target / b.pow(2).mean().sqrt()).view(weight.shape)


@register_rule
class UniformSignSymmetry(FeedbackRule):
    """Uniform sign-symmetry (uSF): B = s * sign(W), one magnitude s for the whole layer.

    s from the scale: xavier sqrt(2/(fan_in+fan_out)), meanabs mean|W|, none 1. No state.
    Liao, Leibo & Poggio 2016, "How important is weight symmetry in backpropagation?";
    at ImageNet scale: Xiao, Chen, Liao & Poggio 2018.
    """

    name = "usf"
    summary = "uniform sign-symmetry: B = s * sign(W)"

    def matrix(self, weight, aux, scale, constant):
        b = torch.sign(weight)
        return b.mul_(weight.abs().mean() if scale.adaptive else constant)


@register_rule
class FixedRandomSignSymmetry(FeedbackRule):
    """Fixed random-magnitude sign-symmetry (frSF): B = |M| * sign(W), M drawn once.

    |M| is the persistent buffer ``feedback_magnitude``, |M| ~ U(0, a) (M ~ U(-a, a)), drawn
    once from the layer's seed; the signs follow the current W. Liao, Leibo & Poggio 2016.
    """

    name = "frsf"
    summary = "fixed random-magnitude sign-symmetry: B = |M| * sign(W), M fixed"
    fixed_buffer = "feedback_magnitude"

    def draw_fixed(self, weight, scale, generator):
        return _uniform_magnitude(weight.shape, scale.bound(weight), generator)

    def matrix(self, weight, aux, scale, constant):
        return _signed_magnitude(weight, aux, scale)


@register_rule
class BatchRandomSignSymmetry(FeedbackRule):
    """Batch random-magnitude sign-symmetry (brSF): B = |M_t| * sign(W), M_t redrawn per batch.

    |M_t| ~ U(0, a) is a function of the layer's seed and its draw counter t (buffers
    ``feedback_seed`` and ``feedback_draws``): a training forward advances t; eval forwards
    reuse the current draw unless :func:`sslr.feedback.resampling` is active. Eager draws
    come from the device's generator seeded with a hash of (seed, t) (CPU and CUDA give
    different sequences); under torch.compile |M_t| is a counter hash computed on the device
    in the backward, where t also advances (another sequence, equally reproducible).
    Liao, Leibo & Poggio 2016.
    """

    name = "brsf"
    summary = "batch random-magnitude sign-symmetry: B = |M| * sign(W), M redrawn per batch"
    resamples = True

    def matrix(self, weight, aux, scale, constant):
        return _signed_magnitude(weight, aux, scale)


def _random_feedback(weight: Tensor, scale: Scale, generator: torch.Generator) -> Tensor:
    # fa's M ~ U(-a, a), a from the scale: also the starting B of the rules that learn B.
    a = scale.bound(weight)
    return torch.empty(weight.shape, dtype=torch.float64).uniform_(-a, a, generator=generator)


class _LearnedFeedback(FeedbackRule):
    """B is learned state: it starts as fa's M of the same seed and is returned as it is."""

    draws_as = "fa"
    fixed_buffer = "feedback_weight"

    def draw_fixed(self, weight, scale, generator):
        return _random_feedback(weight, scale, generator)

    def matrix(self, weight, aux, scale, constant):
        return aux


@register_rule
class KolenPollack(_LearnedFeedback):
    """Kolen-Pollack: B starts as fa's random M and then receives W's every update, while the
    weight decay acts on B - W, so B - W shrinks by (1 - lr * weight_decay) per step and B
    approaches W.

    B is the persistent buffer ``feedback_weight``; after each optimizer step
    :class:`sslr.feedback.learning.FeedbackLearning` sets B <- B + (W' - W) - lr * wd * (B - W)
    (W, W': the weight before and after the step; lr, wd: its parameter group's). For plain
    SGD this is the paper's rule exactly: both get the update -lr * dL/dW (the local update,
    transposed for B in the paper's notation) and each its own decay -lr * wd * (itself); with
    momentum or Adam, B takes W's whole step, whatever the optimizer made of the gradient.
    Kolen & Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep Learning
    without Weight Transport". B starts as fa's M of the same seed (meanabs: M ~ U(-1, 1), not rescaled: B
    is learned state, not a function of W).
    """

    name = "kp"
    summary = "Kolen-Pollack: B takes W's updates, B - W decays (B learns W)"
    learns = "kolen-pollack"


@register_rule
class WeightMirror(_LearnedFeedback):
    """Weight mirror: B starts as fa's random M and learns W from the layer's own response to
    noise: in a mirror step the layer receives x ~ N(0, sigma^2) (no bias), answers y = W x,
    and B <- B + rate * (y x^T / (n sigma^2) - decay * B), whose mean step moves B towards
    W / decay (n: the samples behind the correlation; a conv layer's y x^T is the weight
    gradient of its convolution, summed over positions and divided by their count, so with
    zero padding a kernel tap tends to W times the share of positions where it sees input).

    B is the persistent buffer ``feedback_weight``, updated by
    :class:`sslr.feedback.learning.FeedbackLearning` after optimizer steps (rate, noise,
    decay, batch and how often: :class:`sslr.feedback.learning.Mirror`); the noise is drawn
    from the layer's seed and its mirror counter (buffer ``feedback_mirrors``), so a resumed
    run mirrors the same noise. B starts as fa's M of the same seed (as for kp). Akrout et
    al. 2019, "Deep Learning without Weight Transport".
    """

    name = "wm"
    summary = "weight mirror: B learns W from the layer's response to noise"
    learns = "mirror"


# ----------------------------------------------------------------------------------------
# Lookup


def list_rules() -> list[str]:
    """Names of the registered feedback rules."""
    return list(_RULES)


def rules_help(indent: str = "  ") -> str:
    """One line per registered rule, ``name: summary``, for --help."""
    return "".join(f"{indent}{name}: {rule.summary}\n" for name, rule in _RULES.items())


def list_scales() -> list[str]:
    """Names of the registered feedback scales."""
    return list(_SCALES)


def get_rule(rule: str | FeedbackRule) -> FeedbackRule:
    """The registered rule named ``rule``; ValueError listing the known ones otherwise."""
    return _lookup(_RULES, "rule", "rules", rule, FeedbackRule)


def get_scale(scale: str | Scale) -> Scale:
    """The registered scale named ``scale``; ValueError listing the known ones otherwise."""
    return _lookup(_SCALES, "scale", "scales", scale, Scale)
