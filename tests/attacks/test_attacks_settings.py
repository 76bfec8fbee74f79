"""Bad settings fail before any work, with one sentence: no model call happens."""

from __future__ import annotations

import pytest
import torch

from sslr.attacks import apgd, apgd_targeted, autoattack, square


class Counting:
    """A linear 'model' that counts its calls."""

    def __init__(self, classes: int = 10) -> None:
        self.calls = 0
        self.w = torch.randn(3 * 8 * 8, classes, generator=torch.Generator().manual_seed(0))

    def __call__(self, x):
        self.calls += 1
        return x.flatten(1) @ self.w


X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3])

CASES = [
    (apgd, dict(eps=-0.1), "eps must be finite and >= 0"),
    (apgd, dict(eps=0.1, loss="hinge"), "Unknown attack loss"),
    (apgd, dict(eps=0.1, restarts=0), "restarts must be a whole number >= 1"),
    (apgd, dict(eps=0.1, steps=0), "steps must be a whole number >= 1"),
    (apgd, dict(eps=0.1, norm="l1"), "Unknown norm"),
    (apgd, dict(eps=0.1, keep="last"), "keep must be one of"),
    (apgd, dict(eps=0.1, target=torch.zeros(4, dtype=torch.long), num_classes=2), "two-class"),
    (apgd, dict(eps=0.1, loss="dlr", num_classes=2), "at least 3 classes"),
    (apgd_targeted, dict(eps=0.1, num_classes=2), "two-class"),
    (apgd_targeted, dict(eps=0.1, n_target_classes=0), "n_target_classes must be"),
    (square, dict(eps=0.1, queries=0), "queries must be a whole number >= 1"),
    (square, dict(eps=0.1, restarts=0), "restarts must be a whole number >= 1"),
    (square, dict(eps=-1.0), "eps must be finite"),
    (square, dict(eps=0.1, p_init=1.5), "p_init must lie in"),
    (autoattack, dict(eps=0.1, version="plus"), "Unknown AutoAttack version"),
    (autoattack, dict(eps=-0.1), "eps must be finite"),
]


@pytest.mark.parametrize(("attack", "kwargs", "message"), CASES)
def test_bad_settings_raise_before_any_model_call(attack, kwargs, message):
    model = Counting()
    kwargs = {"num_classes": 10, **kwargs} if attack is not square else kwargs
    if attack is autoattack:
        kwargs.pop("num_classes")
    with pytest.raises(ValueError, match=message) as info:
        attack(model, X, Y, **kwargs)
    assert model.calls == 0
    assert "\n" not in str(info.value)


def test_images_outside_the_unit_box_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apgd(Counting(), X * 3, Y, eps=0.1, num_classes=10)
