"""One PPO step's pieces against independent computations (micro models, a stand-in for the shared loop)."""

from __future__ import annotations

import pytest
import torch
from ppo_fixtures import FakeLoop, ppo_config, save_policy_folder

from rlhfkit.models.forward import trunk_of
from rlhfkit.models.load import load_causal_lm
from rlhfkit.trainers.kl_control import AdaptiveKLController
from rlhfkit.trainers.ppo import PPOTrainer, SamplingRNG, load_prompts, make_kl_controller
from rlhfkit.trainers.ppo_models import build_ppo_models


def make_trainer(cfg, lr: float = 0.0):
    models = build_ppo_models(cfg)
    loop = FakeLoop(models.actor_critic, lr=lr)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts)
    return trainer, encoded, prompts


def independent_logprobs(model, rollout, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of each response token from a plain forward (positions from the mask). (B, T)."""
    ids, mask = rollout.sequences()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float() / temperature
    next_token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L − 1)
    width = rollout.query_ids.shape[1]
    response = next_token[:, width - 1 :]  # logits at position P − 1 predict the first response token
    return torch.where(rollout.response_mask.bool(), response, torch.zeros(()))


def python_gae(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages


def test_rollout_logprobs_equal_a_fresh_forward_and_ref_logprobs_the_reference(tmp_path):
    other = save_policy_folder(tmp_path, "other_reference", seed=7)
    cfg = ppo_config(tmp_path, f"reference.path={other}", "rollout.temperature=0.7")
    trainer, encoded, prompts = make_trainer(cfg)
    rollout, _ = trainer.collect(encoded[:8], prompts[:8], torch.Generator().manual_seed(3))
    policy = load_causal_lm(cfg.model.path)
    reference = load_causal_lm(other)
    assert torch.allclose(rollout.logprobs, independent_logprobs(policy, rollout, 0.7), atol=1e-5)
    assert torch.allclose(rollout.ref_logprobs, independent_logprobs(reference, rollout, 0.7), atol=1e-5)
    # a different reference really gives other log-probs (so the two checks above are not the same check)
    assert (rollout.logprobs - rollout.ref_logprobs).abs().max() > 1e-2
    # temperature matters: at T = 1 the log-probs differ
    assert not torch.allclose(rollout.logprobs, independent_logprobs(policy, rollout, 1.0), atol=1e-3)


def test_each_model_runs_once_per_rollout_chunk(tmp_path):
    cfg = ppo_config(tmp_path, "rollout.chunk_size=4")
    trainer, encoded, prompts = make_trainer(cfg)
    models = trainer.models
    calls = {"policy": 0, "reference": 0, "value": 0, "reward": 0}
    # scalar-head models run their trunk and head directly (scores at the mask's last token): hook the trunk
    modules = {"policy": models.actor_critic.policy, "reference": models.reference,
               "value": trunk_of(models.actor_critic.value_model), "reward": trunk_of(models.scorer.model)}
    for name, module in modules.items():
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    widths = []
    original = trainer.models.scorer

    def scorer(chunk_prompts, rollout):
        widths.append(rollout.response_ids.shape[1])
        return original(chunk_prompts, rollout)

    trainer.models.scorer = scorer
    trainer.collect(encoded[:8], prompts[:8], torch.Generator().manual_seed(0))
    assert calls["reference"] == calls["value"] == calls["reward"] == 2  # two chunks of 4
    # generation: one forward per decoded token (prefill included); then one for the rollout's logprobs
    assert calls["policy"] == sum(widths) + 2


def test_kl_is_zero_when_policy_is_reference_and_beta_zero_rewards_are_the_score(tmp_path):
    cfg = ppo_config(tmp_path, "kl.init_coef=0.0", "ppo.whiten_advantages=false")
    trainer, encoded, _ = make_trainer(cfg)
    metrics = trainer.step(encoded[:8], 1)
    rollout = trainer.last_rollout
    assert abs(metrics["objective/kl"]) < 1e-6  # policy == reference before the first update
    mask = rollout.response_mask.bool()
    last = rollout.response_lengths - 1
    expected = torch.zeros_like(rollout.rewards)
    expected[torch.arange(len(rollout)), last] = rollout.scores
    assert torch.equal(rollout.rewards, expected)
    assert rollout.scores.abs().min() > 0  # the score is really there
    advantages = python_gae(rollout.rewards, rollout.values, mask, cfg.ppo.gamma, cfg.ppo.lam)
    assert torch.allclose(rollout.advantages, advantages, atol=1e-5)
    assert torch.allclose(rollout.returns, advantages + torch.where(mask, rollout.values, 0.0), atol=1e-5)
    assert metrics["objective/rlhf_reward"] == pytest.approx(metrics["objective/score"], abs=1e-6)


def test_rewards_carry_minus_beta_kl_and_advantages_are_whitened(tmp_path):
    other = save_policy_folder(tmp_path, "other_reference", seed=7)
    cfg = ppo_config(tmp_path, f"reference.path={other}", "kl.init_coef=0.3")
    trainer, encoded, _ = make_trainer(cfg)
    metrics = trainer.step(encoded[:8], 1)
    rollout = trainer.last_rollout
    mask = rollout.response_mask.bool()
    kl = torch.where(mask, rollout.logprobs - rollout.ref_logprobs, 0.0)
    expected = -0.3 * kl
    expected[torch.arange(len(rollout)), rollout.response_lengths - 1] += rollout.scores
    assert torch.allclose(rollout.rewards, expected, atol=1e-6)
    assert metrics["objective/kl"] == pytest.approx(float(kl.sum(1).mean()), abs=1e-5)
    assert metrics["objective/rlhf_reward"] == pytest.approx(
        metrics["objective/score"] - 0.3 * metrics["objective/kl"], abs=1e-5)
    valid = rollout.advantages[mask]
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(valid.std()) == pytest.approx(1.0, abs=1e-3)


def test_first_minibatch_ratio_is_exactly_one_then_moves(tmp_path):
    cfg = ppo_config(tmp_path, "ppo.epochs=2")
    trainer, encoded, _ = make_trainer(cfg, lr=0.5)
    records = []
    update = trainer.update
    trainer.update = lambda minibatch, *rest: records.append(dict(update(minibatch, *rest))) or dict(records[-1])
    trainer.step(encoded[:8], 1)
    assert len(records) == 4 and trainer.loop.updates == 4  # 2 epochs × 8 rollouts / minibatches of 4
    first = records[0]
    assert first["ppo/ratio/max"] == 1.0 and first["ppo/ratio/mean"] == 1.0
    assert first["ppo/policy/approxkl"] == 0.0 and first["ppo/policy/clipfrac"] == 0.0
    assert records[-1]["ppo/ratio/max"] != 1.0  # after updates the policy has moved


def test_micro_batches_accumulate_to_the_same_update(tmp_path):
    grads = {}
    for micro in (None, 1):
        overrides = ["ppo.epochs=1", "ppo.minibatch_size=8"] + ([f"ppo.micro_batch_size={micro}"] if micro else [])
        cfg = ppo_config(tmp_path, *overrides)
        trainer, encoded, _ = make_trainer(cfg)
        captured = {}
        trainer.loop.optimizer_step = lambda captured=captured, trainer=trainer: captured.update(
            {n: p.grad.clone() for n, p in trainer.models.actor_critic.named_parameters() if p.grad is not None})
        trainer.step(encoded[:8], 1)
        grads[micro] = captured
    assert grads[None].keys() == grads[1].keys() and grads[None]
    for name in grads[None]:
        assert torch.allclose(grads[None][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_missing_eos_penalty_replaces_the_score_of_unfinished_responses(tmp_path):
    cfg = ppo_config(tmp_path, "ppo.missing_eos_penalty=-3.0", "rollout.max_new_tokens=3")
    trainer, encoded, prompts = make_trainer(cfg)
    rollout, extras = trainer.collect(encoded[:8], prompts[:8], torch.Generator().manual_seed(0))
    ended = extras["ended_with_eos"]
    assert (~ended).any()  # 3 tokens from a random micro model: most responses do not end
    assert torch.equal(rollout.scores[~ended], torch.full_like(rollout.scores[~ended], -3.0))
    assert torch.equal(rollout.scores[ended], extras["rm_scores"][ended])
    assert (extras["rm_scores"][~ended] != -3.0).all()


def test_adaptive_controller_moves_beta_towards_target(tmp_path):
    other = save_policy_folder(tmp_path, "other_reference", seed=7)
    # temperature 0.3: the two random references differ by a KL of 0.8-2.6 nats a sequence over sampling seeds;
    # at 0.7 it is 0-0.3, so one draw of 8 rollouts could land below the target (-0.01 with the exact sampler)
    cfg = ppo_config(tmp_path, f"reference.path={other}", "kl.controller=adaptive", "kl.target=0.01",
                     "kl.horizon=100", "rollout.temperature=0.3")
    trainer, encoded, _ = make_trainer(cfg)
    assert isinstance(trainer.kl_controller, AdaptiveKLController)
    metrics = trainer.step(encoded[:8], 1)
    assert metrics["objective/kl"] > 0.01
    assert metrics["objective/kl_coef"] == 0.15  # β used for this rollout
    assert trainer.kl_controller.value == pytest.approx(0.15 * (1 + 0.2 * 8 / 100))  # error clipped at +0.2


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path):
    cfg = ppo_config(tmp_path, "lora.enabled=true", "lora.r=4", "ppo.epochs=2")
    trainer, encoded, _ = make_trainer(cfg, lr=0.5)
    assert trainer.models.reference is None  # no second copy of the policy
    trainer.step(encoded[:8], 1)
    trainer.step(encoded[8:16], 2)
    rollout = trainer.last_rollout
    ids = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
    ref = trainer.models.reference_logprobs(*ids, cfg.rollout.temperature)
    frozen_copy = independent_logprobs(load_causal_lm(cfg.model.path), rollout, cfg.rollout.temperature)
    assert torch.allclose(ref, frozen_copy, atol=1e-5)
    with torch.no_grad():
        current, _, _ = trainer.models.actor_critic(*ids, cfg.rollout.temperature)
    assert (current - ref).abs().max() > 1e-3  # the adapters did change the policy


def test_value_head_option_trains_the_head(tmp_path):
    cfg = ppo_config(tmp_path, "value_model.kind=head")
    trainer, encoded, _ = make_trainer(cfg, lr=0.5)
    head = trainer.models.actor_critic.policy.value_head
    assert trainer.models.actor_critic.value_model is None and float(head.weight.detach().abs().sum()) == 0.0
    metrics = trainer.step(encoded[:8], 1)
    assert metrics["ppo/val/mean"] == 0.0  # zero-initialised head (lm-human-preferences)
    assert float(head.weight.detach().abs().sum()) > 0.0


@pytest.mark.parametrize("kind", ["separate", "head"])
def test_old_logprobs_from_sampling_skip_the_policy_forward_and_match_it(tmp_path, kind):
    other = save_policy_folder(tmp_path, "other_reference", seed=7)
    cfg = ppo_config(tmp_path, f"reference.path={other}", "rollout.temperature=0.7", "rollout.old_logprobs=sampling",
                     f"value_model.kind={kind}", "value_model.head_init_std=0.5", "ppo.epochs=2")
    trainer, encoded, prompts = make_trainer(cfg)
    actor_critic = trainer.models.actor_critic
    calls = []
    actor_critic.language_model.register_forward_hook(lambda *_: calls.append(1))
    rollout, extras = trainer.collect(encoded[:8], prompts[:8], torch.Generator().manual_seed(3))
    assert len(calls) == rollout.response_ids.shape[1]  # the sampling steps only: no forward after sampling
    ids = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
    with torch.no_grad():  # what the default (old_logprobs=forward) computes with one more forward
        logprobs, entropy, values = actor_critic(*ids, 0.7, with_entropy=True)
    mask = rollout.response_mask.bool()
    assert torch.allclose(rollout.logprobs, logprobs, atol=1e-5)
    assert torch.allclose(rollout.values, values, atol=1e-5) and values[mask].abs().min() > 0  # real values
    assert torch.allclose(extras["entropy"], (entropy * mask).sum(1), atol=1e-4)
    reference = load_causal_lm(other)
    assert torch.allclose(rollout.ref_logprobs, independent_logprobs(reference, rollout, 0.7), atol=1e-5)
    # scored in length-sorted groups (minibatches of 4, prompts of several lengths), back in row order
    assert len(set(rollout.query_mask.sum(1).tolist())) > 2
    assert torch.allclose(extras["rm_scores"], trainer.models.scorer(prompts[:8], rollout), atol=1e-5)
    # the PPO step runs on it, and its first ratio is 1 up to float rounding
    records = []
    update = trainer.update
    trainer.update = lambda minibatch, *rest: records.append(dict(update(minibatch, *rest))) or dict(records[-1])
    trainer.step(encoded[:8], 1)
    assert records[0]["ppo/ratio/max"] == pytest.approx(1.0, abs=1e-4)


def test_attention_kernel_reaches_all_four_models_and_rollouts_match_a_default_forward(tmp_path):
    """model.attn_implementation=eager: policy, reference, reward and value models all run eager attention,
    and the rollout's log-probs still equal a plain forward of the policy with transformers' default kernel."""
    cfg = ppo_config(tmp_path, "model.attn_implementation=eager", "rollout.temperature=0.7")
    trainer, encoded, prompts = make_trainer(cfg)
    models = trainer.models
    loaded = {"policy": models.actor_critic.language_model, "reference": models.reference,
              "reward": models.scorer.model, "value": models.actor_critic.value_model}
    for name, model in loaded.items():
        assert model.config._attn_implementation == "eager", name
    rollout, _ = trainer.collect(encoded[:8], prompts[:8], torch.Generator().manual_seed(3))
    default_kernel = load_causal_lm(cfg.model.path)
    assert default_kernel.config._attn_implementation == "sdpa"
    assert torch.allclose(rollout.logprobs, independent_logprobs(default_kernel, rollout, 0.7), atol=1e-5)
    assert torch.allclose(rollout.ref_logprobs, independent_logprobs(default_kernel, rollout, 0.7), atol=1e-5)


def test_whitening_over_processes_is_masked_whiten_in_one_process_and_pools_the_processes_rows():
    from rlhfkit.ops import masked_whiten, whiten_over_processes

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=generator) * 3 + 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(whiten_over_processes(x, mask), masked_whiten(x, mask), rtol=1e-6, atol=1e-6)
    # two "processes" (threads) holding rows 0-2 and 3-5, joined by an all-reduce that sums their tensors
    import threading

    barrier, slots, results = threading.Barrier(2), {}, {}

    def all_reduce(rank: int):
        def sum_fn(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return sum_fn

    parts = ((x[:3], mask[:3]), (x[3:], mask[3:]))
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, whiten_over_processes(*parts[r],
                                                                                                all_reduce(r))))
               for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(torch.cat([results[0], results[1]]), masked_whiten(x, mask), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(whiten_over_processes(*parts[0]), results[0])  # per process it would differ
