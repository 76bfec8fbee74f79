"""State: state_dict round trips, checkpoint resume of brsf's draws, deepcopy, pickling."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from feedback_helpers import RULES, read_feedback
from torch import nn

from sslr.feedback import convert_model, feedback_layers


def build(seed: int) -> nn.Module:
    """A freshly built model: different weights and layer seeds for each ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def read_all(model: nn.Module) -> list[torch.Tensor]:
    return [read_feedback(layer) for _, layer in feedback_layers(model)]


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip_reproduces_b(rule):
    model = convert_model(build(0), rule, seed=1).eval()
    fresh = convert_model(build(1), rule, seed=2).eval()
    fresh.load_state_dict(roundtrip(model.state_dict()))
    for b, b_fresh in zip(read_all(model), read_all(fresh), strict=True):
        assert torch.equal(b, b_fresh)


def test_brsf_resume_continues_the_sequence():
    model = convert_model(build(0), "brsf", seed=1)
    for _ in range(3):
        read_all(model)  # three training steps
    checkpoint = roundtrip(model.state_dict())
    expected = [read_all(model) for _ in range(3)]  # steps 4, 5, 6
    fresh = convert_model(build(1), "brsf", seed=2)
    read_all(fresh)  # the fresh model's own history must not matter
    fresh.load_state_dict(checkpoint)
    assert fresh[0].seed == model[0].seed
    for step in expected:
        for b, b_fresh in zip(step, read_all(fresh), strict=True):
            assert torch.equal(b, b_fresh)
    assert fresh[0].feedback_draws.item() == 6


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_behave_like_the_original(rule, how):
    model = convert_model(build(0), rule, seed=1)
    read_all(model)
    if how == "deepcopy":
        clone = copy.deepcopy(model)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    assert [m.rule for _, m in feedback_layers(clone)] == [rule, rule]
    for b, b_clone in zip(read_all(model), read_all(clone), strict=True):
        assert torch.equal(b, b_clone)  # brsf: the same next draw


def test_brsf_state_is_reread_after_the_buffers_change():
    model = convert_model(build(0), "brsf", seed=1)
    layer = model[0]
    read_feedback(layer)
    with torch.no_grad():
        layer.feedback_seed.fill_(99)  # e.g. DDP's broadcast from rank 0
    assert layer.seed == 99
    model = model.to(torch.float64)  # int buffers keep their dtype
    assert layer.feedback_draws.dtype == torch.int64 and layer.feedback_draws.item() == 1
