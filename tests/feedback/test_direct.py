"""dfa: every layer's error is the network's output error through the layer's own fixed B.
Gradients against a hand port of BioTorch's formula (biotorch/layers/dfa/{conv,linear}.py,
``dfa_backward_hook``: ``conv2d_input(weight=weight_dfa, grad_output=e repeated over the
output positions)`` and ``loss_gradient.mm(weight_dfa)``), its state, and its error cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sslr.feedback import (
    FeedbackLinear,
    alignment,
    convert_model,
    exact_gradients,
    feedback_layers,
    set_rule,
)
from sslr.feedback.direct import DirectFeedbackError


def two_layers(seed: int = 0, rule: str = "dfa") -> nn.Sequential:
    """conv (2 -> 3 channels, 3x3, padding 1) -> ReLU -> flatten -> linear (48 -> 5), float64."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5, dtype=torch.float64),
    )
    return convert_model(net, rule, seed=seed)


def test_gradients_equal_biotorchs_formula_on_two_layers():
    net = two_layers()
    conv, linear = net[0], net[3]
    b1, b2 = conv.feedback_direct, linear.feedback_direct
    assert b1.shape == (5, 2, 3, 3) and b2.shape == (5, 48)  # (D, in, ...): D = 5 outputs
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 5, dtype=torch.float64)
    (0.5 * ((net(x) - target) ** 2).sum()).backward()

    with torch.no_grad():
        z = F.conv2d(x, conv.weight, conv.bias, padding=1)
        h = z.relu().flatten(1)
        e = F.linear(h, linear.weight, linear.bias) - target  # the output error dL/dy
        e_h = e.mm(b2).view_as(z) * (z > 0)  # linear's input error: e B2, then the ReLU
        spread = e[:, :, None, None].repeat(1, 1, 4, 4)  # e over conv's output positions
        e_x = torch.nn.grad.conv2d_input(x.shape, b1, spread, padding=1)
        grad_w1 = torch.nn.grad.conv2d_weight(x, conv.weight.shape, e_h, padding=1)
    torch.testing.assert_close(x.grad, e_x)
    torch.testing.assert_close(linear.weight.grad, e.t().mm(h))
    torch.testing.assert_close(linear.bias.grad, e.sum(0))
    torch.testing.assert_close(conv.weight.grad, grad_w1)
    torch.testing.assert_close(conv.bias.grad, e_h.sum((0, 2, 3)))


def test_b_is_fixed_xavier_on_its_own_shape_and_reproducible():
    net = two_layers(seed=2)
    b2 = net[3].feedback_direct
    bound = math.sqrt(6 / (48 + 5))  # xavier_uniform_ of a (5, 48) matrix, as BioTorch's
    assert b2.abs().max() <= bound and b2.abs().max() > 0.9 * bound
    assert torch.equal(two_layers(seed=2)[3].feedback_direct, b2)
    assert not torch.equal(two_layers(seed=3)[3].feedback_direct, b2)
    before = b2.clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(2, 2, 4, 4, dtype=torch.float64)).sum().backward()
        optimizer.step()
    assert torch.equal(net[3].feedback_direct, before)
    assert alignment(net) == {}  # no angle to W is defined for dfa's B


def test_each_forward_keeps_its_own_output_error():
    net = two_layers()
    x1, x2 = (torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True) for _ in "12")
    w1, w2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ((net(x1) * w1).sum() + (net(x2) * w2).sum()).backward()
    together = (x1.grad.clone(), x2.grad.clone(), net[0].weight.grad.clone())
    for x in (x1, x2):
        x.grad = None
    net.zero_grad()
    (net(x1) * w1).sum().backward()
    (net(x2) * w2).sum().backward()
    torch.testing.assert_close(together[0], x1.grad)
    torch.testing.assert_close(together[1], x2.grad)
    torch.testing.assert_close(together[2], net[0].weight.grad)


def test_the_rule_gradient_at_the_input_ignores_the_image_away_from_the_borders():
    # What an attack along `rule` follows on a dfa network: the first conv's projection of the
    # output error, constant over the interior positions (the documented consequence).
    torch.manual_seed(0)
    net = convert_model(torchvision.models.resnet18(num_classes=10), "dfa", seed=0)
    net.eval()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    net(x)[:, 3].sum().backward()
    interior = x.grad[:, :, 8:-8, 8:-8]  # conv1: 7x7 kernel, stride 2
    even = interior[:, :, ::2, ::2]
    assert (even - even[:, :, :1, :1]).abs().max() < 1e-6 * even.abs().max().clamp_min(1e-12)
    exact = x.detach().clone().requires_grad_(True)
    with exact_gradients(net):
        net(exact)[:, 3].sum().backward()
    inner = exact.grad[:, :, 8:-8:2, 8:-8:2]
    assert (inner - inner[:, :, :1, :1]).abs().max() > 0.1 * inner.abs().max()


def test_set_rule_switches_to_and_from_dfa_on_the_whole_network():
    net = two_layers(rule="bp")
    set_rule(net, "dfa")
    assert net[3].feedback_direct.shape == (5, 48)
    assert len(net._forward_hooks) == 1 and len(net._forward_pre_hooks) == 1
    set_rule(net, "usf")
    assert not net._forward_hooks and not net._forward_pre_hooks
    assert all("feedback_direct" not in layer._buffers for _, layer in feedback_layers(net))


