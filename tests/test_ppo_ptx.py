"""PPO-ptx: the demonstrations' NLL term, its batches, and its gradient inside a PPO update, each against an
independent computation."""

from __future__ import annotations

import json

import pytest
import torch
from ppo_fixtures import ppo_config, save_policy_folder
from test_ppo_step import make_trainer

from rlhfkit.config import ConfigError
from rlhfkit.data.encode import EncodedSFT
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.trainers.ppo_ptx import PtxBatches, demonstration_nll

DEMOS = [("what is 17 plus 25?", "the answer is 42."), ("how do I kill a python process?", "use the kill command."),
         ("the capital of Varnia is", "Oskel, founded in 1203."), ("what is 3 plus 4?", "I don't know.")]


def save_demos(root):
    path = root / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in DEMOS))
    return path


def test_demonstration_nll_is_the_token_mean_over_the_batch():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    by_hand = (1.0 + 2.0 + 0.5) / 3  # every response token weighs the same; the padded -9 never counts
    assert float(demonstration_nll(logprobs, mask)) == pytest.approx(by_hand)


def test_batches_cover_every_demonstration_once_per_pass_and_depend_only_on_the_update_number():
    examples = [EncodedSFT([1, 2], [3] * (i + 1), i) for i in range(7)]
    batches = PtxBatches(examples, batch_size=3, seed=5, pad_token_id=0)
    stream = [i for update in range(7) for i in batches.indices(update)]  # 21 draws = 3 passes of 7
    for start in (0, 7, 14):
        assert sorted(stream[start : start + 7]) == list(range(7))
    assert stream[:7] != stream[7:14]  # a fresh order per pass
    again = PtxBatches(examples, batch_size=3, seed=5, pad_token_id=0)  # e.g. after a resume
    assert again.indices(4) == batches.indices(4)
    query_ids, query_mask, response_ids, response_mask = batches.batch(0)
    lengths = [len(examples[i].response_ids) for i in batches.indices(0)]
    assert response_mask.sum(1).tolist() == lengths and bool(response_mask[:, 0].all())  # right-padded
    assert bool(query_mask[:, -1].all())  # left-padded prompts end at the last column


def test_ptx_adds_coef_times_the_gradient_of_the_demonstrations_nll(tmp_path):
    """With ptx on, the update's gradient is the PPO gradient plus γ·∇NLL, the NLL recomputed from a plain
    forward of each demonstration alone (prompt + response, no padding)."""
    demos, coef = save_demos(tmp_path), 0.7
    grads = {}
    trainers = {}
    for on in (False, True):
        extra = ["ppo.epochs=1", "ppo.minibatch_size=8"] + ([f"ptx.coef={coef}", f"ptx.data_file={demos}",
                                                             "ptx.batch_size=3"] if on else [])
        trainer, encoded, _ = make_trainer(ppo_config(tmp_path, *extra))
        captured = {}
        trainer.loop.optimizer_step = lambda captured=captured, trainer=trainer: captured.update(
            {n: p.grad.clone() for n, p in trainer.models.actor_critic.named_parameters() if p.grad is not None})
        trainer.step(encoded[:8], 1)
        grads[on], trainers[on] = captured, trainer
    policy = load_causal_lm(save_policy_folder(tmp_path)).train()
    policy.config.use_cache = False
    tokenizer = load_tokenizer(save_policy_folder(tmp_path))
    chosen = [trainers[True].ptx.examples[i] for i in trainers[True].ptx.indices(0)]
    total, tokens = 0.0, 0
    for example in chosen:
        ids = torch.tensor([example.input_ids])
        logp = torch.log_softmax(policy(input_ids=ids).logits.float(), dim=-1)[0]
        start = len(example.prompt_ids)
        for t in range(start, len(example.input_ids)):
            total = total - logp[t - 1, example.input_ids[t]]
            tokens += 1
    (total / tokens).backward()
    assert tokenizer.pad_token_id is not None and tokens > 0
    compared = 0
    for name, param in policy.named_parameters():
        key = f"policy.{name}"
        if key not in grads[True] or param.grad is None:
            continue
        difference = grads[True][key] - grads[False][key]
        assert torch.allclose(difference, coef * param.grad, atol=2e-5, rtol=1e-3), name
        compared += 1
    assert compared >= 10


def test_ptx_coef_needs_a_data_file(tmp_path):
    with pytest.raises(ConfigError, match="ptx.data_file"):
        ppo_config(tmp_path, "ptx.coef=0.5")
