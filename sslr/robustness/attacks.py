"""The attacks, one batch at a time: FGSM and PGD (L-inf, L2) along a gradient source, ART's
Square attack, and the runtime check that every adversarial example is a legal one.

Why sslr runs the FGSM/PGD iterations itself (``backend="torch"``, the default) rather than
through ART's ``ProjectedGradientDescentPyTorch.generate`` (``backend="art"``, kept as the
reference the tests compare against): with the same gradients (ART's ``loss_gradient``), ART's
``generate`` also (1) round-trips every batch through NumPy and host memory, (2) runs two extra
prediction passes over all inputs after the attack for a log line (``compute_success`` is an
argument of ``logger.info``, so it is evaluated whatever the log level), and (3) builds a
float64 array the size of the batch from ``eps`` at every projection step and copies it to the
device. On a GPU that costs FGSM most of its speed (see ``benchmarks/attack_throughput.py``).
FGSM is PGD with one step of size eps and no random start in both backends (ART's
``FastGradientMethod`` goes through NumPy at every batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sslr.attacks.square_art import art_generate, art_square_attack
from sslr.robustness.config import Backend, Norm
from sslr.robustness.gradients import GradientSourceClassifier
from sslr.robustness.registry import register_attack


class AttackBoundsError(RuntimeError):
    """An attack returned an example outside its eps ball or outside [0, 1]: a bug, never a
    result."""


def _per_sample_norm(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = v.flatten(1)  # (N, C*H*W)
    return flat.abs().amax(dim=1) if norm is Norm.LINF else flat.norm(p=2, dim=1)


def _direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` (as ART: sign for L-inf, g/||g|| for L2)."""
    if norm is Norm.LINF:
        return grad.sign()
    g_norm = grad.flatten(1).norm(p=2, dim=1).view(-1, *[1] * (grad.dim() - 1))
    return torch.where(g_norm > 0, grad / g_norm.clamp_min(1e-30), torch.zeros_like(grad))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project perturbations ``delta`` (N, ...) onto the ``norm`` ball of radius ``eps``."""
    if norm is Norm.LINF:
        return delta.clamp(-eps, eps)
    d_norm = delta.flatten(1).norm(p=2, dim=1).view(-1, *[1] * (delta.dim() - 1))
    return delta * torch.clamp(eps / d_norm.clamp_min(1e-30), max=1.0)


def random_start(
    x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator
) -> torch.Tensor:
    """A uniform point of the ``norm`` ball of radius ``eps`` around ``x``, clipped to [0, 1]."""
    if norm is Norm.LINF:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * noise - 1) * eps
    else:  # uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (N, 1, 1, 1)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
        u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
        d = x[0].numel()
        delta = direction * eps * u.pow(1.0 / d)
    return (x + delta).clamp(0.0, 1.0)


def pgd(
    classifier: GradientSourceClassifier,
    x: torch.Tensor,
    y_onehot: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    step: float,
    steps: int,
    start_random: bool,
    generator: torch.Generator | None = None,
    nan_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """PGD (Madry et al. 2018) on a batch, on its device; FGSM is ``steps=1, step=eps,
    start_random=False``. Each step: x <- clip(x + step * direction(grad)), then project
    x - x0 onto the eps ball (ART's order). Gradients come from ``classifier.loss_gradient``,
    so they follow its gradient source. NaN gradient entries count into ``nan_count`` and are
    treated as 0 (as ART does), without a device sync.
    """
    x0 = x.detach()
    if start_random:
        if generator is None:
            raise ValueError("A random start needs a generator (seeded: results must repeat)")
        x_adv = random_start(x0, eps, norm, generator)
    else:
        x_adv = x0.clone()
    for _ in range(steps):
        grad = classifier.loss_gradient(x_adv, y_onehot)  # (N, C, H, W), pixel units
        nan = grad.isnan()
        if nan_count is not None:
            nan_count += nan.sum()
        grad = grad.masked_fill(nan, 0.0)
        x_adv = (x_adv + step * _direction(grad, norm)).clamp(0.0, 1.0)
        x_adv = x0 + project(x_adv - x0, eps, norm)
    return x_adv.clamp(0.0, 1.0).detach()


def pgd_art(
    classifier: GradientSourceClassifier,
    x: torch.Tensor,
    y_onehot: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    step: float,
    steps: int,
    start_random: bool,
) -> torch.Tensor:
    """The same attack through ART's ``ProjectedGradientDescentPyTorch.generate`` (the
    reference backend; its random start draws from NumPy's global generator)."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    attack = ProjectedGradientDescentPyTorch(
        classifier,
        norm=np.inf if norm is Norm.LINF else 2,
        eps=eps,
        eps_step=step,
        max_iter=steps,
        num_random_init=int(start_random),
        batch_size=x.shape[0],
        verbose=False,
    )
    return art_generate(attack, x, y_onehot)


