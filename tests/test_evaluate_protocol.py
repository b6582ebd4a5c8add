"""The glue: judge-agnostic figures by hand, the world's keys, reusable baseline samples, KL."""

from __future__ import annotations

import pytest

from rlhfkit.evaluate.protocol import compare_samples, evaluate_policy_pair, judge_comparison
from rlhfkit.evaluate.sampling import PolicySamples, sample_policy, stream_seed
from rlhfkit.judges import AIJudge, GoldJudge
from rlhfkit.worlds import compare_policies

try:
    from test_evaluate_common import micro_policy, some_world_prompts, world, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import micro_policy, some_world_prompts, world, world_tokenizer


class TableJudge:
    """Scores written by hand; ties within 0.1."""

    name = "table"
    tie_margin = 0.1

    def __init__(self, table):
        self.table = table

    def score(self, prompt, response):
        return self.table[response]

    def compare(self, prompt, a, b):
        raise AssertionError("judge_comparison decides from scores")


# P1: x (1.0) vs y (0.0) win; "same" vs " same " identical text → tie
# P2: u (0.2) vs w (0.25) within the margin → tie; v (−1.0) vs "z z z" (0.5) loss
SCORES = {"x": 1.0, "y": 0.0, "same": 0.3, " same ": 0.3, "u": 0.2, "w": 0.25, "v": -1.0, "z z z": 0.5}
A = [["x", "same"], ["u", "v"]]
B = [["y", " same "], ["w", "z z z"]]


def test_judge_figures_against_a_hand_worked_example():
    out = judge_comparison(TableJudge(SCORES), ["P1", "P2"], A, B, n_bootstrap=300, seed=0)
    assert out["counts/prompts"] == 2 and out["counts/pairs"] == 4
    assert out["judge/name"] == "table"
    assert out["judge/pairs/win_fraction"] == 0.25 and out["judge/pairs/loss_fraction"] == 0.25
    assert out["judge/pairs/tie_fraction"] == 0.5 and out["pairs/identical_fraction"] == 0.25
    assert out["judge/win_rate/ties_half"] == 0.5 and out["judge/win_rate/decisive"] == 0.5
    assert out["judge/score_a"] == pytest.approx((1.0 + 0.3 + 0.2 - 1.0) / 4)
    assert out["judge/score_b"] == pytest.approx((0.0 + 0.3 + 0.25 + 0.5) / 4)
    assert out["judge/score_delta"] == pytest.approx((1.0 + 0.0 - 0.05 - 1.5) / 4)
    # two prompts: the bootstrap can only draw {P1,P1}, {P1,P2}, {P2,P2}: means 0.5, −0.1375, −0.775
    assert out["judge/score_delta_ci_low"] == pytest.approx(-0.775)
    assert out["judge/score_delta_ci_high"] == pytest.approx(0.5)
    assert out["length/a/mean_words"] == 1.0 and out["length/b/mean_words"] == 1.5


def test_no_decisive_pair_gives_none_and_mismatched_samples_are_refused():
    out = judge_comparison(TableJudge(SCORES), ["P"], [["u"]], [["w"]], n_bootstrap=10)
    assert out["judge/win_rate/decisive"] is None and out["judge/win_rate/ties_half"] == 0.5
    with pytest.raises(ValueError, match="same number"):
        judge_comparison(TableJudge(SCORES), ["P"], [["u", "v"]], [["w"]])
    with pytest.raises(ValueError, match="different prompts"):
        compare_samples(TableJudge(SCORES), PolicySamples.from_texts(["P"], [["u"]]),
                        PolicySamples.from_texts(["Q"], [["w"]]))


def test_gold_evaluation_has_the_world_protocol_figures_and_kl():
    prompts = some_world_prompts(2)
    policy, baseline, tok = micro_policy(0), micro_policy(1), world_tokenizer()
    judge = GoldJudge(world())
    out = evaluate_policy_pair(policy, baseline, tok, judge, prompts, n_samples=2, seed=4, max_new_tokens=8,
                               n_bootstrap=200)
    a = sample_policy(policy, tok, prompts, 2, seed=stream_seed(4, "policy"), max_new_tokens=8)
    b = sample_policy(baseline, tok, prompts, 2, seed=stream_seed(4, "baseline"), max_new_tokens=8)
    world_figures = compare_policies(judge, prompts, a.texts, b.texts, n_bootstrap=200, seed=4)
    assert {k: out[k] for k in world_figures} == world_figures  # the same samples, the world's own numbers
    assert out["kl/nats_per_seq"] > 0 and out["kl/n_sequences"] == len(prompts) * 2
    assert out["judge/score_delta"] == pytest.approx(out["gold/utility_delta"])
    assert out["length/a/mean_tokens"] == pytest.approx(a.mean_tokens())


def test_baseline_samples_can_be_reused_without_the_baseline_model():
    prompts = some_world_prompts(1)
    policy, baseline, tok = micro_policy(0), micro_policy(1), world_tokenizer()
    judge = GoldJudge(world())
    fresh = evaluate_policy_pair(policy, baseline, tok, judge, prompts, 2, 0, max_new_tokens=6, n_bootstrap=100,
                                 compute_kl=False)
    reused = sample_policy(baseline, tok, prompts, 2, seed=stream_seed(0, "baseline"), max_new_tokens=6)
    again = evaluate_policy_pair(policy, None, tok, judge, prompts, 2, 0, max_new_tokens=6, n_bootstrap=100,
                                 baseline_samples=reused)
    assert again == fresh and again["kl/nats_per_seq"] is None  # no baseline model: no KL
    with_kl = evaluate_policy_pair(policy, None, tok, judge, prompts, 2, 0, max_new_tokens=6, n_bootstrap=100,
                                   baseline_samples=reused, kl=0.7)
    assert with_kl["kl/nats_per_seq"] == 0.7
    with pytest.raises(ValueError, match="baseline model or its samples"):
        evaluate_policy_pair(policy, None, tok, judge, prompts, 2, 0)


def test_a_non_gold_judge_gets_world_figures_only_when_a_gold_judge_is_given():
    prompts = some_world_prompts(1)
    tok = world_tokenizer()
    a = sample_policy(micro_policy(0), tok, prompts, 1, seed=0, max_new_tokens=6)
    b = sample_policy(micro_policy(1), tok, prompts, 1, seed=1, max_new_tokens=6)
    ai = AIJudge(world())
    alone = evaluate_policy_pair(None, None, tok, ai, prompts, 1, policy_samples=a, baseline_samples=b,
                                 n_bootstrap=50)
    assert not any(k.startswith(("gold/", "rates/", "behaviours/")) for k in alone)
    assert alone["judge/name"] == "ai"
    both = evaluate_policy_pair(None, None, tok, ai, prompts, 1, policy_samples=a, baseline_samples=b,
                                n_bootstrap=50, gold=GoldJudge(world()))
    assert "gold/utility_delta" in both and "rates/a/incoherent" in both
    assert both["judge/score_delta"] == alone["judge/score_delta"]
