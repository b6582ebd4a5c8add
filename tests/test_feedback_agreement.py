"""Agreement statistics against hand-worked examples and independent computations."""

from __future__ import annotations

import math
import random
from itertools import combinations, permutations

import pytest

from rlhfkit.feedback import agreement as ag


def test_cohens_kappa_hand_worked_2x2_table():
    # Rater A: yes 25 / no 25; rater B: yes 30 / no 20. Table: yes-yes 20, yes-no 5, no-yes 10, no-no 15.
    # p_o = (20 + 15) / 50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert ag.percent_agreement(a, b) == pytest.approx(0.7)
    assert ag.cohens_kappa(a, b) == pytest.approx(0.4)
    assert ag.cohens_kappa(b, a) == pytest.approx(0.4)  # symmetric


def test_cohens_kappa_limits():
    labels = ["0", "1", "tie", "0", "1", "both_bad"]
    assert ag.cohens_kappa(labels, labels) == pytest.approx(1.0)
    # Systematic disagreement on a balanced binary task: p_o = 0, p_e = 0.5 -> kappa = -1.
    assert ag.cohens_kappa(["a", "b"] * 5, ["b", "a"] * 5) == pytest.approx(-1.0)
    # One shared constant label: chance agreement is 1, kappa undefined (not a fake 1.0).
    assert math.isnan(ag.cohens_kappa(["a"] * 4, ["a"] * 4))
    assert math.isnan(ag.cohens_kappa([], []))
    with pytest.raises(ValueError):
        ag.cohens_kappa(["a"], ["a", "b"])


def test_krippendorff_alpha_classic_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 observers x 12 units,
    # missing values; nominal alpha = 0.743 (unit 12 has a single value and is not pairable).
    n = None
    obs = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in column if v is not None] for column in zip(*obs)]
    assert ag.krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def _alpha_by_pairs(units):
    """Independent form: alpha = 1 - D_o/D_e with D_o the mean disagreement over within-unit pairs
    (each unit weighted by 1/(m_u - 1)) and D_e the disagreement over all pairs of pairable values."""
    pairable = [u for u in units if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    d_o = sum(sum(a != b for a, b in permutations(u, 2)) / (len(u) - 1) for u in pairable) / n
    d_e = sum(a != b for a, b in permutations(values, 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def test_krippendorff_alpha_matches_pairwise_formulation_on_random_data():
    rng = random.Random(0)
    for _ in range(20):
        units = [[rng.choice("abc") for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(3, 15))]
        if len({v for u in units if len(u) > 1 for v in u}) < 2:
            continue
        assert ag.krippendorff_alpha_nominal(units) == pytest.approx(_alpha_by_pairs(units))


def test_krippendorff_alpha_two_raters_complete_data_is_close_to_scotts_pi():
    # For 2 raters and no missing data, alpha = 1 - (n-1)/n * (1 - pi) with Scott's pi.
    a = ["x", "x", "y", "y", "x", "z", "y", "x"]
    b = ["x", "y", "y", "y", "x", "z", "x", "x"]
    n = 2 * len(a)
    p_o = ag.percent_agreement(a, b)
    pooled = [*a, *b]
    p_e = sum((pooled.count(c) / n) ** 2 for c in set(pooled))
    pi = (p_o - p_e) / (1 - p_e)
    expected = 1 - (n - 1) / n * (1 - pi)
    assert ag.krippendorff_alpha_nominal([[x, y] for x, y in zip(a, b)]) == pytest.approx(expected)


def test_krippendorff_alpha_perfect_and_undefined():
    assert ag.krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"], ["a", "a"]]) == pytest.approx(1.0)
    assert math.isnan(ag.krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]))  # no variation at all
    assert math.isnan(ag.krippendorff_alpha_nominal([["a"], ["b"]]))  # nothing pairable


def test_kendall_tau_hand_worked_and_against_pair_count():
    assert ag.kendall_tau([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert ag.kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    # One adjacent swap among 4 items: 5 concordant, 1 discordant of 6 pairs -> 4/6.
    assert ag.kendall_tau([0, 1, 2, 3], [0, 1, 3, 2]) == pytest.approx(4 / 6)
    rng = random.Random(1)
    for _ in range(20):
        a = rng.sample(range(6), 6)
        b = rng.sample(range(6), 6)
        pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}
        discordant = sum((pos_a[x] < pos_a[y]) != (pos_b[x] < pos_b[y]) for x, y in combinations(range(6), 2))
        assert ag.kendall_tau(a, b) == pytest.approx(1 - 2 * discordant / 15)
    with pytest.raises(ValueError):
        ag.kendall_tau([0, 1, 2], [0, 1, 3])


def test_median_rate_and_pairwise_tables():
    assert ag.median([5.0, 1.0, 3.0]) == 3.0
    assert ag.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(ag.median([]))
    assert ag.rate(1, 4) == 0.25 and math.isnan(ag.rate(0, 0))
    labels = {"r1": {1: "0", 2: "1", 3: "tie"}, "r2": {1: "0", 2: "0"}, "r3": {9: "0"}}
    rows = ag.pairwise_label_agreement(labels)
    assert [r["raters"] for r in rows] == [["r1", "r2"]]  # r3 shares nothing with anyone
    assert rows[0]["n"] == 2 and rows[0]["percent_agreement"] == 0.5
    rankings = {"r1": {1: [0, 1, 2]}, "r2": {1: [2, 1, 0]}}
    assert ag.pairwise_ranking_agreement(rankings)[0]["mean_kendall_tau"] == -1.0
