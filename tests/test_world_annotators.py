"""Simulated annotators, tau calibration, preference labelling and the AI judge."""

import math
import random

import pytest

from rlhfkit.worlds import (
    FAMILY_BEHAVIOURS,
    STYLES,
    AIJudge,
    SimulatedAnnotator,
    agreement_with_gold,
    calibrate_tau,
    disagreement,
    generate_response,
    label_pairs,
)
from rlhfkit.worlds.annotators import gold_margin_pairs


@pytest.fixture(scope="module")
def pairs(world):
    """A synthetic mix standing in for SFT samples: mostly good, some mistakes, varied style."""
    rng = random.Random(0)

    def sample(p):
        behaviour = "good" if rng.random() < 0.75 else rng.choice(FAMILY_BEHAVIOURS[p.family])
        return generate_response(p, behaviour, rng, rng.choices(STYLES, weights=[7, 1, 1, 1])[0])

    return [(p, sample(p), sample(p)) for p in world.sample_prompts(2500, seed=5)]


def test_annotator_is_deterministic_and_mirrors_swapped_pairs(judge, pairs):
    first = SimulatedAnnotator(0.3, seed=1, judge=judge)
    again = SimulatedAnnotator(0.3, seed=1, judge=judge)
    other = SimulatedAnnotator(0.3, seed=2, judge=judge)
    flip = {"a": "b", "b": "a", "tie": "tie"}
    labels = [first.compare(*p) for p in pairs[:500]]
    assert labels == [again.compare(*p) for p in pairs[:500]]
    assert labels == [flip[first.compare(p, b, a)] for p, a, b in pairs[:500]]
    assert labels != [other.compare(*p) for p in pairs[:500]]


def test_preference_probability_is_sigmoid_of_utility_gap_over_tau(world, judge):
    p = world.lookup("what is 7 plus 5?")
    good, rude_good = "the answer is 12.", "ugh. the answer is 12."   # utilities 1.0 and 0.7
    tau = 0.25
    expected = 1 / (1 + math.exp(-(1.0 - 0.7) / tau))
    n = 4000
    wins = sum(SimulatedAnnotator(tau, seed=s, judge=judge).compare(p, good, rude_good) == "a" for s in range(n))
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(wins / n - expected) < 4 * sd
    assert SimulatedAnnotator(tau, judge=judge).prob_a(p, good, rude_good) == pytest.approx(expected)


def test_ties_identical_and_both_bad(world, judge):
    p = world.lookup("what is 7 plus 5?")
    annotator = SimulatedAnnotator(0.1, seed=0, tie_margin=0.05, both_bad_below=-0.5, judge=judge)
    assert annotator.compare(p, "12.", "12 .") == "tie"                  # identical after normalising
    assert annotator.compare(p, "12.", "the answer is 12.") == "tie"     # equal utility, different text
    assert annotator.compare(p, "13.", "it is 2 or 3.") == "both_bad"    # -0.6 and -1.0
    assert annotator.compare(p, "12.", "13.") in ("a", "b")


def test_length_bias_makes_long_answers_win_more(world, judge):
    p = world.lookup("what is 7 plus 5?")
    short, long = "12.", "i will try to give you a full answer. the answer is 12."
    plain = [SimulatedAnnotator(0.2, s, judge=judge).compare(p, long, short) for s in range(300)]
    biased = [SimulatedAnnotator(0.2, s, length_bias=0.05, judge=judge).compare(p, long, short) for s in range(300)]
    assert plain.count("a") == 0            # equal gold utility: always a tie
    assert biased.count("a") > 200          # +0.5 utility for 10 more words


def test_calibration_hits_target_disagreement_on_non_identical_pairs(judge, pairs):
    cal = calibrate_tau(pairs, judge, target=(0.20, 0.30))
    assert cal.in_target and 0.20 <= cal.disagreement <= 0.30
    assert cal.n_identical + cal.n_equal_utility + cal.n_used == cal.n_pairs
    # measured again with two fresh annotators on the same pairs: still about the same
    used = gold_margin_pairs(pairs, judge, 0.05)
    fresh = disagreement(used, SimulatedAnnotator(cal.tau, 11, judge=judge),
                         SimulatedAnnotator(cal.tau, 12, judge=judge))
    assert 0.17 <= fresh <= 0.33
    # pitfall 5: counting equal-utility pairs (always ties) would dilute the figure
    assert cal.disagreement_nonidentical < cal.disagreement
    assert 0.7 <= cal.agreement_with_gold <= 0.95


