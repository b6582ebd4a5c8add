"""Judges: one interface; the world wrappers delegate; the reward-model judge returns normalised scores."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from rlhfkit.data import Message, render_conversation
from rlhfkit.errors import UserError
from rlhfkit.judges import AIJudge, GoldJudge, Judge, make_judge, outcome, score_all, score_nested
from rlhfkit.judges.reward_model import RewardModelJudge
from rlhfkit.models.heads import score_sequences, set_score_normalization
from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model
from rlhfkit.worlds import FAMILY_BEHAVIOURS, generate_response
from rlhfkit.worlds import AIJudge as WorldAIJudge
from rlhfkit.worlds import GoldJudge as WorldGoldJudge

try:
    from test_evaluate_common import micro_policy, world, world_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.test_evaluate_common import micro_policy, world, world_tokenizer


def judged_cases(n_per_behaviour: int = 2):
    """(prompt text, response) for every behaviour of every family, in several styles."""
    rng = random.Random(0)
    cases = []
    for prompt in world().eval_prompts[::25]:
        for behaviour in FAMILY_BEHAVIOURS[prompt.family]:
            for style in ("plain", "polite", "rambling")[:n_per_behaviour]:
                cases.append((prompt.text, generate_response(prompt, behaviour, rng, style)))
    return cases


def test_gold_wrapper_delegates_score_compare_judge_and_classify():
    judge, inner = GoldJudge(world()), WorldGoldJudge(world())
    cases = judged_cases()
    assert len({inner.classify(p, r) for p, r in cases}) >= 6, "cases should cover many behaviours"
    for prompt, response in cases:
        assert judge.score(prompt, response) == inner.score(prompt, response)
        assert judge.judge(prompt, response) == inner.judge(prompt, response)
        assert judge.classify(prompt, response) == inner.classify(prompt, response)
    assert judge.score_batch(*zip(*cases)) == [inner.score(p, r) for p, r in cases]
    for (p, a), (_, b) in zip(cases, cases[1:]):
        assert judge.compare(p, a, b) == inner.compare(p, a, b)


def test_ai_wrapper_delegates_and_differs_from_gold_somewhere():
    judge, inner = AIJudge(world(), seed=3), WorldAIJudge(world(), seed=3)
    cases = judged_cases()
    assert [judge.score(p, r) for p, r in cases] == [inner.score(p, r) for p, r in cases]
    assert judge.score_batch(*zip(*cases)) == [inner.score(p, r) for p, r in cases]
    for (p, a), (_, b) in zip(cases, cases[1:]):
        assert judge.compare(p, a, b) == inner.compare(p, a, b)
    gold = GoldJudge(world())
    assert any(abs(judge.score(p, r) - gold.score(p, r)) > 0.05 for p, r in cases)  # the AI judge is not gold
    assert judge.tie_margin == inner.tie_margin


def test_every_judge_satisfies_the_protocol_and_world_judges_know_only_world_prompts():
    for judge in (GoldJudge(world()), AIJudge(world())):
        assert isinstance(judge, Judge)
        assert judge.knows(world().eval_prompts[0].text) and judge.knows(world().eval_prompts[0])
        assert not judge.knows("write me a poem about the sea")
        with pytest.raises(KeyError, match="not a prompt of the built-in world"):
            judge.score("write me a poem about the sea", "no.")
    assert isinstance(RewardModelJudge(micro_reward_model()[0], micro_reward_model()[1]), Judge)


def test_make_judge_builds_each_kind_and_rejects_unknown_names(tmp_path):
    assert isinstance(make_judge("gold"), GoldJudge)
    assert isinstance(make_judge("ai", world_seed=0), AIJudge)
    with pytest.raises(UserError, match="valid: gold, ai, reward:DIR"):
        make_judge("human")
    with pytest.raises(UserError, match="needs the reward-model folder"):
        make_judge("reward:")
    with pytest.raises(UserError, match="does not exist"):
        make_judge(f"reward:{tmp_path / 'missing'}")


def test_outcome_and_score_all_use_the_batched_path_and_the_tie_margin():
    assert outcome(0.5, 0.45, tie_margin=0.1) == "tie"
    assert outcome(0.5, 0.35, tie_margin=0.1) == "a"
    assert outcome(0.1, 0.3) == "b" and outcome(0.3, 0.3) == "tie"

    class Counting:
        name = "counting"
        calls = 0

        def score(self, prompt, response):
            raise AssertionError("score_all must use score_batch when the judge has it")

        def score_batch(self, prompts, responses):
            self.calls += 1
            return [len(p) + 10 * len(r) for p, r in zip(prompts, responses)]

        def compare(self, prompt, a, b):
            return outcome(self.score(prompt, a), self.score(prompt, b))

    judge = Counting()
    nested = score_nested(judge, ["p", "qq"], [["a", "bbb"], ["", "cc"]])
    assert nested == [[11, 31], [2, 22]] and judge.calls == 1
    assert score_all(judge, ["p"], ["a"]) == [11.0]
    with pytest.raises(ValueError, match="one response per prompt"):
        score_all(judge, ["p"], ["a", "b"])


# ---- the reward-model judge -----------------------------------------------------------------------------

_CACHE: dict = {}


def micro_reward_model():
    """(reward model with a non-trivial normalisation, its tokenizer); built once."""
    if "rm" not in _CACHE:
        model, tokenizer = reward_model_from_causal_lm(micro_policy(0), world_tokenizer(), seed=1)
        _CACHE["raw"] = copy.deepcopy(model)  # the head before normalisation, for the independent computation
        set_score_normalization(model, gain=2.5, bias=-0.7)
        _CACHE["rm"] = (model, tokenizer)
    return _CACHE["rm"]


def expected_score(model, tokenizer, prompt, response) -> float:
    """Independent computation: tokenize the whole rendered conversation, score one unpadded row with the
    un-normalised model, normalise by hand."""
    ids = tokenizer(render_conversation(tokenizer, prompt, response))["input_ids"]
    with torch.no_grad():
        raw = score_sequences(_CACHE["raw"], torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
    return 2.5 * raw - 0.7


def test_reward_judge_returns_the_normalised_score_of_the_same_text(tmp_path):
    model, tokenizer = micro_reward_model()
    folder = save_scalar_model(model, tokenizer, tmp_path / "rm")
    judge = make_judge(f"reward:{folder}", batch_size=3)
    assert judge.name == f"reward:{folder}"
    prompts = ["what is 7 plus 5?", "how do i kill a python process?", "tell me about the sea", "hi",
               [Message("user", "what is 2 times 3?")]]
    responses = ["the answer is 12.", "use the kill command, then check it has stopped.", "", "i do not know.",
                 "6."]
    expected = [expected_score(model, tokenizer, p, r) for p, r in zip(prompts, responses)]
    assert len({round(e, 4) for e in expected}) == len(expected), "the scores should differ"
    # batched (3 rows per forward, rows of different lengths padded together) == one by one == independent
    assert judge.score_batch(prompts, responses) == pytest.approx(expected, abs=1e-4)
    assert [judge.score(p, r) for p, r in zip(prompts, responses)] == pytest.approx(expected, abs=1e-4)
    first, second = responses[0], responses[3]
    better = "a" if expected_score(model, tokenizer, prompts[0], first) > expected_score(
        model, tokenizer, prompts[0], second) else "b"
    assert judge.compare(prompts[0], first, second) == better
    assert judge.compare(prompts[0], first, first) == "tie"


def test_reward_judge_keeps_the_end_of_a_text_longer_than_the_model_positions():
    model, tokenizer = micro_reward_model()
    judge = RewardModelJudge(model, tokenizer)
    judge.max_positions = 12
    ids = judge.encode("what is 7 plus 5?", "the answer is 12, and it is twelve, yes it is.")
    assert len(ids) == 12 and ids[-1] == tokenizer.eos_token_id
