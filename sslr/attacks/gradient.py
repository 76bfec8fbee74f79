"""Input gradients of an attack loss, through autograd on a model callable, so that whatever
backward pass the caller has set up is the one followed.

The caller decides the gradient source exactly as for sslr's PGD: the model is a callable
``x in [0, 1] -> logits`` (for an ``AttackTarget``: ``lambda x: target.network(
target.normalize(x))``), run inside the source's context:

- ``rule``: inside ``sslr.robustness.gradient_context(network, "rule")`` (the model's own
  backward; brsf draws a fresh B at every forward);
- ``exact``: inside ``sslr.feedback.exact_gradients(network)`` (B = W);
- ``eot``: as ``rule``, with ``eot_samples > 1``: each gradient is the mean over that many
  forward/backward passes (Athalye et al. 2018), or any averaging given as ``grad_fn``;
- ``transfer``: the surrogate's callable (its ``rule`` gradient); the attack's own success
  checks then run on the surrogate, so pass ``keep="max_loss"`` to APGD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor], torch.Tensor]
Objective = Callable[[torch.Tensor], torch.Tensor]
# grad_fn(model, x, objective) -> (logits (N, K), loss (N,), gradient like x)
GradFn = Callable[[Model, torch.Tensor, Objective], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def input_gradient(
    model: Model, x: torch.Tensor, objective: Objective, samples: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (N, K), per-image loss ``objective(logits)`` (N,) and its gradient w.r.t. ``x``,
    each the mean over ``samples`` forward/backward passes (EOT when the passes are random).
    Returned as computed, non-finite entries included (see :func:`degenerate_gradients`)."""
    x = x.detach().requires_grad_(True)
    logits_sum = loss_sum = grad_sum = None
    for _ in range(samples):
        with torch.enable_grad():
            logits = model(x)
            loss = objective(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        logits, loss = logits.detach(), loss.detach()
        if grad_sum is None:
            logits_sum, loss_sum, grad_sum = logits, loss, grad
        else:
            logits_sum, loss_sum, grad_sum = logits_sum + logits, loss_sum + loss, grad_sum + grad
    if samples > 1:
        logits_sum, loss_sum, grad_sum = (t / samples for t in (logits_sum, loss_sum, grad_sum))
    return logits_sum, loss_sum, grad_sum


def eot_gradient(samples: int) -> GradFn:
    """A ``grad_fn`` averaging ``samples`` passes (for brsf's random backward)."""
    return lambda model, x, objective: input_gradient(model, x, objective, samples)


def degenerate_gradients(grad: torch.Tensor) -> torch.Tensor:
    """Per image (N,) bool: the input gradient is all zero or has an entry that is not finite
    (what masking check (f) counts)."""
    flat = grad.flatten(1)
    return (flat == 0).all(dim=1) | ~flat.isfinite().all(dim=1)


class LossGradient:
    """An object with the ``loss_gradient(x, y)`` of ART's classifiers, for the margin or DLR
    loss (or cross-entropy) of a model callable: sslr's PGD (``sslr.robustness.attacks.pgd``)
    takes it in place of its ART classifier and then ascends that loss unchanged. ``y`` is
    one-hot (N, K), as PGD passes it, or class indices (N,). Use it inside the gradient
    source's context, like the classifier it replaces."""

    def __init__(self, model: Model, loss: str = "margin", eot_samples: int = 1) -> None:
        from sslr.attacks.losses import loss_function
        from sslr.attacks.threat import check_positive

        self.model = model
        self.loss = loss
        self._fn = loss_function(loss)
        self.eot_samples = check_positive(eot_samples, "eot_samples", "gradient draws per step")

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        y = y.argmax(dim=1) if y.dim() == 2 else y.long()
        grad = input_gradient(self.model, x, lambda z: self._fn(z, y), self.eot_samples)[2]
        # NaN entries stay: PGD counts them (and treats them as 0)
        return grad.masked_fill(grad.isinf(), 0.0)