def test_calibration_tracks_the_target(judge, pairs):
    low = calibrate_tau(pairs, judge, target=(0.05, 0.10))
    high = calibrate_tau(pairs, judge, target=(0.30, 0.40))
    assert low.tau < high.tau and low.disagreement < high.disagreement


def test_label_pairs_drops_identical_and_ties_and_counts_them(world, judge, pairs):
    p = world.lookup("what is 7 plus 5?")
    extra = [(p, "12.", "12."), (p, "12.", "the answer is 12."), (p.text, "12.", "13.")]
    annotator = SimulatedAnnotator(0.1, seed=3, judge=judge)
    rows, counts = label_pairs(list(pairs) + extra, annotator)
    assert counts["pairs"] == len(pairs) + 3
    assert counts["identical"] + counts["ties"] + counts["both_bad"] + counts["labelled"] == counts["pairs"]
    assert counts["identical"] >= 1 and counts["ties"] >= 1 and len(rows) == counts["labelled"]
    assert all(set(r) == {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"] for r in rows)
    assert all(isinstance(r["prompt"], str) for r in rows)
    better = sum(judge.score(r["prompt"], r["chosen"]) > judge.score(r["prompt"], r["rejected"]) for r in rows)
    assert better / len(rows) > 0.7


def test_agreement_with_gold_is_perfect_for_gold_and_lower_for_noisy_annotators(judge, pairs):
    assert agreement_with_gold(pairs, judge, judge)["agreement"] == 1.0
    noisy = agreement_with_gold(pairs, SimulatedAnnotator(1.0, 1, judge=judge), judge)["agreement"]
    sharp = agreement_with_gold(pairs, SimulatedAnnotator(0.05, 1, judge=judge), judge)["agreement"]
    assert 0.5 < noisy < sharp <= 1.0


def test_ai_judge_is_imperfect_in_its_documented_ways(world, judge, pairs):
    ai = AIJudge(world, seed=0)
    agreement = agreement_with_gold(pairs, ai, judge)["agreement"]
    assert 0.6 < agreement < 0.98
    rng = random.Random(4)
    harmful = [p for p in world.sample_prompts(400, seed=6) if p.family == "harmful"]
    fooled = 0
    for p in harmful:
        refusal = generate_response(p, "good", rng)
        polite_harm = generate_response(p, "harmful_compliance", rng, "polite")
        assert judge.compare(p, refusal, polite_harm) == "a"
        fooled += ai.compare(p, polite_harm, refusal) == "a"
    assert 0.2 < fooled / len(harmful) < 0.8     # misses about half of politely phrased harm
    goods = [p for p in world.sample_prompts(300, seed=7)]
    longer_wins = 0
    for p in goods:
        plain = generate_response(p, "good", rng)
        rambling = generate_response(p, "good", rng, "rambling")
        assert judge.compare(p, plain, rambling) == "a"
        longer_wins += ai.compare(p, rambling, plain) == "a"
    assert longer_wins / len(goods) > 0.6        # likes length where gold penalises it
    p = harmful[0]
    r = generate_response(p, "good", rng)
    assert ai.score(p, r) == ai.score(p.text, r) and ai.compare(p, r, r) == "tie"


def test_thumbs_up_probability_is_sigmoid_of_utility_above_the_threshold(world, judge):
    """P(up) = σ((u − 0.5)/τ): measured over many annotators for a good (1.0), a rude good (0.7) and a
    wrong answer (−0.6); deterministic per annotator, response and prompt."""
    p = world.lookup("what is 7 plus 5?")
    tau, n = 0.3, 4000
    for response in ("the answer is 12.", "ugh. the answer is 12.", "13."):
        u = judge.score(p, response)
        expected = 1 / (1 + math.exp(-(u - 0.5) / tau))
        ups = sum(SimulatedAnnotator(tau, seed=s, judge=judge).thumbs(p, response) == "up" for s in range(n))
        assert abs(ups / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9
    annotator = SimulatedAnnotator(tau, seed=3, judge=judge)
    assert [annotator.thumbs(p, "13.") for _ in range(3)] == [annotator.thumbs(p, "13.")] * 3
