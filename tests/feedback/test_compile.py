"""torch.compile: the Functions trace into one graph (no graph break), with eager's results."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch._dynamo
from feedback_helpers import read_feedback
from torch import nn

from sslr.feedback import FeedbackLinear, convert_model

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here"
)
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="inductor's CPU backend needs a C++ compiler",
)


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, groups=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )


def grads(model, x):
    x = x.clone().requires_grad_(True)
    model(x).square().sum().backward()
    return [p.grad for p in model.parameters()] + [x.grad]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf"])
def test_compiled_gradients_equal_eager(rule):
    # aot_eager: dynamo and AOTAutograd trace everything, without generating kernels (fast).
    model = convert_model(build(), rule, seed=0)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    for g, g_ref in zip(grads(compiled, x), grads(reference, x), strict=True):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_brsf_draws_on_the_device(backend):
    # Under compile brsf draws from a counter hash of (seed, draws): no graph break, and
    # the same properties as in eager mode.
    layer = FeedbackLinear(6, 4, rule="brsf", seed=0)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    b1, b2 = read_feedback(compiled), read_feedback(compiled)
    assert layer.feedback_draws.item() == 2
    sign = torch.sign(layer.weight.detach())
    assert torch.equal(torch.sign(b1), sign) and torch.equal(torch.sign(b2), sign)
    assert not torch.equal(b1, b2)
    assert torch.equal(b2, layer.feedback_matrix())  # alignment() sees the B in use
    layer.eval()
    assert torch.equal(read_feedback(compiled), b2) and torch.equal(read_feedback(compiled), b2)
    twin = FeedbackLinear(6, 4, rule="brsf", seed=0)
    twin.load_state_dict(layer.state_dict())
    twin = torch.compile(twin.train(), backend=backend, fullgraph=True)
    layer.train()
    assert torch.equal(read_feedback(twin), read_feedback(compiled))  # resumes the sequence


@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf"])
def test_inductor_gradients_close_to_eager(rule):
    model = convert_model(build(), rule, seed=0)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    for g, g_ref in zip(grads(compiled, x), grads(reference, x), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
