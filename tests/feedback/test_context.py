"""exact_gradients, resampling and alignment."""

from __future__ import annotations

import math

import pytest
import torch
from feedback_helpers import RULES, read_feedback
from torch import nn
from torch.testing import assert_close

from sslr.feedback import (
    FeedbackLinear,
    alignment,
    convert_model,
    exact_gradients,
    feedback_layers,
    resampling,
)


def build() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).square().sum().backward()
    return x.grad


@pytest.mark.parametrize("rule", RULES)
def test_exact_gradients_gives_the_bp_gradient(rule):
    torch.manual_seed(0)
    reference = build().double()
    model = convert_model(build().double(), rule, seed=0)
    model.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(5, 6, dtype=torch.float64)
    expected = input_gradient(reference, x)
    with exact_gradients(model):
        assert_close(input_gradient(model, x), expected)
    if rule != "bp":
        assert not torch.allclose(input_gradient(model, x), expected)


def test_exact_gradients_is_restored_after_an_exception():
    model = convert_model(build(), "usf", seed=0)
    with pytest.raises(RuntimeError, match="boom"), exact_gradients(model):
        raise RuntimeError("boom")
    assert all(layer._uses_feedback() for _, layer in feedback_layers(model))
    b = read_feedback(model[0])
    assert torch.equal(b.abs(), torch.full_like(b, b.abs().max()))  # usf again, not W


def test_exact_gradients_nests_and_draws_nothing():
    model = convert_model(build(), "brsf", seed=0)
    with exact_gradients(model):
        with exact_gradients(model):
            pass
        assert torch.equal(read_feedback(model[0]), model[0].weight.detach())
    assert model[0].feedback_draws.item() == 0
    assert not torch.equal(read_feedback(model[0]), model[0].weight.detach())


def test_resampling_draws_a_fresh_b_per_eval_forward():
    layer = FeedbackLinear(6, 4, rule="brsf", seed=0).eval()
    fixed = read_feedback(layer)
    with resampling(layer):
        draws = [read_feedback(layer) for _ in range(3)]
    for i, b in enumerate(draws):
        assert torch.equal(torch.sign(b), torch.sign(layer.weight.detach()))
        assert not torch.equal(b, fixed)
        assert all(not torch.equal(b, other) for other in draws[i + 1 :])
    assert torch.equal(read_feedback(layer), fixed)  # eval B restored on exit
    assert layer.feedback_draws.item() == 0  # the training sequence is untouched
    with resampling(layer):  # reproducible: the same draws again
        again = [read_feedback(layer) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(draws, again, strict=True))


def test_resampling_is_restored_after_an_exception():
    layer = FeedbackLinear(6, 4, rule="brsf", seed=0).eval()
    with pytest.raises(KeyError), resampling(layer):
        raise KeyError
    assert torch.equal(read_feedback(layer), read_feedback(layer))


def test_resampling_leaves_other_rules_alone():
    model = convert_model(build(), "frsf", seed=0).eval()
    before = [read_feedback(m) for _, m in feedback_layers(model)]
    with resampling(model):
        after = [read_feedback(m) for _, m in feedback_layers(model)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_alignment_angles_and_norm_ratios():
    torch.manual_seed(0)
    expected = {
        "bp": lambda a, r: a == pytest.approx(0.0, abs=1e-5) and r == pytest.approx(1.0),
        "usf": lambda a, r: 0 < a < 60,
        "frsf": lambda a, r: 0 < a < 70,
        "brsf": lambda a, r: 0 < a < 70,
        "fa": lambda a, r: abs(a - 90) < 10,
    }
    for rule, check in expected.items():
        model = convert_model(build(), rule, seed=0)
        result = alignment(model)
        assert set(result) == {"0", "2"}
        for name, layer in feedback_layers(model):
            angle, ratio = result[name]
            assert check(angle, ratio), (rule, angle, ratio)
            # the B the backward uses, read back through the input gradient
            layer.eval()
            b, w = read_feedback(layer).double(), layer.weight.detach().double()
            cos = torch.dot(b.flatten(), w.flatten()) / (b.norm() * w.norm())
            assert angle == pytest.approx(math.degrees(math.acos(cos)), abs=1e-4)
            assert ratio == pytest.approx((b.norm() / w.norm()).item(), rel=1e-5)


def test_alignment_frsf_is_measured_against_b_not_m():
    layer = FeedbackLinear(50, 40, rule="frsf", seed=0)
    angle, _ = alignment(layer)[""]
    m = layer.feedback_magnitude.flatten()
    w = layer.weight.detach().flatten()
    angle_against_m = math.degrees(math.acos(torch.dot(m, w) / (m.norm() * w.norm())))
    assert abs(angle - angle_against_m) > 20  # BioTorch's bug would report ~90 degrees


def test_alignment_under_exact_gradients_is_zero():
    model = convert_model(build(), "fa", seed=0)
    with exact_gradients(model):
        assert all(a == pytest.approx(0.0, abs=1e-5) for a, _ in alignment(model).values())
