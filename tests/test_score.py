"""Scoring rollouts: the reward model on the policy's ids, or on re-encoded text when the tokenizers differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ppo_fixtures import save_reward_folder, tokenizer
from transformers import AutoModelForSequenceClassification

from rlhfkit.data import PromptRow, encode_prompt
from rlhfkit.data.rows import Message
from rlhfkit.models.reward import load_reward_model
from rlhfkit.rollout.experience import Rollout
from rlhfkit.rollout.generate import left_pad
from rlhfkit.rollout.score import (
    FunctionScorer,
    RewardModelScorer,
    ends_with_eos,
    response_texts,
    same_vocabulary,
)

PROMPTS = ["what is 17 plus 25?", "how do I kill a python process?",
           [Message("system", "Be brief."), Message("user", "the capital of Varnia is")]]
RESPONSES = [" the answer is 42.", " use the kill command", " Oskel, founded in 1203."]
HAS_EOS = [True, False, True]
GAIN, BIAS = 2.0, 0.5


def make_rollout(tok) -> Rollout:
    encoded, _ = encode_prompt(tok, [PromptRow(p) for p in PROMPTS])
    query_ids, query_mask = left_pad([e.prompt_ids for e in encoded], tok.pad_token_id)
    rows = [tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
            for text, eos in zip(RESPONSES, HAS_EOS)]
    width = max(map(len, rows))
    response_ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return Rollout(query_ids, query_mask, response_ids, response_mask, logprobs=torch.zeros(response_ids.shape))


def plain_score(folder, ids: list[int]) -> float:
    """Plain transformers on one unpadded sequence (the gain is folded into its head), plus the score offset
    the folder records."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        score = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
    offset = json.loads((Path(folder) / "rlhfkit_reward.json").read_text())["score_offset"]
    assert offset == pytest.approx(BIAS)
    return score + offset


def messages(prompt, response: str) -> list[dict]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [{"role": m.role, "content": m.content} for m in prompt]
    return turns + [{"role": "assistant", "content": response}]


def test_different_tokenizers_score_the_decoded_text_reencoded(tmp_path):
    policy_tok, reward_tok_b = tokenizer("world"), tokenizer("llama", other=True)
    folder = save_reward_folder(tmp_path, style="llama", other=True, gain=GAIN, bias=BIAS)
    model, reward_tok = load_reward_model(folder)
    assert not same_vocabulary(policy_tok, reward_tok)
    scorer = RewardModelScorer(model, reward_tok, policy_tok)  # retokenize="auto"
    assert scorer.retokenized
    scores = scorer(PROMPTS, make_rollout(policy_tok))
    for i, (prompt, response, eos) in enumerate(zip(PROMPTS, RESPONSES, HAS_EOS)):
        # the world template writes "<|assistant|> " + content: the policy's response starts with that space,
        # the assistant's message does not
        text = reward_tok_b.apply_chat_template(messages(prompt, response[1:]), tokenize=False)
        assert text.endswith(reward_tok_b.eos_token)
        if not eos:  # the policy did not finish this response: the reward model must not see an EOS either
            text = text[: -len(reward_tok_b.eos_token)]
        ids = reward_tok_b(text, add_special_tokens=False)["input_ids"]
        assert ids[0] == reward_tok_b.bos_token_id and ids.count(reward_tok_b.bos_token_id) == 1
        assert float(scores[i]) == pytest.approx(plain_score(folder, ids), abs=1e-5)
    assert len(set(scores.tolist())) == 3


def test_shared_vocabulary_scores_the_policy_ids_directly(tmp_path):
    policy_tok = tokenizer("world")
    folder = save_reward_folder(tmp_path, gain=GAIN, bias=BIAS)
    model, reward_tok = load_reward_model(folder)
    assert same_vocabulary(policy_tok, reward_tok)
    rollout = make_rollout(policy_tok)
    by_ids = RewardModelScorer(model, reward_tok, policy_tok)
    assert not by_ids.retokenized
    scores = by_ids(PROMPTS, rollout)
    for i in range(3):
        ids = rollout.query_ids[i][rollout.query_mask[i].bool()].tolist()
        ids += rollout.response_ids[i][rollout.response_mask[i].bool()].tolist()
        assert float(scores[i]) == pytest.approx(plain_score(folder, ids), abs=1e-5)
    # the text path agrees when the ids are the text's own tokenization
    by_text = RewardModelScorer(model, reward_tok, policy_tok, retokenize="always", batch_size=2)
    assert torch.allclose(by_text(PROMPTS, rollout), scores, atol=1e-5)


def test_retokenize_never_refuses_a_different_vocabulary(tmp_path):
    folder = save_reward_folder(tmp_path, style="llama", other=True)
    model, reward_tok = load_reward_model(folder)
    with pytest.raises(ValueError, match="retokenize=auto or always"):
        RewardModelScorer(model, reward_tok, tokenizer("world"), retokenize="never")


def test_function_scorer_sees_prompt_and_text_without_eos():
    tok = tokenizer("world")
    seen = []

    def judge(prompt, response):
        seen.append((prompt, response))
        return len(response)

    scores = FunctionScorer(judge, tok)(PROMPTS, make_rollout(tok))
    assert [p for p, _ in seen] == PROMPTS
    # byte-level BPE round-trips; the EOS is not text; the template's space before the content is not either
    assert [r for _, r in seen] == [r[1:] for r in RESPONSES]
    assert scores.tolist() == [float(len(r) - 1) for r in RESPONSES]
    with pytest.raises(ValueError, match="2 prompts for a rollout of 3 rows"):
        FunctionScorer(judge, tok)(PROMPTS[:2], make_rollout(tok))


def test_ends_with_eos_and_response_texts():
    tok = tokenizer("world")
    rollout = make_rollout(tok)
    assert ends_with_eos(rollout, tok.eos_token_id).tolist() == HAS_EOS
    assert ends_with_eos(rollout, [tok.eos_token_id + 1]).tolist() == [False, False, False]
    assert response_texts(tok, rollout) == RESPONSES


@pytest.mark.parametrize("style, template, text, content", [
    ("world", None, " the answer", "the answer"),  # "<|assistant|> " + content
    ("gpt2", None, " the answer", "the answer"),  # the default template: "Assistant: " + content
    ("qwen2", None, "the answer", "the answer"),  # ChatML: "<|im_start|>assistant\n" + content, no separator
    ("qwen2", None, " the answer", " the answer"),
    ("world", "raw", " the answer", " the answer"),  # raw: the response is appended as it is
    ("world", None, "the answer", "the answer"),  # no separator generated: kept as it is
])
def test_assistant_contents_removes_the_templates_separator(style, template, text, content):
    from rlhfkit.rollout.score import assistant_contents

    assert assistant_contents(tokenizer(style), ["what is 17 plus 25?"], [text], template) == [content]
