"""The torch Square attack on a trained Digits CNN: legal examples, the official window
schedule, honest query counts, seeding, and agreement with ART's Square at equal queries."""

from __future__ import annotations

import math

import pytest
import torch

from sslr.attacks import square, square_art, window_fraction
from sslr.robustness import Norm
from sslr.robustness.attacks import bound_excess

EPS = {"linf": 16 / 255, "l2": 1.5}


def test_window_fraction_halves_at_the_official_query_fractions():
    # the official schedule at 10,000 queries: p_init until 10, halved after 10, 50, 200, ...
    assert window_fraction(10, 10000, 0.8) == 0.8
    assert window_fraction(11, 10000, 0.8) == 0.4
    assert window_fraction(50, 10000, 0.8) == 0.4
    assert window_fraction(51, 10000, 0.8) == 0.2
    assert window_fraction(1001, 10000, 0.8) == 0.8 / 32
    assert window_fraction(9999, 10000, 0.8) == 0.8 / 512
    # rescaled to the budget: at 1,000 queries iteration 6 is the 10,000-schedule's 60
    assert window_fraction(6, 1000, 0.8) == 0.2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_examples_are_legal_and_its_verdict_is_the_models(model, subset, norm):
    x, y = subset[0][:48], subset[1][:48]
    eps = EPS[norm]
    result = square(model, x, y, eps=eps, norm=norm, queries=150)
    assert bound_excess(x, result.x_adv, eps, Norm(norm)).item() <= 0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(dim=1)
    assert torch.equal(result.success, pred != y)
    assert result.success.float().mean().item() > 0.1  # it breaks images at this eps
    clean_wrong = model(x).argmax(dim=1) != y
    # queries: none for the images wrong to begin with, 1 + iterations for the others, and
    # the whole budget only for images never broken
    assert (result.queries[clean_wrong] == 0).all()
    attacked = ~clean_wrong
    assert (result.queries[attacked] >= 1).all() and (result.queries <= 151).all()
    assert (result.queries[attacked & ~result.success] == 151).all()
    assert (result.queries[attacked & result.success] < 151).all()


def test_l2_square_keeps_every_example_on_or_inside_the_sphere(model, subset):
    x, y = subset[0][:24], subset[1][:24]
    result = square(model, x, y, eps=0.5, norm="l2", queries=60)
    norms = (result.x_adv - x).flatten(1).norm(dim=1)
    attacked = model(x).argmax(dim=1) == y
    assert (norms[attacked] > 0.3).all()  # the search stays near the boundary of the ball
    assert (norms <= 0.5 + 1e-5).all()


def test_the_same_seed_gives_the_same_examples(model, subset):
    x, y = subset[0][:16], subset[1][:16]
    a = square(model, x, y, eps=EPS["linf"], queries=30, seed=5)
    b = square(model, x, y, eps=EPS["linf"], queries=30, generator=torch.Generator().manual_seed(5))
    c = square(model, x, y, eps=EPS["linf"], queries=30, seed=6)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_more_queries_break_more_images(model, subset):
    x, y = subset[0][:64], subset[1][:64]
    few = square(model, x, y, eps=24 / 255, queries=10).success.float().mean().item()
    many = square(model, x, y, eps=24 / 255, queries=150).success.float().mean().item()
    assert many > few + 0.05


def _agree(model, x, y, eps, queries, norm="linf"):
    n, kw = len(y), dict(eps=eps, norm=norm, queries=queries)
    ours = square(model, x, y, **kw).success.float().mean().item()
    theirs = square_art(model, x, y, **kw).success.float().mean().item()
    p = (ours + theirs) / 2
    return ours, theirs, math.sqrt(2 * max(p * (1 - p), 1 / n) / n)


def test_square_agrees_with_arts_square_at_equal_queries(model, subset):
    """Success rates within two binomial standard errors of their difference (L-inf, 64
    images, 100 queries each; 128 images and 300 queries in the slow test below)."""
    x, y = subset[0][:64], subset[1][:64]
    ours, theirs, se = _agree(model, x, y, 24 / 255, 100)
    assert 0.05 < theirs < 0.95
    assert abs(ours - theirs) <= 2 * se, (ours, theirs, se)


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 16 / 255), ("l2", 2.0)])
def test_square_agrees_with_arts_square_on_more_images(model, digits, norm, eps):
    _, (x_test, y_test) = digits
    x, y = x_test[:128], y_test[:128]
    ours, theirs, se = _agree(model, x, y, eps, 300, norm)
    assert abs(ours - theirs) <= 2 * se, (ours, theirs, se)


def test_arts_square_takes_squares_keywords_and_refuses_what_it_cannot_honour(model, subset):
    x, y = subset[0][:4], subset[1][:4]
    with pytest.raises(TypeError, match="querys"):  # a misspelt keyword is not ignored
        square_art(model, x, y, eps=8 / 255, querys=10)
    with pytest.raises(ValueError, match="generator"):  # ART draws from NumPy: seed= instead
        square_art(model, x, y, eps=8 / 255, generator=torch.Generator())
    with pytest.raises(ValueError, match="p_init"):  # Square's own checks, before ART runs
        square_art(model, x, y, eps=8 / 255, p_init=1.5)
    with pytest.raises(ValueError, match="eps > 0"):
        square_art(model, x, y, eps=0.0)
