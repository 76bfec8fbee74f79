"""Intervals and paired tests against known values (sslr.stats), and the per-image outcomes
file (sslr.outcomes) read back as written."""

from __future__ import annotations

import json
import math

import pytest

from sslr.outcomes import read_outcomes, write_outcomes
from sslr.results import ResultsError
from sslr.stats import bootstrap_mean, mcnemar, mean_and_spread, paired, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Wilson's score interval, z = 1.96 (e.g. Newcombe 1998, Table I; Agresti-Coull 1998)
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)
    assert got[0] <= k / n <= got[1]


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson(11, 10)
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (6, 1, 0.125),  # 2 * (1 + 7) / 2^7
        (1, 6, 0.125),
        (0, 0, 1.0),  # all ties: no evidence either way
        (5, 5, 1.0),
        (10, 0, 2 / 2**10),
        (12, 3, 2 * sum(math.comb(15, i) for i in range(4)) / 2**15),
    ],
)
def test_mcnemar_exact_against_a_hand_computation(b, c, p):
    assert mcnemar(b, c) == pytest.approx(p)


def test_paired_accuracy_counts_discordant_images_and_brackets_the_difference():
    first = [1] * 30 + [1] * 12 + [0] * 3 + [0] * 55  # 42 correct
    second = [1] * 30 + [0] * 12 + [1] * 3 + [0] * 55  # 33 correct
    result = paired(first, second, "accuracy", seed=0)
    assert (result.only_first, result.only_second, result.n) == (12, 3, 100)
    assert result.difference == pytest.approx(0.09)
    assert result.low < 0.09 < result.high and result.low > 0  # 9 points on 15 discordant
    assert result.p_value == pytest.approx(mcnemar(12, 3)) and result.test == "exact McNemar"
    assert paired(first, second, seed=0) == result  # seeded: the same interval again
    with pytest.raises(ValueError, match="same images"):
        paired(first, second[:-1])


def test_paired_hashing_uses_wilcoxon_and_ties_give_p_one():
    a = [0.5 + 0.01 * i for i in range(30)]
    b = [v - 0.05 for v in a]
    result = paired(a, b, "mAP")
    assert result.test == "Wilcoxon signed-rank" and result.p_value < 1e-4
    assert result.low == pytest.approx(0.05) and result.high == pytest.approx(0.05)
    assert paired(a, a, "mAP").p_value == 1.0


def test_bootstrap_interval_of_a_mean_covers_it_and_narrows_with_n():
    small = [0.2, 0.9, 0.4, 0.7, 0.5, 0.3, 0.8, 0.6]
    low, high = bootstrap_mean(small)
    assert low < sum(small) / len(small) < high
    big_low, big_high = bootstrap_mean(small * 25)
    assert big_high - big_low < (high - low) / 3  # ~ 1/sqrt(25)
    assert bootstrap_mean([0.4] * 10) == pytest.approx((0.4, 0.4))


def test_mean_and_spread():
    assert mean_and_spread([0.4, 0.5, 0.6]) == pytest.approx((0.5, 0.1))
    assert mean_and_spread([0.7]) == (0.7, 0.0)


def test_outcomes_file_round_trip_and_strict_reading(tmp_path):
    cells = {
        ("pgd", "linf", "rule", 8 / 255, "accuracy"): [1.0, 0.0, 1.0],
        ("worst", "linf", "any", 8 / 255, "accuracy"): [0.0, 0.0, 1.0],
        ("worst", "linf", "any", 0.03, "mAP"): [0.25, 0.5, 0.125],
        ("worst", "linf", "any", 0.03, "t-mAP"): [0.75, 0.5, 1.0],
    }
    path = write_outcomes(tmp_path / "outcomes.json", [4, 17, 90], cells, seed=3)
    found = read_outcomes(path)
    assert found.index == [4, 17, 90] and found.seed == 3
    assert found.values("pgd", "linf", "rule", 8 / 255) == [1.0, 0.0, 1.0]
    assert found.values("worst", "linf", "any", 0.03, "mAP") == [0.25, 0.5, 0.125]
    assert found.values("worst", "linf", "any", 0.03, "t-mAP") == [0.75, 0.5, 1.0]
    assert found.values("fgsm", "linf", "rule", 8 / 255) is None
    assert json.loads(path.read_text())["cells"][0]["values"] == "101"  # one character an image
    with pytest.raises(ValueError, match="2 values for 3 images"):
        write_outcomes(
            tmp_path / "bad.json", [1, 2, 3], {("a", "linf", "rule", 0.0, "accuracy"): [1, 0]}
        )
    body = json.loads(path.read_text())
    body["cells"][0]["values"] = "10"
    (tmp_path / "short.json").write_text(json.dumps(body))
    with pytest.raises(ResultsError, match="cell 0 is malformed"):
        read_outcomes(tmp_path / "short.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:40])
    with pytest.raises(ResultsError, match="cannot be read as per-image outcomes"):
        read_outcomes(tmp_path / "cut.json")
