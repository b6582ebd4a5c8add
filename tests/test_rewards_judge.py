"""The LM-judge reward source (``rewards: [{judge: "lm:DIR"}]``): the judge's probability of "Yes", checked against a
forward pass by hand; its config checks; a GRPO step scoring its responses with it (micro models, no download)."""

from __future__ import annotations

import math

import pytest
import torch
from stage_helpers import model_dir
from test_grpo import grpo_config

from rlhfkit.config import ConfigError
from rlhfkit.data import encode_pair
from rlhfkit.judges.lm_judge import SCORE_QUESTION, render_text
from rlhfkit.models.load import load_tokenizer
from rlhfkit.rewards.judge import LMJudgeReward, yes_probability
from rlhfkit.rewards.sources import RewardSourceConfig

torch.set_num_threads(1)

PROMPTS = ["what is the colour of the cat?", "is the sun yellow?", "what is 3 plus 4?", "kill the process"]
RESPONSES = ["the cat is red.", "no, the sun is white.", "7", "I can't help with that."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("judge_reward"), seed=3)


@pytest.fixture(scope="module")
def by_hand(folder):
    """π(Yes) / (π(Yes) + π(No)) after SCORE_QUESTION: plain transformers, one sequence per forward, float64
    log-softmax by hand."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(folder)

    def probability(prompt: str, response: str) -> float:
        question = SCORE_QUESTION.format(prompt=prompt, response=response)
        logprob = {}
        for answer in ("Yes", "No"):
            prompt_ids, reply_ids = encode_pair(tokenizer, question, answer)
            if reply_ids[-1] == tokenizer.eos_token_id:
                reply_ids = reply_ids[:-1]  # the answer, not the end of the turn
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + reply_ids])).logits[0]  # (T, V)
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            logprob[answer] = sum(float(log_probs[len(prompt_ids) + k - 1, token]) for k, token in enumerate(reply_ids))
        yes, no = math.exp(logprob["Yes"]), math.exp(logprob["No"])
        return yes / (yes + no)

    return probability


def test_the_score_is_the_judges_probability_of_yes(folder, by_hand):
    source = LMJudgeReward.from_spec(f"lm:{folder}", batch_size=3)  # batches of 3 rows: padding must not matter
    scores = source(PROMPTS, RESPONSES, answer=[None] * 4)  # other columns are ignored
    expected = [by_hand(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert scores == pytest.approx(expected, rel=1e-4)  # a random micro judge says "Yes" with p ≈ 0.002
    assert all(0 < s < 1 for s in scores) and max(scores) / min(scores) > 1.01  # it reads the response
    assert not any(p.requires_grad for p in source.model.parameters())


def test_yes_probability_is_the_logistic_without_overflow():
    assert yes_probability(0.0) == 0.5
    assert yes_probability(math.log(3)) == pytest.approx(0.75)
    assert yes_probability(-math.log(3)) == pytest.approx(0.25)
    assert yes_probability(800.0) == 1.0 and yes_probability(-800.0) == 0.0


@pytest.mark.parametrize(("fields", "message"), [
    ({"judge": "gold"}, "rewards: unknown judge 'gold'; valid: lm:DIR"),
    ({"judge": "lm:"}, "rewards: judge lm:DIR needs the causal-LM folder after 'lm:'"),
    ({"judge": "lm:x", "function": "a:b"}, "exactly one of function, reward_model and judge"),
])
def test_a_bad_judge_source_is_one_sentence_naming_it(fields, message):
    with pytest.raises(ConfigError, match=message):
        RewardSourceConfig(**fields).validate()
    assert RewardSourceConfig(judge="lm:x").display_name == "judge"


def test_a_grpo_step_scores_its_responses_with_the_judge(tmp_path, folder, by_hand):
    """The judge (its own tokenizer) reads each response as text; the step's scores are weight × its probability
    of "Yes" for exactly the texts the policy wrote, and reward/judge/mean their mean."""
    from rlhfkit.rollout.score import assistant_contents, response_texts
    from rlhfkit.trainers import ppo
    from rlhfkit.trainers.critic_free import build_online_models
    from rlhfkit.trainers.ppo import PPOTrainer, SamplingRNG, load_prompts, make_kl_controller

    try:
        from ppo_fixtures import FakeLoop
    except ImportError:
        from tests.ppo_fixtures import FakeLoop

    cfg = grpo_config(tmp_path, "kl.init_coef=0", "ppo.minibatch_size=16",
                      f'rewards=[{{name: judge, judge: "lm:{folder}", weight: 2.0}}]')
    models = build_online_models(cfg)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
    trainer = PPOTrainer(cfg, models, FakeLoop(models.actor_critic, lr=1e-3), make_kl_controller(cfg.kl),
                         SamplingRNG(0), prompts, None, ([r.fields for r in rows], []))
    metrics = trainer.step(encoded[:4], 1)
    rollout = trainer.last_rollout
    shown = [prompts[e.index] for e in encoded[:4] for _ in range(cfg.rollout.n)]
    texts = assistant_contents(models.tokenizer, shown,
                               response_texts(models.tokenizer, rollout, models.eos_token_ids), cfg.data.template)
    expected = [by_hand(render_text(p), t) for p, t in zip(shown, texts)]
    assert rollout.scores.tolist() == pytest.approx([2.0 * e for e in expected], rel=1e-4)
    assert metrics["reward/judge/mean"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
