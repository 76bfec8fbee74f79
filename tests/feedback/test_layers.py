"""Feedback layers: forward = nn's, weight/bias gradients = nn's, input gradient = B^T delta."""

from __future__ import annotations

import math

import pytest
import torch
from feedback_helpers import RULES, SIGN_RULES, make_layer, read_feedback
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out
from torch.testing import assert_close

from sslr.feedback import FeedbackConv2d, FeedbackLinear, list_rules, list_scales
from sslr.feedback.functional import Feedback, conv_arguments, feedback_conv2d, feedback_linear
from sslr.feedback.rules import FeedbackRule, get_rule, get_scale, register_rule

CONV_CONFIGS = {
    "plain": dict(kernel_size=3),
    "stride": dict(kernel_size=3, stride=2, padding=1),
    "padding": dict(kernel_size=(3, 5), padding=(2, 1)),
    "same-odd": dict(kernel_size=3, padding="same"),
    "same-even": dict(kernel_size=4, padding="same", dilation=(1, 2)),
    "valid": dict(kernel_size=2, padding="valid"),
    "dilation": dict(kernel_size=3, dilation=2, padding=2),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding=1),
    "no-bias": dict(kernel_size=1, bias=False),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(kernel_size=3, padding=(1, 2), padding_mode="circular"),
}


def plain_twin(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A plain nn.Conv2d / nn.Linear with ``layer``'s configuration and the given weight."""
    if isinstance(layer, nn.Conv2d):
        twin = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.groups, layer.bias is not None,
            layer.padding_mode, dtype=weight.dtype,
        )  # fmt: skip
    else:
        twin = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        twin = twin.to(weight.dtype)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if layer.bias is not None:
            twin.bias.copy_(layer.bias)
    return twin