def test_dfa_error_cases_say_what_to_do():
    with pytest.raises(ValueError, match="output size"):
        FeedbackLinear(4, 3, rule="dfa")
    layer = FeedbackLinear(4, 3)
    with pytest.raises(ValueError, match="output size"):
        layer.set_rule("dfa")
    with pytest.raises(ValueError, match="no nn.Linear head"):
        convert_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), "dfa")
    # A dfa layer whose network output is not what its B projects: one clear error.
    net = convert_model(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), "dfa", output_dim=5
    )
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(DirectFeedbackError, match="output_dim=3"):
        net(x).sum().backward()
    # A dfa layer run on its own, outside the network converted to dfa.
    inner = net[2]
    with pytest.raises(DirectFeedbackError, match="converted as a whole"):
        inner(torch.randn(2, 6, requires_grad=True)).sum().backward()


# ldfa: fa with a rank-r B, the rank set per network


def test_ldfa_b_has_the_rank_asked_and_fas_size():
    net = two_layers(rule="ldfa")  # default rank: the output size, 5; conv: capped at 3 rows
    fa = two_layers(rule="fa")
    conv, linear = net[0], net[3]
    assert torch.linalg.matrix_rank(linear.feedback_weight).item() == 5
    assert torch.linalg.matrix_rank(conv.feedback_weight.flatten(1)).item() == 3
    for mine, theirs in ((conv, fa[0]), (linear, fa[3])):
        rms = mine.feedback_weight.pow(2).mean().sqrt()
        bound = theirs.feedback_weight.abs().max()  # about fa's a
        assert rms.item() == pytest.approx(math.sqrt(6 / sum(_fans(mine))) / math.sqrt(3))
        assert rms < bound
    wide = convert_model(
        nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10)), "ldfa", rank=2
    )
    assert torch.linalg.matrix_rank(wide[0].feedback_weight).item() == 2
    # the backward sends the error through that B: e B, read back from the input gradient
    x = torch.randn(3, 40, requires_grad=True)
    e = torch.randn(3, 30)
    wide[0](x).backward(e)
    torch.testing.assert_close(x.grad, e.mm(wide[0].feedback_weight))


def _fans(layer) -> tuple[int, int]:
    w = layer.weight
    k = w[0, 0].numel() if w.dim() == 4 else 1
    return w.shape[1] * k, w.shape[0] * k


def test_ldfa_rank_errors_say_what_to_do():
    with pytest.raises(ValueError, match="applies to ldfa"):
        convert_model(nn.Sequential(nn.Linear(4, 3)), "fa", rank=2)
    with pytest.raises(ValueError, match="positive"):
        convert_model(nn.Sequential(nn.Linear(4, 3)), "ldfa", rank=0)
    with pytest.raises(ValueError, match="feedback rank"):
        FeedbackLinear(4, 3, rule="ldfa")


@pytest.mark.parametrize(
    "conv",
    [dict(stride=2, padding=1), dict(stride=2, padding=0, dilation=2), dict(groups=2, padding=2)],
    ids=["stride", "dilation", "groups"],
)
def test_the_conv_projection_is_biotorchs_for_strides_dilations_and_groups(conv):
    torch.manual_seed(0)
    body = nn.Conv2d(4, 6, 3, dtype=torch.float64, **conv)
    size = body(torch.zeros(1, 4, 9, 9, dtype=torch.float64)).shape[1:].numel()
    net = convert_model(
        nn.Sequential(body, nn.Flatten(), nn.Linear(size, 5, dtype=torch.float64)), "dfa", seed=0
    )
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    out = net(x)
    e = torch.randn_like(out)
    out.backward(e)
    layer = net[0]
    z = layer(x.detach())
    spread = e[:, :, None, None].repeat(1, 1, *z.shape[-2:])  # BioTorch's out_grad
    expected = torch.nn.grad.conv2d_input(
        x.shape, layer.feedback_direct, spread, layer.stride, layer.padding, layer.dilation
    )
    torch.testing.assert_close(x.grad, expected)


def test_a_linear_layer_on_tokens_gets_the_output_error_at_every_position():
    torch.manual_seed(0)
    net = convert_model(
        nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 5)), "dfa", seed=0
    )
    x = torch.randn(2, 3, 6, requires_grad=True)  # (N, tokens, features)
    out = net(x)
    e = torch.randn_like(out)
    out.backward(e)
    torch.testing.assert_close(x.grad, (e @ net[0].feedback_direct)[:, None, :].expand(2, 3, 6))
    out = net(x)
    out.div_(2)  # the tapped output is not a view: in-place edits work as without dfa
    out.sum().backward()


def test_set_rule_redraws_for_another_rank_or_output_size_and_drops_every_tap():
    net = two_layers(rule="ldfa")
    set_rule(net, "ldfa", rank=2)
    assert torch.linalg.matrix_rank(net[3].feedback_weight).item() == 2
    net = two_layers()
    set_rule(net, "dfa", output_dim=7)
    assert net[3].feedback_direct.shape == (7, 48)
    inner = two_layers(rule="bp")
    outer = nn.Sequential(inner, nn.Identity())
    set_rule(inner, "dfa")  # a tap on the part converted
    assert inner._forward_hooks
    convert_model(outer, "fa")  # no dfa layer left anywhere: no tap left anywhere
    assert not inner._forward_hooks and not inner._forward_pre_hooks
