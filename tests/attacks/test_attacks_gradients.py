"""Gradient sources reach the attacks through autograd on the model callable: exact gradients
of a usf network equal its BP twin's, the rule's differ; EOT averages draws; the margin loss
plugs into sslr's PGD unchanged."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from sslr.attacks import LossGradient, apgd, input_gradient
from sslr.attacks.losses import cross_entropy
from sslr.feedback import convert_model, exact_gradients
from sslr.robustness import Norm, gradient_context
from sslr.robustness.attacks import pgd


def _usf(model):
    net = convert_model(copy.deepcopy(model), "usf", seed=0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_exact_context_gives_apgd_the_true_gradient_and_rule_its_own(model, subset):
    x, y = subset[0][:32], subset[1][:32]
    usf = _usf(model)
    with torch.no_grad():
        assert torch.allclose(usf(x), model(x), atol=1e-5)  # same weights, same forward
    true = input_gradient(model, x, lambda z: cross_entropy(z, y))[2]
    with exact_gradients(usf):
        exact = input_gradient(usf, x, lambda z: cross_entropy(z, y))[2]
    with gradient_context(usf, "rule"):
        rule = input_gradient(usf, x, lambda z: cross_entropy(z, y))[2]
    assert torch.allclose(exact, true, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(rule, true, atol=1e-3)
    # the same seed under the exact gradient: APGD finds what it finds on the BP network
    plain = apgd(model, x, y, eps=12 / 255, steps=10)
    with exact_gradients(usf):
        same = apgd(usf, x, y, eps=12 / 255, steps=10)
    with gradient_context(usf, "rule"):
        other = apgd(usf, x, y, eps=12 / 255, steps=10)
    assert (same.success == plain.success).float().mean().item() >= 0.95
    assert (same.x_adv - plain.x_adv).abs().amax(dim=(1, 2, 3)).lt(1e-3).float().mean() >= 0.9
    assert not torch.allclose(other.x_adv, plain.x_adv, atol=1e-3)


def test_eot_samples_average_that_many_passes_per_step(model, subset):
    x, y = subset[0][:8], subset[1][:8]
    calls = []

    def counting(z):
        calls.append(z.shape[0])
        return model(z)

    # tiny eps: no success; num_classes given: no probing call
    result = apgd(counting, x, y, eps=0.5 / 255, steps=4, eot_samples=3, num_classes=10)
    attacked = model(x).argmax(dim=1) == y
    assert (result.queries[attacked] == 3 * (4 + 1)).all()
    assert len(calls) == 1 + 3 * (4 + 1)  # the clean pass, then 3 per gradient


def test_a_grad_fn_replaces_the_gradient(model, subset):
    """A zero gradient (a masked model) leaves APGD at its random start and is reported."""
    x, y = subset[0][:16], subset[1][:16]

    def zero(m, z, objective):
        logits, loss, grad = input_gradient(m, z, objective)
        return logits, loss, torch.zeros_like(grad)

    result = apgd(model, x, y, eps=8 / 255, steps=5, grad_fn=zero)
    attacked = model(x).argmax(dim=1) == y
    assert result.degenerate[attacked].all()
    normal = apgd(model, x, y, eps=8 / 255, steps=5)
    assert not normal.degenerate.any()


def test_margin_loss_gradient_by_hand_and_through_sslrs_pgd(model, subset):
    w = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))

    def linear(z):
        return z.flatten(1) @ w  # (N, 4)

    z = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0])
    grad = LossGradient(linear, "margin").loss_gradient(z, F.one_hot(labels, 4).float())
    logits = linear(z)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).argmax(dim=1)
    expected = (w[:, other] - w[:, labels]).t().reshape(z.shape)  # d(z_j* - z_y)/dx
    assert torch.allclose(grad, expected, atol=1e-6)
    # sslr's PGD, unchanged, ascends the margin: it breaks images of the trained CNN
    x, y = subset[0][:48], subset[1][:48]
    adv = pgd(
        LossGradient(model, "margin"),
        x,
        F.one_hot(y, 10).float(),
        norm=Norm.LINF,
        eps=12 / 255,
        step=2.5 * (12 / 255) / 10,
        steps=10,
        start_random=True,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
        robust = (model(adv).argmax(dim=1) == y).float().mean().item()
    assert robust < clean - 0.2
