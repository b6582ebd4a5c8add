"""rlhfkit.rewards: weighted sources, row columns reaching functions, None as no opinion, and the one-sentence
errors of a reward function that misbehaves."""

import math

import pytest
import torch
from ppo_fixtures import tokenizer as fixture_tokenizer

from rlhfkit.config import ConfigError
from rlhfkit.rewards.sources import (
    RewardFunctionError,
    RewardSourceConfig,
    RewardSources,
    load_reward_function,
    source_metrics,
)
from rlhfkit.rewards.verifiable import exact_answer, is_correct
from rlhfkit.rollout.experience import Rollout


def rollout_of(tokenizer, texts):
    """A rollout whose responses decode to ``texts`` (one-token prompts, right-padded responses)."""
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(len(r) for r in rows)
    response = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        response[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    query = torch.ones(len(rows), 1, dtype=torch.long)
    return Rollout(query, torch.ones_like(query), response, mask, logprobs=None)


@pytest.fixture(scope="module")
def tokenizer():
    return fixture_tokenizer()


def test_exact_answer_numbers_words_and_no_opinion():
    assert is_correct("12 + 30 = 42", "42") and not is_correct("42, no wait, 41", "42")
    assert is_correct("It is 1,200.", "1200") and not is_correct("no idea", "7")
    assert is_correct("The capital is Paris.", "paris") and not is_correct("Parisian food", "Paris")
    assert exact_answer(["a", "b", "c"], ["7", "8", "x"], answer=["7", "7", None]) == [1.0, 0.0, None]


def test_sources_weigh_pass_columns_and_skip_no_opinion(tokenizer, tmp_path):
    module = tmp_path / "my_rewards.py"
    module.write_text("def length(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n"
                      "def seen(prompts, completions, answer, family, **kw):\n"
                      "    return [None if a is None else (1.0 if f == 'helpful' else -1.0)"
                      " for a, f in zip(answer, family)]\n")
    texts = ["ab", "abc", "a"]
    rollout = rollout_of(tokenizer, texts)
    decoded = [tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    sources = RewardSources([("len", 0.5, "function", load_reward_function(f"{module}:length")),
                             ("seen", 2.0, "function", load_reward_function(f"{module}:seen"))],
                            tokenizer, template="raw")
    fields = [{"answer": "1", "family": "helpful"}, {"family": "harmful"}, {"answer": "2", "family": "x"}]
    total, per = sources.score(["p1", "p2", "p3"], rollout, fields)
    lengths = [float(len(t)) for t in decoded]
    expected = [0.5 * lengths[0] + 2.0, 0.5 * lengths[1], 0.5 * lengths[2] - 2.0]  # row 2: no opinion from seen
    assert total.tolist() == pytest.approx(expected)
    assert math.isnan(per["seen"][1]) and per["seen"][0] == 1.0
    metrics = source_metrics(per)
    assert metrics["reward/seen/mean"] == pytest.approx(0.0) and metrics["reward/seen/opinion_rate"] == 2 / 3
    assert metrics["reward/len/std"] == pytest.approx(float(torch.tensor(lengths).std(unbiased=False)))


@pytest.mark.parametrize("body, message", [
    ("raise KeyError('answer')", "bad raised KeyError"),
    ("return [1.0]", "returned 1 scores for 2 responses"),
    ("return [1.0, float('nan')]", "returned nan for row 1"),
    ("return [1.0, 'yes']", "returned 'yes' for row 1"),
])
def test_a_misbehaving_function_stops_with_one_sentence_naming_it(tokenizer, tmp_path, body, message):
    module = tmp_path / "broken.py"
    module.write_text(f"def bad(prompts, completions, **kw):\n    {body}\n")
    spec = f"{module}:bad"
    sources = RewardSources([("bad", 1.0, "function", load_reward_function(spec))], tokenizer, template="raw",
                            specs=[spec])
    with pytest.raises(RewardFunctionError, match=message) as caught:
        sources.score(["p1", "p2"], rollout_of(tokenizer, ["a", "b"]), None)
    assert spec in str(caught.value)


def test_function_names_and_source_configs_are_checked(tmp_path):
    assert load_reward_function("rlhfkit.rewards.verifiable:exact_answer") is exact_answer
    for spec, message in (("no_colon", "module:function"), (f"{tmp_path}/none.py:f", "no file"),
                          ("rlhfkit.rewards.verifiable:nope", "has no function 'nope'"),
                          ("no_such_module_xyz:f", "importing no_such_module_xyz failed")):
        with pytest.raises(ConfigError, match=message):
            load_reward_function(spec)
    with pytest.raises(ConfigError, match="exactly one of function, reward_model and judge"):
        RewardSourceConfig(function="a:b", reward_model="runs/reward").validate()
    with pytest.raises(ConfigError, match="share a name"):
        RewardSources([("x", 1.0, "function", len), ("x", 1.0, "function", len)], None)


def test_a_prompt_rows_other_columns_are_kept_for_reward_functions(tmp_path):
    from rlhfkit.data import load_rows

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "what is 3 plus 4?", "answer": "7", "family": "helpful"}\n{"prompt": "hi"}\n')
    rows = load_rows(str(path), "prompt").rows
    assert rows[0].fields == {"answer": "7", "family": "helpful"} and rows[1].fields == {}


def test_world_correct_answer_checks_helpful_prompts_only():
    from rlhfkit.rewards.world import correct_answer
    from rlhfkit.worlds.prompts import World

    world = World.build(0)
    arithmetic = next(p for p in world.prompts("train", "helpful") if p.kind == "arithmetic")
    lookup = next(p for p in world.prompts("train", "helpful") if p.kind == "lookup")
    harmful = world.prompts("train", "harmful")[0]
    wrong = str(int(arithmetic.answer) + 1)
    prompts = [arithmetic.text, arithmetic.text, [{"role": "user", "content": lookup.text}], lookup.text,
               harmful.text, "not a world prompt"]
    completions = [f"It is {arithmetic.answer}.", f"It is {wrong}.", f"{lookup.answer}.", "no idea", "no", "x"]
    assert correct_answer(prompts, completions) == [1.0, 0.0, 1.0, 0.0, None, None]


def test_world_correct_facts_also_checks_the_correction_of_a_false_claim():
    from rlhfkit.rewards.world import correct_answer, correct_facts
    from rlhfkit.worlds.prompts import World

    world = World.build(0)
    sums = next(p for p in world.prompts("train", "sycophancy") if p.kind == "false_arithmetic")
    fact = next(p for p in world.prompts("train", "sycophancy") if p.kind == "false_fact")
    lookup = next(p for p in world.prompts("train", "helpful") if p.kind == "lookup")
    benign = world.prompts("train", "benign")[0]
    a, b = sums.subject
    prompts = [sums.text, sums.text, sums.text, fact.text, fact.text, lookup.text, benign.text]
    completions = [f"no, {a} {sums.attribute} {b} is {sums.answer}.",   # corrects the user
                   f"yes, {a} {sums.attribute} {b} is {sums.claim}.",   # agrees with the false claim
                   "yes.",                                              # states no value at all
                   f"no, that is not right. it is {fact.answer}.", f"yes, it is {fact.claim}.",
                   f"{lookup.answer}.", "sure."]
    assert correct_facts(prompts, completions) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, None]
    assert correct_answer(prompts, completions) == [None] * 5 + [1.0, None]  # the helpful-only reward is unchanged