def run(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None):
    """Output and (input, weight, bias) gradients of one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    grad = torch.randn_like(y) if grad is None else grad
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(y, [x, *params], grad)
    return y, grad, grads


def check_layer(layer: nn.Module, x: torch.Tensor) -> None:
    """Forward equals nn's; weight/bias gradients are nn's; input gradient goes through B."""
    b = layer.feedback_matrix()
    y, gy, (gx, *gparams) = run(layer, x)
    twin = plain_twin(layer, layer.weight.detach())
    y_ref, _, (_, *gparams_ref) = run(twin, x, gy)
    assert torch.equal(y, y_ref)  # bitwise: the forward is nn.Conv2d's / nn.Linear's
    assert_close(gparams, gparams_ref)
    # The input gradient is BP's through a plain layer whose weight is B.
    _, _, (gx_ref, *_) = run(plain_twin(layer, b), x, gy)
    assert_close(gx, gx_ref)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("config", list(CONV_CONFIGS), ids=list(CONV_CONFIGS))
def test_conv_gradients(rule, config):
    args = dict(in_channels=4, out_channels=6) | CONV_CONFIGS[config]
    layer = FeedbackConv2d(**args, rule=rule, seed=3, dtype=torch.float64)
    layer.eval()  # brsf: feedback_matrix() is the B the next forward uses
    check_layer(layer, torch.randn(2, args["in_channels"], 9, 10, dtype=torch.float64))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7), (2, 2, 3, 7)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(rule, shape, bias):
    layer = FeedbackLinear(7, 5, bias=bias, rule=rule, seed=3, dtype=torch.float64).eval()
    check_layer(layer, torch.randn(*shape, dtype=torch.float64))


@pytest.mark.parametrize("rule", RULES)
def test_training_mode_backward_uses_the_forward_draw(rule):
    # In training mode brsf draws at forward: the backward must use that draw.
    layer = make_layer("conv", rule)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    for _ in range(2):
        y, gy, (gx, *_) = run(layer, x)
        _, _, (gx_ref, *_) = run(plain_twin(layer, layer.feedback_matrix()), x, gy)
        assert_close(gx, gx_ref)


def test_bp_is_nn_exactly():
    conv = FeedbackConv2d(2, 3, 3, stride=2, padding=1, rule="bp", dtype=torch.float64)
    lin = FeedbackLinear(6, 2, rule="bp", dtype=torch.float64)
    for layer, x in [(conv, torch.randn(1, 2, 5, 5)), (lin, torch.randn(4, 6))]:
        x = x.double()
        y, gy, grads = run(layer, x)
        y_ref, _, grads_ref = run(plain_twin(layer, layer.weight.detach()), x, gy)
        assert torch.equal(y, y_ref)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert torch.equal(g, g_ref)
        x = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(layer, (x,))


def _functional(kind, rule, scale="xavier"):
    """The Function path with a given rule object, as a function of (x, w, b)."""
    rule, scale = get_rule(rule), get_scale(scale)

    def f(x, w, b):
        aux = None
        if rule.fixed_buffer:
            aux = rule.draw_fixed(w, scale, torch.Generator().manual_seed(0))
        elif rule.resamples:
            aux = torch.rand_like(w, generator=torch.Generator().manual_seed(0))
        feedback = Feedback(rule, scale, 0.0 if scale.adaptive else scale.constant(w))
        if kind == "conv":
            conv = conv_arguments((2, 1), (1, 0), (1, 2), 2)
            return feedback_conv2d(x, w, b, aux, feedback, conv)
        return feedback_linear(x, w, b, aux, feedback)

    return f


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_function_path_with_b_equal_w_passes_gradcheck(kind):
    # The custom backward (convolution_backward / matmuls) is the true gradient when B = W.
    if kind == "conv":
        args = (torch.randn(1, 4, 5, 6), torch.randn(4, 2, 3, 3), torch.randn(4))
    else:
        args = (torch.randn(2, 3, 5), torch.randn(4, 5), torch.randn(4))
    args = [a.double().requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(_functional(kind, "bp"), args)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_weight_and_bias_gradients_are_true_gradients(rule, kind):
    # With the input held constant, every rule's gradients are exact (gradcheck).
    if kind == "conv":
        x, w, b = torch.randn(1, 4, 5, 6), torch.randn(4, 2, 3, 3), torch.randn(4)
    else:
        x, w, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
    f = _functional(kind, rule)
    w, b = w.double().requires_grad_(True), b.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, b: f(x.double(), w, b), (w, b))


# -- B read back through the input gradient -----------------------------------------------


def fans(layer):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(layer.weight)
    return fan_in + fan_out


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("rule", RULES)
def test_read_back_matches_feedback_matrix(kind, rule):
    layer = make_layer(kind, rule).eval()
    assert_close(read_feedback(layer), layer.feedback_matrix(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("rule", SIGN_RULES)
def test_sign_of_b_is_sign_of_w(kind, rule):
    layer = make_layer(kind, rule)
    with torch.no_grad():
        layer.weight.view(-1)[:3] = 0.0  # zeros: B's sign is free there
    b, w = read_feedback(layer), layer.weight.detach()
    nonzero = w != 0
    assert torch.equal(torch.sign(b)[nonzero], torch.sign(w)[nonzero])
    assert (b[nonzero] != 0).all()


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("scale", ["xavier", "meanabs", "none"])
def test_usf_magnitude_is_the_documented_constant(kind, scale):
    layer = make_layer(kind, "usf", scale=scale)
    expected = {
        "xavier": math.sqrt(2.0 / fans(layer)),
        "meanabs": layer.weight.detach().abs().mean().item(),
        "none": 1.0,
    }[scale]
    b = read_feedback(layer)
    assert_close(b.abs(), torch.full_like(b, expected))


def test_meanabs_follows_the_current_weight():
    layer = make_layer("linear", "usf", scale="meanabs")
    with torch.no_grad():
        layer.weight.mul_(3.0)
    assert_close(read_feedback(layer).abs().mean(), layer.weight.abs().mean().detach())


@pytest.mark.parametrize("rule", ["frsf", "brsf"])
@pytest.mark.parametrize("scale", ["xavier", "meanabs", "none"])
def test_random_magnitudes_follow_the_scale(rule, scale):
    layer = make_layer("linear", rule, scale=scale, in_features=200, out_features=100)
    b, w = read_feedback(layer).abs(), layer.weight.detach()
    if scale == "meanabs":  # rescaled so that mean|B| = mean|W|
        assert_close(b.mean(), w.abs().mean())
    else:
        a = math.sqrt(6.0 / fans(layer)) if scale == "xavier" else 1.0
        assert b.max() <= a and b.max() > 0.99 * a
        assert abs(b.mean().item() - a / 2) < 0.02 * a  # |M| ~ U(0, a)
        assert len(torch.unique(b)) > 0.99 * b.numel()  # not a constant


def test_fa_is_fixed_and_independent_of_w():
    layer = make_layer("linear", "fa", in_features=200, out_features=100)
    b0 = read_feedback(layer)
    a = math.sqrt(6.0 / fans(layer))
    assert b0.abs().max() <= a and b0.min() < -0.99 * a and b0.max() > 0.99 * a
    with torch.no_grad():
        layer.weight.neg_().add_(1.0)  # any change of W
    assert torch.equal(read_feedback(layer), b0)
    assert torch.equal(b0, layer.feedback_weight)
    assert abs(torch.corrcoef(torch.stack([b0.flatten(), layer.weight.flatten()]))[0, 1]) < 0.05


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_frsf_b_is_fixed_across_steps(kind):
    layer = make_layer(kind, "frsf")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    b0 = read_feedback(layer)
    for _ in range(2):
        opt.step()  # read_feedback left gradients: W changes
        opt.zero_grad()
        b = read_feedback(layer)
        w = layer.weight.detach()
        assert torch.equal(b.abs(), b0.abs())  # magnitudes fixed
        assert torch.equal(torch.sign(b), torch.sign(w))  # signs follow W


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_brsf_redraws_per_training_step_not_in_eval(kind):
    layer = make_layer(kind, "brsf")
    b1, b2 = read_feedback(layer), read_feedback(layer)
    assert not torch.equal(b1.abs(), b2.abs())
    assert torch.equal(torch.sign(b1), torch.sign(b2))
    assert layer.feedback_draws.item() == 2
    layer.eval()
    e1, e2 = read_feedback(layer), read_feedback(layer)
    assert torch.equal(e1, e2)
    assert torch.equal(e1, b2)  # eval keeps the last training draw
    assert layer.feedback_draws.item() == 2


def test_brsf_sequence_is_a_function_of_the_seed():
    a, b, c = (make_layer("conv", "brsf", seed=s) for s in (5, 5, 6))
    with torch.no_grad():
        b.weight.copy_(a.weight)
        c.weight.copy_(a.weight)
    seq_a = [read_feedback(a) for _ in range(3)]
    seq_b = [read_feedback(b) for _ in range(3)]
    for x, y in zip(seq_a, seq_b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(read_feedback(c), seq_a[0])


def test_registries():
    assert list_rules() == ["bp", "fa", "dfa", "ldfa", "usf", "frsf", "brsf", "kp", "wm"]
    assert list_scales() == ["xavier", "meanabs", "none"]
    with pytest.raises(ValueError, match="already registered"):

        @register_rule
        class Duplicate(FeedbackRule):
            name = "usf"


@pytest.mark.parametrize("rule", RULES)
def test_eval_forward_under_inference_mode(rule):
    # Lightning validates under inference_mode: no draw may write state there.
    layer = make_layer("conv", rule).eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        y = layer(x)
    assert torch.equal(y, nn.functional.conv2d(x, layer.weight, layer.bias))


def test_constructor_validates_rule_and_scale():
    with pytest.raises(ValueError, match="known rules: bp, fa, dfa, ldfa, usf, frsf, brsf, kp, wm"):
        FeedbackLinear(2, 2, rule="sf")
    with pytest.raises(ValueError, match="known scales: xavier, meanabs, none"):
        FeedbackConv2d(2, 2, 1, rule="usf", scale="he")


def test_attributes_and_state_dict_keys():
    expected_buffers = {
        "bp": set(),
        "usf": set(),
        "fa": {"feedback_weight"},
        "frsf": {"feedback_magnitude"},
        "brsf": {"feedback_seed", "feedback_draws"},
    }
    for rule, buffers in expected_buffers.items():
        layer = FeedbackConv2d(3, 4, 3, rule=rule, scale="meanabs")
        assert (layer.rule, layer.scale) == (rule, "meanabs")
        assert set(layer.state_dict()) == {"weight", "bias"} | buffers
        assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
        assert "rule=" in repr(layer)
    layer = FeedbackLinear(3, 4, rule="usf")
    layer.rule = "frsf"  # assigning a name switches the rule
    assert layer.rule == "frsf" and "feedback_magnitude" in layer.state_dict()
