"""The masking verdict on hand-made result rows: each check flags the sign it looks for, beyond
its noise margin, and stays quiet on an honest model's rows; the worst case is per image."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import pytest

from sslr.masking import CHECKS, HASHING_CHECKS, format_verdict, noise_margin, verdict, worst_case

N = 400  # noise margin 2 * 0.5 / 20 = 0.05
EPS = [0.0, 2 / 255, 8 / 255, 64 / 255]


def _curve(attack, gradient, values, norm="linf", eps=EPS, n=N, **extra):
    return [
        dict(attack=attack, norm=norm, eps=e, gradient=gradient, accuracy=v, n=n, **extra)
        for e, v in zip(eps, values, strict=True)
    ]


def honest_rows():
    """A plain model: iterative beats single step, white box beats black box, ~0 at 64/255."""
    return (
        _curve("fgsm", "rule", [0.95, 0.70, 0.40, 0.10])
        + _curve("fgsm", "exact", [0.95, 0.70, 0.40, 0.10])
        + _curve("pgd", "rule", [0.95, 0.60, 0.15, 0.0])
        + _curve("pgd", "exact", [0.95, 0.60, 0.15, 0.0])
        + _curve("apgd-ce", "rule", [0.95, 0.58, 0.12, 0.0])
        + _curve("square", "none", [0.95, 0.80, 0.50, 0.02])
    )


def _by_name(checks):
    return {(c.check, c.metric): c for c in checks}


def test_an_honest_model_raises_no_flag():
    checks = verdict(honest_rows(), degenerate_share=0.0)
    assert [c.check for c in checks] == list(CHECKS)
    assert not any(c.flagged for c in checks), format_verdict(checks)
    assert "no sign of gradient masking" in format_verdict(checks)


def _replace(rows, attack, gradient, values):
    rows = [r for r in rows if not (r["attack"] == attack and r["gradient"] == gradient)]
    return rows + _curve(attack, gradient, values)


@pytest.mark.parametrize(
    ("check", "attack", "gradient", "values", "expected_value"),
    [
        # the rule's gradient leaves 0.45 where the exact one leaves 0.15 at 8/255
        ("rule_vs_exact", "pgd", "rule", [0.95, 0.80, 0.45, 0.0], 0.30),
        # Square breaks more than every white-box attack along the rule at 8/255
        ("blackbox_beats_whitebox", "square", "none", [0.95, 0.50, 0.02, 0.0], 0.10),
        # iterative weaker than FGSM
        ("iterative_vs_single_step", "apgd-ce", "rule", [0.95, 0.85, 0.60, 0.0], 0.20),
        # accuracy rises from 2/255 to 8/255
        ("monotonic", "apgd-ce", "rule", [0.95, 0.05, 0.12, 0.0], 0.07),
    ],
)
def test_each_check_flags_its_sign(check, attack, gradient, values, expected_value):
    checks = _by_name(verdict(_replace(honest_rows(), attack, gradient, values)))
    found = checks[(check, "accuracy")]
    assert found.flagged
    assert found.value == pytest.approx(expected_value)
    assert found.threshold == pytest.approx(noise_margin(N))
    others = [c for (name, _), c in checks.items() if name != check and c.flagged]
    if check == "rule_vs_exact":  # the raised rule curve is also weaker than its own FGSM
        others = [c for c in others if c.check != "iterative_vs_single_step"]
    assert not others, others


def test_differences_within_the_noise_margin_are_not_flagged():
    rows = _replace(honest_rows(), "pgd", "rule", [0.95, 0.62, 0.19, 0.0])  # +0.04 < 0.05
    assert not _by_name(verdict(rows))[("rule_vs_exact", "accuracy")].flagged
    assert noise_margin(100) == pytest.approx(0.1)  # the margin widens as n falls


def test_large_eps_flags_an_accuracy_far_from_zero_and_asks_for_the_eps_when_missing():
    rows = [r for r in honest_rows() if r["attack"] != "square"]
    rows = [dict(r, accuracy=0.3) if r["eps"] == 64 / 255 else r for r in rows]
    rows = _replace(rows, "pgd", "exact", [0.95, 0.6, 0.15, 0.3])  # keep monotone-ish
    check = _by_name(verdict(rows))[("large_eps", "accuracy")]
    assert check.flagged and check.value == pytest.approx(0.3)
    assert check.threshold == pytest.approx(0.05 + noise_margin(N))
    small = [r for r in honest_rows() if r["eps"] < 0.1]
    missing = _by_name(verdict(small))[("large_eps", "accuracy")]
    assert not missing.flagged and math.isnan(missing.value) and "64/255" not in missing.where
    assert "linf eps >= 0.251" in missing.where


def test_degenerate_gradient_share_is_compared_with_its_threshold():
    checks = _by_name(verdict(honest_rows(), degenerate_share=0.4))
    assert checks[("degenerate_gradients", "accuracy")].flagged
    quiet = _by_name(verdict(honest_rows()))[("degenerate_gradients", "accuracy")]
    assert not quiet.flagged and math.isnan(quiet.value)


def test_hashing_rows_get_the_checks_that_apply_with_t_map_read_upward():
    rows = _curve("p2p", "rule", [0.10, 0.33, 0.68, 0.91], metric="t-map") + _curve(
        "p2p", "exact", [0.10, 0.35, 0.70, 0.92], metric="t-map"
    )
    rows += _curve("hag", "rule", [0.80, 0.60, 0.30, 0.05], metric="map")
    rows += _curve("hag", "exact", [0.80, 0.58, 0.28, 0.04], metric="map")
    checks = verdict(rows)
    assert sorted({c.metric for c in checks}) == ["map", "t-map"]
    assert [c.check for c in checks if c.metric == "map"] == list(HASHING_CHECKS)
    assert not any(c.flagged for c in checks), format_verdict(checks)
    # the rule's t-map stays low where the exact gradient reaches the target: masking
    masked = _curve("p2p", "rule", [0.10, 0.12, 0.15, 0.20], metric="t-map") + _curve(
        "p2p", "exact", [0.10, 0.35, 0.70, 0.92], metric="t-map"
    )
    assert {c.check for c in verdict(masked) if c.flagged} == {"rule_vs_exact"}
    # no gradient reaches the target even at 64/255
    stuck = _curve("p2p", "exact", [0.10, 0.12, 0.15, 0.20], metric="t-map")
    check = _by_name(verdict(stuck))[("large_eps", "t-map")]
    assert check.flagged and check.value == pytest.approx(0.20)
    assert check.threshold == pytest.approx(0.5 - noise_margin(N))


@dataclass
class Row:
    attack: str
    norm: str
    eps: float
    gradient: str
    accuracy: float
    n: int


def test_rows_may_be_objects_and_need_a_value_and_n():
    rows = [Row(**r) for r in honest_rows()]
    assert not any(c.flagged for c in verdict(rows))
    with pytest.raises(ValueError, match="accuracy \\(or value\\) and n"):
        verdict([dict(attack="pgd", norm="linf", eps=0.1, gradient="rule")])


def test_worst_case_is_per_image_and_at_most_every_cell():
    masks = {
        ("pgd", "rule"): [True, True, False, True],
        ("pgd", "exact"): [True, False, True, True],
        ("square", "none"): [True, True, True, False],
    }
    accuracy, robust = worst_case(masks)
    assert robust == [True, False, False, False]
    assert accuracy == 0.25  # below each cell's 0.75: no single cell breaks images 2-4 all
    assert all(accuracy <= sum(m) / len(m) for m in masks.values())
    with pytest.raises(ValueError, match="same images"):
        worst_case({"a": [True], "b": [True, False]})


def test_masking_imports_no_torch():
    code = "import sys, sslr.masking; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- paired tests


def _outcomes_for(rows, n, broken):
    """Per-image outcomes consistent with each row's accuracy: the first round(acc * n) images
    correct, except where ``broken`` (a cell key -> a list of 0/1) says otherwise."""
    found = {}
    for r in rows:
        key = (r["attack"], r["norm"], r["gradient"], r["eps"])
        k = round(r["accuracy"] * n)
        found[key] = broken.get(key, [1.0] * k + [0.0] * (n - k))
    return found


@pytest.mark.parametrize(
    ("only_rule", "only_exact", "flag"),
    [(6, 1, False), (20, 0, True), (0, 0, False)],
)
def test_rule_vs_exact_uses_the_paired_test_when_outcomes_exist(only_rule, only_exact, flag):
    """40 images; pgd at 8/255: the rule's gradient leaves ``only_rule`` images correct that
    the exact one broke, and the reverse ``only_exact``: the check's p-value is the exact
    McNemar p (6 vs 1: 0.125; 20 vs 0: 1.9e-6), Bonferroni over the 6 rule/exact pairs,
    flagged only when significant, whatever the 2-SE margin (0.158 at n = 40) would say."""
    n, both = 40, 10
    rule = [1.0] * both + [1.0] * only_rule + [0.0] * (n - both - only_rule)
    exact = [1.0] * both + [0.0] * only_rule + [1.0] * only_exact
    exact += [0.0] * (n - len(exact))
    rule[both + only_rule : both + only_rule + only_exact] = [0.0] * only_exact
    rows = [dict(r, n=n) for r in honest_rows()]
    for r in rows:
        if r["attack"] == "pgd" and r["eps"] == 8 / 255:
            r["accuracy"] = sum(rule if r["gradient"] == "rule" else exact) / n
    cells = {("pgd", "linf", "rule", 8 / 255): rule, ("pgd", "linf", "exact", 8 / 255): exact}
    outcomes = _outcomes_for(rows, n, cells)
    check = _by_name(verdict(rows, outcomes=outcomes))[("rule_vs_exact", "accuracy")]
    expected = min(1.0, 2 * sum(math.comb(only_rule + only_exact, i) for i in range(min(only_rule, only_exact) + 1)) / 2 ** (only_rule + only_exact)) if only_rule + only_exact else 1.0  # fmt: skip
    assert check.test == "exact McNemar" and check.threshold == 0.05
    if only_rule > 0:
        assert check.where.startswith("pgd/rule linf eps=0.03137 vs exact")
        assert check.p_value == pytest.approx(min(1.0, 6 * expected))  # fgsm, pgd x 3 eps
        assert check.value == pytest.approx((only_rule - only_exact) / n)
        assert f"first cell only: {only_rule}, under the second only: {only_exact}" in check.where
    assert check.flagged is flag
    # Without outcomes, the same rows are judged by the noise margin.
    plain = _by_name(verdict(rows))[("rule_vs_exact", "accuracy")]
    assert plain.test == "2-SE margin" and plain.p_value is None
    assert plain.threshold == pytest.approx(noise_margin(n))
