"""The masking verdict on real attack results: it flags a model that hides its gradients
behind a non-differentiable input quantisation and stays quiet on the same model without it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslr.attacks import apgd, degenerate_gradients, input_gradient, square
from sslr.attacks.losses import cross_entropy
from sslr.masking import format_verdict, verdict
from sslr.robustness import AttackTarget, GradientSourceClassifier, Norm, attack_mode
from sslr.robustness.attacks import pgd

EPS = [0.0, 8 / 255, 64 / 255]


class Quantised(nn.Module):
    """The model behind an input quantisation to 8 levels: the same predictions on clean
    images, a zero input gradient everywhere (rounding has derivative 0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 8) / 8)


def _rows(model, x, y):
    """fgsm, pgd (sslr's, rule gradient), apgd-ce and square rows over EPS, and the share of
    degenerate input gradients at the clean images."""
    n = len(y)
    target = AttackTarget(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10)
    rows = []

    def accuracy(adv):
        with torch.no_grad():
            return (model(adv).argmax(dim=1) == y).float().mean().item()

    with attack_mode(model), GradientSourceClassifier(target, x.shape[1:], "rule") as clf:
        for eps in EPS:
            cells = {}
            if eps == 0:
                cells = dict.fromkeys(("fgsm", "pgd", "apgd-ce", "square"), x)
            else:
                onehot = F.one_hot(y, 10).float()
                gen = torch.Generator().manual_seed(0)
                cells["fgsm"] = pgd(
                    clf, x, onehot, norm=Norm.LINF, eps=eps, step=eps, steps=1, start_random=False
                )
                cells["pgd"] = pgd(
                    clf,
                    x,
                    onehot,
                    norm=Norm.LINF,
                    eps=eps,
                    step=eps / 4,
                    steps=10,
                    start_random=True,
                    generator=gen,
                )
                cells["apgd-ce"] = apgd(model, x, y, eps=eps, steps=20).x_adv
                cells["square"] = square(model, x, y, eps=eps, queries=100).x_adv
            for attack, adv in cells.items():
                gradient = "none" if attack == "square" else "rule"
                rows.append(
                    dict(
                        attack=attack,
                        norm="linf",
                        eps=eps,
                        gradient=gradient,
                        accuracy=accuracy(adv),
                        n=n,
                    )
                )
    grad = input_gradient(model, x, lambda z: cross_entropy(z, y))[2]
    return rows, degenerate_gradients(grad).float().mean().item()


@pytest.fixture(scope="module")
def data(subset):
    return subset[0][:48], subset[1][:48]


def test_the_plain_model_raises_no_flag(model, data):
    rows, share = _rows(model, *data)
    checks = verdict(rows, degenerate_share=share)
    assert not any(c.flagged for c in checks), format_verdict(checks)
    measured = {c.check for c in checks if c.value == c.value}  # not NaN
    assert {"blackbox_beats_whitebox", "iterative_vs_single_step", "large_eps"} <= measured


def test_the_quantised_model_is_flagged(model, data):
    masked = Quantised(model).eval()
    x, y = data
    with torch.no_grad():
        assert (masked(x).argmax(dim=1) == y).float().mean().item() > 0.85  # still accurate
    rows, share = _rows(masked, x, y)
    checks = verdict(rows, degenerate_share=share)
    flagged = {c.check for c in checks if c.flagged}
    assert share == 1.0
    assert "degenerate_gradients" in flagged
    assert "blackbox_beats_whitebox" in flagged, format_verdict(checks)
