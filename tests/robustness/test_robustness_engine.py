"""The engine's seams: a new attack plugs in once through the registry and gets the cells,
bounds checks and rows; per-image outcomes stay available; progress reports every cell."""

from __future__ import annotations

import pytest
import torch

from sslr.robustness import (
    AttackBoundsError,
    SuiteConfig,
    SuiteResult,
    evaluate,
    get_attack,
    register_attack,
    run_suite,
)
from sslr.robustness.registry import _REGISTRY


@pytest.fixture
def registered():
    """Register attacks for one test and remove them after it."""
    names = []

    def add(name, run, **kwargs):
        names.append(name)
        return register_attack(name, run, **kwargs)

    yield add
    for name in names:
        _REGISTRY.pop(name, None)


def test_a_registered_attack_runs_under_every_source_and_matches_a_hand_computation(
    registered, target, test_subset
):
    """A one-step attack written against the provider (its own loss through
    ``provider.gradient``) equals FGSM built in: the same gradient, the same step."""

    def sign_step(provider, x, y, *, eps, norm, settings, generator):
        loss = torch.nn.CrossEntropyLoss(reduction="sum")
        grad = provider.gradient(x, y.argmax(1), loss)
        return (x + eps * grad.sign()).clamp(0, 1)

    registered("sign-step", sign_step, tasks=("classification",), steps=lambda s: 1)
    x, y = test_subset
    config = SuiteConfig(
        attacks=["sign-step", "fgsm"], eps=[0.0, 8 / 255], gradients=["rule", "exact"],
        n_samples=64,
    )  # fmt: skip
    rows = evaluate(target, x[:64], y[:64], config)
    ours = {(r.gradient, r.eps): r.accuracy for r in rows if r.attack == "sign-step"}
    fgsm = {(r.gradient, r.eps): r.accuracy for r in rows if r.attack == "fgsm"}
    assert set(ours) == {(g, e) for g in ("rule", "exact") for e in (0.0, 8 / 255)}
    assert ours == fgsm
    assert ours[("exact", 8 / 255)] < ours[("exact", 0.0)] - 0.05  # it is an attack
    assert all(r.steps == 1 for r in rows if r.attack == "sign-step")


def test_a_registered_attack_outside_its_ball_is_caught(registered, target, test_subset):
    registered("too-far", lambda provider, x, y, **k: (x + 3 * k["eps"]).clamp(0, 1))
    x, y = test_subset
    config = SuiteConfig(attacks=["too-far"], eps=[8 / 255], gradients=["exact"], n_samples=8)
    with pytest.raises(AttackBoundsError, match="too-far"):
        evaluate(target, x[:8], y[:8], config)


def test_unknown_attack_fails_before_any_work():
    with pytest.raises(ValueError, match="Unknown attack 'apgd-xx': known attacks are fgsm"):
        SuiteConfig(attacks=["apgd-xx"])
    assert get_attack("PGD").name == "pgd"


def test_per_image_outcomes_are_kept_and_agree_with_the_rows(target, test_subset, capsys):
    x, y = test_subset
    dataset = torch.utils.data.TensorDataset(x[:48], y[:48])
    config = SuiteConfig(
        attacks=["fgsm", "pgd"], eps=[0.0, 4 / 255, 8 / 255], gradients=["exact"], steps=3,
        n_samples=48,
    )  # fmt: skip
    said: list[str] = []
    result = SuiteResult()
    rows = run_suite(target, dataset, config, result=result, progress=said.append)
    assert result.rows == rows
    for row in rows:
        correct = result.per_image[(row.attack, row.norm, row.gradient, row.eps)]
        assert correct.dtype == torch.bool and correct.shape == (48,)
        assert correct.float().mean().item() == pytest.approx(row.accuracy)
    # The per-image worst case over the cells at one eps is at most every cell's accuracy.
    worst = torch.stack([result.per_image[(a, "linf", "exact", 8 / 255)] for a in ("fgsm", "pgd")])
    assert worst.all(0).float().mean() <= min(r.accuracy for r in rows if r.eps == 8 / 255)
    # One progress line per attacked cell (eps > 0), with what is left and an ETA.
    finished = [line for line in said if "left, ETA" in line]
    assert len(finished) == 4
    assert finished[-1].startswith("attack 4/4 ") and "(0 left" in finished[-1]
