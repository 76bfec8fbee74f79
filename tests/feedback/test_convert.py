"""convert_model, set_rule and feedback_layers on custom and torchvision models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from feedback_helpers import RULES
from torch import nn

from sslr.feedback import (
    FeedbackConv2d,
    FeedbackLinear,
    convert_model,
    feedback_layers,
    set_rule,
)


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


@pytest.fixture(scope="module", params=[("alexnet", 63), ("resnet18", 32)], ids=str)
def backbone(request):
    """A torchvision model, its input, its output before conversion and its Parameters.

    Built once: the tests convert the same model from rule to rule (conversion in place).
    """
    arch, size = request.param
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model(x)
    n_layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    return {"model": model, "x": x, "reference": reference, "n_layers": n_layers,
            "params": dict(model.named_parameters())}  # fmt: skip


@pytest.mark.parametrize("rule", RULES)
def test_torchvision_models(backbone, rule):
    """Same output, the very same Parameters, every parameter with a finite gradient."""
    converted = convert_model(backbone["model"], rule, seed=0)
    backbone["model"] = converted  # the next rule converts this one in place
    layers = list(feedback_layers(converted))
    assert len(layers) == backbone["n_layers"]
    assert all(layer.rule == rule for _, layer in layers)
    params = dict(converted.named_parameters())
    assert params.keys() == backbone["params"].keys()
    assert all(params[k] is p for k, p in backbone["params"].items())
    converted.zero_grad(set_to_none=True)
    out = converted(backbone["x"])
    assert torch.equal(out, backbone["reference"])
    out.square().mean().backward()
    for name, p in converted.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_vgg16():
    # Heavy on two CPU cores: one forward/backward, one rule.
    model = torchvision.models.vgg16(weights=None, num_classes=10)
    with torch.no_grad():
        ref_params = {k: p for k, p in model.named_parameters()}
        x = torch.randn(2, 3, 32, 32)
        ref = model.eval()(x)
    converted = convert_model(model, "brsf", seed=0)
    assert len(list(feedback_layers(converted))) == 16
    assert all(p is ref_params[k] for k, p in converted.named_parameters())
    out = converted(x)
    assert torch.equal(out, ref)
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in converted.parameters())


def test_root_is_converted_and_returned():
    linear = nn.Linear(3, 2)
    converted = convert_model(linear, "usf", seed=0)
    assert isinstance(converted, FeedbackLinear) and converted is not linear
    assert converted.weight is linear.weight and converted.bias is linear.bias
    conv = nn.Conv2d(2, 3, 3, bias=False)
    converted = convert_model(conv, "fa")
    assert isinstance(converted, FeedbackConv2d) and converted.bias is None


def test_exclude_patterns_and_ancestors():
    model = torchvision.models.resnet18(weights=None)
    model = convert_model(model, "usf", exclude=("fc", "layer4"), seed=0)
    assert type(model.fc) is nn.Linear
    assert all(type(m) is nn.Conv2d for m in model.layer4.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(model.layer3[0].conv1, FeedbackConv2d)
    model = convert_model(torchvision.models.resnet18(), "usf", exclude="layer*.conv2")
    assert type(model.layer1[0].conv2) is nn.Conv2d and type(model.layer1[0].conv1) is not nn.Conv2d
    with pytest.warns(UserWarning, match="matches no module"):
        convert_model(small_net(), "usf", exclude=["classifier.6"])


def test_reconversion_changes_the_rule_in_place():
    model = convert_model(small_net(), "frsf", seed=1)
    layers = dict(feedback_layers(model))
    seeds = {name: layer.seed for name, layer in layers.items()}
    again = convert_model(model, "brsf", scale="meanabs", exclude=["5"])
    assert again is model
    assert dict(feedback_layers(again)) == layers  # the same modules
    assert {n: m.rule for n, m in layers.items()} == {"0": "brsf", "3.0": "brsf", "5": "bp"}
    assert all(m.scale == "meanabs" for m in layers.values())
    assert {n: m.seed for n, m in layers.items()} == seeds


def test_layer_seeds_derive_from_the_model_seed():
    a = convert_model(small_net(), "frsf", seed=7)
    b = convert_model(small_net(), "frsf", seed=7)
    c = convert_model(small_net(), "frsf", seed=8)
    seeds = [m.seed for _, m in feedback_layers(a)]
    assert len(set(seeds)) == len(seeds)  # one seed per layer
    assert seeds == [m.seed for _, m in feedback_layers(b)]
    assert torch.equal(a[0].feedback_magnitude, b[0].feedback_magnitude)
    assert not torch.equal(a[0].feedback_magnitude, c[0].feedback_magnitude)
    # seed=None draws from the global RNG: reproducible under manual_seed
    torch.manual_seed(0)
    d = convert_model(small_net(), "frsf")
    torch.manual_seed(0)
    e = convert_model(small_net(), "frsf")
    assert [m.seed for _, m in feedback_layers(d)] == [m.seed for _, m in feedback_layers(e)]


def test_shared_modules_are_converted_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model = convert_model(model, "usf", seed=0)
    assert model[0] is model[2] and isinstance(model[0], FeedbackLinear)


def test_errors():
    with pytest.raises(ValueError, match="known rules: bp, fa, dfa, ldfa, usf, frsf, brsf, kp, wm"):
        convert_model(small_net(), "sign")
    with pytest.raises(ValueError, match="known scales: xavier, meanabs, none"):
        convert_model(small_net(), "usf", scale="kaiming")
    with pytest.raises(ValueError, match="has no nn.Conv2d or nn.Linear layer"):
        convert_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "usf")
    with pytest.raises(ValueError, match="leaves no layer"):
        convert_model(nn.Sequential(nn.Linear(2, 2)), "usf", exclude="*")
    with pytest.raises(ValueError, match="convert it first"):
        set_rule(small_net(), "usf")


def test_set_rule_keeps_parameters_and_optimizer_state():
    model = convert_model(small_net(), "bp", seed=0)
    modules = list(model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, 8, 8)
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
    for rule in ["frsf", "brsf", "fa", "usf", "bp", "frsf"]:
        set_rule(model, rule)
        assert list(model.modules()) == modules
        assert all(layer.rule == rule for _, layer in feedback_layers(model))
        model(x).square().mean().backward()
        opt.step()  # the momentum buffers are still keyed by the same Parameters
        opt.zero_grad()
    assert all(p in opt.state for p in model.parameters())


def test_set_rule_buffers_are_deterministic_and_follow_the_device_and_dtype():
    model = convert_model(small_net(), "usf", seed=0).double()
    set_rule(model, "frsf")
    m1 = model[0].feedback_magnitude.clone()
    assert m1.dtype == torch.float64
    set_rule(model, "brsf")
    assert "feedback_magnitude" not in model[0].state_dict()
    set_rule(model, "frsf")
    assert torch.equal(model[0].feedback_magnitude, m1)


def test_lightning_style_requires_grad_does_not_touch_feedback():
    # BaseFinetuning sets requires_grad on every parameter: B must not be one.
    model = convert_model(small_net(), "fa", seed=0)
    names = {n for n, _ in model.named_parameters()}
    assert not any("feedback" in n for n in names)
    assert all(not b.requires_grad for b in model.buffers())


def test_converted_model_trains():
    torch.manual_seed(0)
    model = convert_model(small_net(), "usf", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