def square(
    classifier: GradientSourceClassifier,
    x: torch.Tensor,
    y_onehot: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    queries: int,
    batch_size: int,
) -> torch.Tensor:
    """ART's Square attack (Andriushchenko et al. 2020): query-based, no gradient. It draws from
    NumPy's global generator (seed it; ``attack_mode`` restores it)."""
    attack = art_square_attack(
        classifier, norm=norm.value, eps=eps, queries=queries, batch_size=batch_size
    )
    return art_generate(attack, x, y_onehot)


def bound_excess(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """How far the batch ``x_adv`` strays outside the eps ball around ``x`` or outside [0, 1],
    beyond float rounding (a 0-d tensor; <= 0 means every example is legal). Stays on the
    device: callers check it once per run, not per batch."""
    # rounding: x0 + delta - x0 differs from delta by an ulp of x0 per element (6e-8 near 1)
    tol = 1e-6 if norm is Norm.LINF else 1e-6 * (math.sqrt(x[0].numel()) + eps)
    ball = (_per_sample_norm(x_adv - x, norm) - eps - tol).amax()
    box = torch.maximum((-x_adv).amax(), (x_adv - 1.0).amax()) - 1e-6
    return torch.maximum(ball, box)


def check_bounds(excess: torch.Tensor | float, what: str) -> None:
    """Raise :class:`AttackBoundsError` when ``bound_excess`` found an illegal example."""
    excess = float(excess)
    if excess > 0 or math.isnan(excess):
        raise AttackBoundsError(
            f"{what} returned an adversarial example outside its eps ball or outside [0, 1] "
            f"(by {excess:.3g} beyond the float tolerance): the attack is broken"
        )


# --- the built-in attacks, in the registry's shape (see sslr.robustness.registry) ---------


def fgsm_attack(provider, x, y, *, eps, norm, settings, generator):
    """FGSM (Goodfellow et al. 2015): one step of size eps along the objective's gradient."""
    return pgd(provider, x, y, norm=norm, eps=eps, step=eps, steps=1, start_random=False)


def pgd_attack(provider, x, y, *, eps, norm, settings, generator):
    """PGD: ``settings.steps`` steps of alpha = step_size * eps / steps, random start as set;
    through ART's ``generate`` when ``settings.backend`` is ``art``."""
    kwargs = dict(
        norm=norm,
        eps=eps,
        step=settings.step_size * eps / settings.steps,
        steps=settings.steps,
        start_random=settings.random_start,
    )
    if settings.backend_kind is Backend.ART:
        return pgd_art(provider, x, y, **kwargs)
    if settings.loss_name != "ce" and not getattr(provider, "_codes", False):
        # PGD on the margin or DLR loss (sslr.attacks.losses) along the same gradient source
        return pgd(_LossProvider(provider, settings.loss_name), x, y, generator=generator, **kwargs)
    return pgd(provider, x, y, generator=generator, **kwargs)


class _LossProvider:
    """``loss_gradient`` of the margin or DLR loss through the provider's model callable
    (its gradient source and EOT draws included), NaN entries counted by the provider."""

    def __init__(self, provider, loss: str) -> None:
        from sslr.attacks.losses import loss_function

        self.provider, self.fn = provider, loss_function(loss)

    def loss_gradient(self, x, y, **kwargs):
        labels = y.argmax(dim=1)
        return self.provider.gradient(x, labels, lambda z, t: self.fn(z, t).sum())


register_attack("fgsm", fgsm_attack, steps=lambda s: 1)
register_attack("pgd", pgd_attack)
# The hashing attacks are PGD on their code objective (see sslr.robustness.hashing).
register_attack("hag", pgd_attack, tasks=("hashing",), objective="hag")
register_attack("p2p", pgd_attack, tasks=("hashing",), objective="p2p", targeted=True)
register_attack("dhta", pgd_attack, tasks=("hashing",), objective="dhta", targeted=True)
