"""Evaluation protocol statistics against hand-worked examples."""

import pytest

from rlhfkit.worlds import GoldJudge, World, compare_policies, paired_bootstrap_ci, policy_stats
from rlhfkit.worlds.judge import Judgement


class StubJudge:
    """Judgements written by hand: {(prompt, response): (family, behaviour, goal, utility, n_words)}."""

    def __init__(self, table):
        self.table = table

    def judge(self, prompt, response):
        family, behaviour, goal, utility, words = self.table[(prompt, response)]
        return Judgement(family, behaviour, goal, goal - utility, utility, False, words, "stub")


# 3 prompts x 2 samples. Pair outcomes (utility / goal):
#   P1 s0: 1.0 vs -0.6 win / goal win      P1 s1: identical text 0.7 vs 0.7: tie / goal tie
#   P2 s0: 1.0 vs 1.0 tie / goal tie        P2 s1: -1.0 vs 1.0 loss / goal loss
#   P3 s0: 1.0 vs -0.6 win / goal win       P3 s1: 0.7 (rude good) vs 1.0 loss / goal tie (1 vs 1)
TABLE = {
    ("P1", "a1"): ("helpful", "good", 1.0, 1.0, 2), ("P1", "same"): ("helpful", "good", 1.0, 0.7, 30),
    ("P1", "b1"): ("helpful", "wrong", -0.6, -0.6, 2),
    ("P2", "a3"): ("harmful", "good", 1.0, 1.0, 6), ("P2", "a4"): ("harmful", "harmful_compliance", -1.0, -1.0, 10),
    ("P2", "b3"): ("harmful", "good", 1.0, 1.0, 4), ("P2", "b4"): ("harmful", "good", 1.0, 1.0, 4),
    ("P3", "a5"): ("benign", "good", 1.0, 1.0, 8), ("P3", "a6"): ("benign", "good", 1.0, 0.7, 12),
    ("P3", "b5"): ("benign", "over_refusal", -0.6, -0.6, 5), ("P3", "b6"): ("benign", "good", 1.0, 1.0, 8),
}
PROMPTS = ["P1", "P2", "P3"]
A = [["a1", "same"], ["a3", "a4"], ["a5", "a6"]]
B = [["b1", "same"], ["b3", "b4"], ["b5", "b6"]]


def test_hand_worked_three_prompts_two_samples():
    out = compare_policies(StubJudge(TABLE), PROMPTS, A, B, n_bootstrap=200, seed=0, kl=1.25)
    assert out["counts/prompts"] == 3 and out["counts/pairs"] == 6
    # wins 2, losses 2, ties 2
    assert out["win_rate/ties_half"] == pytest.approx((2 + 0.5 * 2) / 6)
    assert out["win_rate/decisive"] == pytest.approx(2 / 4)
    assert out["win_rate/goal_decisive"] == pytest.approx(2 / 3)       # goal: 2 wins, 1 loss
    assert out["pairs/tie_fraction"] == pytest.approx(2 / 6)
    assert out["pairs/goal_tie_fraction"] == pytest.approx(3 / 6)
    assert out["pairs/identical_fraction"] == pytest.approx(1 / 6)
    assert out["pairs/win_fraction"] == pytest.approx(2 / 6)
    # utilities: A = (1 + .7 + 1 - 1 + 1 + .7) / 6, B = (-.6 + .7 + 1 + 1 - .6 + 1) / 6
    assert out["gold/utility_a"] == pytest.approx(3.4 / 6)
    assert out["gold/utility_b"] == pytest.approx(2.5 / 6)
    assert out["gold/utility_delta"] == pytest.approx(0.9 / 6)
    # goals: A = 1 + 1 + 1 - 1 + 1 + 1 = 4, B = -.6 + 1 + 1 + 1 - .6 + 1 = 2.8
    assert out["gold/goal_delta"] == pytest.approx((4.0 - 2.8) / 6)
    assert out["gold/family/helpful/utility_delta"] == pytest.approx(1.6 / 2)
    assert out["gold/family/harmful/utility_delta"] == pytest.approx(-2.0 / 2)
    assert out["gold/family/benign/utility_delta"] == pytest.approx(1.3 / 2)
    assert out["gold/family/unanswerable/utility_delta"] is None
    # B is at the maximum utility on 3 of 6 samples: cap = 0.5 + (1 - 0.5) / 2
    assert out["win_rate/ties_half_cap"] == pytest.approx(0.75)
    assert out["rates/a/helpful_correct"] == 1.0 and out["rates/b/helpful_correct"] == 0.5
    assert out["rates/b/wrong"] == 0.5 and out["rates/a/wrong"] == 0.0
    assert out["rates/a/harmful_compliance"] == 0.5 and out["rates/b/harmful_compliance"] == 0.0
    assert out["rates/a/over_refusal"] == 0.0 and out["rates/b/over_refusal"] == 0.5
    assert out["rates/a/confabulation"] is None
    assert out["rates/a/incoherent"] == 0.0
    assert out["behaviours/b/benign/over_refusal"] == 0.5
    assert out["length/a/mean_words"] == pytest.approx((2 + 30 + 6 + 10 + 8 + 12) / 6)
    assert out["kl/nats_per_seq"] == 1.25
    low, high = out["gold/utility_delta_ci_low"], out["gold/utility_delta_ci_high"]
    assert -1.0 - 1e-9 <= low <= out["gold/utility_delta"] <= high <= 0.8 + 1e-9


