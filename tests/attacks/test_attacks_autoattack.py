"""AutoAttack ("fast" budget) on a trained Digits CNN: the ensemble's accuracy is at most every
member's, members attack only the survivors, and every example is legal."""

from __future__ import annotations

import pytest
import torch

from sslr.attacks import MEMBERS, apgd, apgd_targeted, autoattack, fab_targeted, square
from sslr.robustness import Norm
from sslr.robustness.attacks import bound_excess

EPS = 12 / 255
# "fast" on a still smaller budget: the shared test CPU
BUDGET = {
    "apgd-ce": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 2},
    "fab-t": {"steps": 10, "n_target_classes": 2},
    "square": {"queries": 60},
}


@pytest.fixture(scope="module")
def runs(model, subset):
    x, y = subset[0][:64], subset[1][:64]
    reports = []
    cascade = autoattack(
        model,
        x,
        y,
        eps=EPS,
        version="fast",
        budget=BUDGET,
        progress=lambda name, r: reports.append(name),
    )
    alone = autoattack(model, x, y, eps=EPS, version="fast", budget=BUDGET, cascade=False)
    return x, y, cascade, alone, reports


def test_the_ensemble_is_at_most_every_member(model, runs):
    x, y, cascade, alone, reports = runs
    assert reports == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ensemble = cascade.robust.float().mean().item()
    clean = cascade.clean.float().mean().item()
    assert clean > 0.9 and ensemble < clean - 0.2  # it does break images
    for name, robust in alone.members.items():
        # each member alone, on every clean-correct image
        assert torch.equal(alone.attacked[name], alone.clean)
        assert ensemble <= robust.float().mean().item(), name
    # with every member on every image, the ensemble is their per-image intersection
    both = alone.clean.clone()
    for robust in alone.members.values():
        both &= robust
    assert torch.equal(alone.robust, both)
    assert (cascade.robust == alone.robust).float().mean().item() >= 0.95


def test_members_attack_only_the_images_left_and_report_cumulative_robustness(runs):
    x, y, cascade, _, _ = runs
    left = cascade.clean
    for name in ["apgd-ce", "apgd-t", "fab-t", "square"]:
        assert torch.equal(cascade.attacked[name], left)
        assert (cascade.queries[name][~left] == 0).all()
        left = cascade.robust_after[name]
    assert torch.equal(left, cascade.robust)
    assert cascade.robust_after["apgd-ce"].sum() >= cascade.robust_after["apgd-t"].sum()


def test_examples_are_legal_and_break_exactly_the_non_robust_images(model, runs):
    x, y, cascade, _, _ = runs
    assert bound_excess(x, cascade.x_adv, EPS, Norm.LINF).item() <= 0
    with torch.no_grad():
        correct = model(cascade.x_adv).argmax(dim=1) == y
    assert torch.equal(correct, cascade.robust)


def test_members_alone_match_the_attack_functions(model, subset):
    """The ensemble's members are the package's functions with the version's settings: run
    alone with the same seed they leave the same accuracy (draws depend on the image only)."""
    x, y = subset[0][:32], subset[1][:32]
    alone = autoattack(model, x, y, eps=EPS, version="fast", budget=BUDGET, cascade=False)
    settings = {name: {**s, **BUDGET[name]} for name, (_, s) in MEMBERS["fast"].items()}
    direct = {
        "apgd-ce": apgd(model, x, y, eps=EPS, **settings["apgd-ce"]),
        "apgd-t": apgd_targeted(model, x, y, eps=EPS, **settings["apgd-t"]),
        "fab-t": fab_targeted(model, x, y, eps=EPS, **settings["fab-t"]),
        "square": square(model, x, y, eps=EPS, **settings["square"]),
    }
    for name, result in direct.items():
        assert torch.equal(alone.members[name], alone.clean & ~result.success), name


def test_apgd_t_is_left_out_below_four_classes_and_fab_t_below_three(model, subset):
    x, y = subset[0][:8], subset[1][:8]

    def three_classes(z):
        return model(z)[:, :3]

    def two_classes(z):
        return model(z)[:, :2]

    keep = y < 3
    result = autoattack(three_classes, x[keep], y[keep], eps=EPS, version="fast", budget=BUDGET)
    assert list(result.members) == ["apgd-ce", "fab-t", "square"]
    keep = y < 2
    result = autoattack(two_classes, x[keep], y[keep], eps=EPS, version="fast", budget=BUDGET)
    assert list(result.members) == ["apgd-ce", "square"]


def test_a_budget_for_an_unknown_member_is_refused(model, subset):
    with pytest.raises(ValueError, match="Unknown AutoAttack member"):
        autoattack(model, *subset, eps=EPS, budget={"fab": {"steps": 5}})
