"""The attack losses against hand computations, and their settings checks."""

from __future__ import annotations

import math

import pytest
import torch

from sslr.attacks.losses import (
    check_loss,
    cross_entropy,
    dlr,
    dlr_targeted,
    loss_function,
    margin,
    margin_targeted,
)

LOGITS = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.5, 4.0, 1.0, -1.0]])
Y = torch.tensor([0, 0])  # the first image is correct, the second misclassified (as class 1)


def test_margin_is_best_other_minus_true_logit():
    assert margin(LOGITS, Y).tolist() == [2.0 - 3.0, 4.0 - 0.5]
    assert margin_targeted(LOGITS, torch.tensor([2, 1])).tolist() == [2.0 - 3.0, 4.0 - 1.0]


def test_dlr_untargeted_and_targeted_by_hand():
    # sorted descending: (3, 2, 1, 0) and (4, 1, 0.5, -1)
    expected = [-(3.0 - 2.0) / (3.0 - 1.0 + 1e-12), -(0.5 - 4.0) / (4.0 - 0.5 + 1e-12)]
    assert dlr(LOGITS, Y).tolist() == pytest.approx(expected)
    target = torch.tensor([3, 2])
    expected_t = [
        -(3.0 - 0.0) / (3.0 - (1.0 + 0.0) / 2 + 1e-12),
        -(0.5 - 1.0) / (4.0 - (0.5 - 1.0) / 2 + 1e-12),
    ]
    assert dlr_targeted(LOGITS, Y, target).tolist() == pytest.approx(expected_t)


def test_dlr_is_invariant_to_shift_and_scale_of_the_logits():
    assert dlr(3.0 * LOGITS + 7.0, Y).tolist() == pytest.approx(dlr(LOGITS, Y).tolist())


def test_cross_entropy_and_its_targeted_form():
    lse = math.log(sum(math.exp(v) for v in (3.0, 1.0, 2.0, 0.0)))
    assert cross_entropy(LOGITS, Y)[0].item() == pytest.approx(lse - 3.0)
    fn = loss_function("ce", targeted=True)
    assert fn(LOGITS, Y, torch.tensor([2, 2]))[0].item() == pytest.approx(-(lse - 2.0))


@pytest.mark.parametrize("name", ["ce", "margin", "dlr"])
def test_every_loss_is_per_image(name):
    out = loss_function(name)(torch.randn(5, 10), torch.randint(0, 10, (5,)))
    assert out.shape == (5,)


def test_loss_settings_fail_with_one_sentence():
    with pytest.raises(ValueError, match="Unknown attack loss 'hinge'"):
        check_loss("hinge", 10, False)
    with pytest.raises(ValueError, match="at least 3 classes"):
        check_loss("dlr", 2, False)
    with pytest.raises(ValueError, match="at least 4 classes"):
        check_loss("dlr", 3, True)
    assert check_loss("MARGIN", 2, False) == "margin"