def test_bootstrap_matches_the_exact_resampling_distribution():
    """3 prompts: 27 equally likely resamples; the extremes (all P2 = -1.0, all P1 = 0.8) each have
    probability 1/27 > 2.5 %, so the 95 % interval converges to exactly [-1.0, 0.8]."""
    diffs, counts = [1.6, -2.0, 1.3], [2, 2, 2]
    low, high = paired_bootstrap_ci(diffs, counts, n_bootstrap=5000, seed=1)
    assert low == pytest.approx(-1.0) and high == pytest.approx(0.8)


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    diffs = [0.4, -0.2, 1.0, 0.0, 0.3, -0.5, 0.9, 0.1, 0.2, 0.6] * 5
    counts = [2] * len(diffs)
    estimate = sum(diffs) / sum(counts)
    first = paired_bootstrap_ci(diffs, counts, 500, seed=3)
    assert first == paired_bootstrap_ci(diffs, counts, 500, seed=3)
    assert first != paired_bootstrap_ci(diffs, counts, 500, seed=4)
    assert first[0] < estimate < first[1]
    narrow = paired_bootstrap_ci(diffs, counts, 500, seed=3, confidence=0.5)
    assert first[0] <= narrow[0] <= estimate <= narrow[1] <= first[1]
    assert paired_bootstrap_ci([0.5] * 10, [1] * 10, 100, seed=0) == (0.5, 0.5)


def test_with_the_gold_judge_better_policy_wins():
    world = World.build(0)
    judge = GoldJudge(world)
    prompts = world.prompts("eval", "helpful")[:20]
    good = [[f"the answer is {p.answer}."] * 2 if p.kind == "arithmetic" else [f"{p.answer}."] * 2 for p in prompts]
    bad = [["i do not know.", "sorry, i cannot help with that."] for _ in prompts]
    out = compare_policies(judge, prompts, good, bad, n_bootstrap=200)
    assert out["win_rate/decisive"] == 1.0 and out["win_rate/goal_decisive"] == 1.0
    assert out["gold/utility_delta"] == pytest.approx(1.0 - (-0.3 - 0.5) / 2)
    assert out["rates/b/unhelpful_idk"] == 0.5 and out["rates/a/helpful_correct"] == 1.0
    assert out["gold/utility_delta_ci_low"] == pytest.approx(out["gold/utility_delta"])  # no variance
    stats = policy_stats(judge, [p.text for p in prompts], bad)
    assert stats["rates/over_refusal"] is None and stats["behaviours/helpful/over_refusal"] == 0.5
    assert "kl/nats_per_seq" not in out


def test_mismatched_samples_are_rejected():
    with pytest.raises(ValueError, match="same number"):
        compare_policies(StubJudge(TABLE), PROMPTS, A, [["b1"], ["b3", "b4"], ["b5", "b6"]])
    with pytest.raises(ValueError, match="one list of responses per prompt"):
        compare_policies(StubJudge(TABLE), PROMPTS, A, B[:2])
