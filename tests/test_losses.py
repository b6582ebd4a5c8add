"""rlhfkit.losses (SFT, Bradley–Terry, KL, rewards, GAE, PPO) against independent computations: hand-worked numbers, Python loops, limits,
invariances (STYLE.md item 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.losses import (
    KL_ESTIMATORS,
    bradley_terry_loss,
    gae,
    kl_penalty,
    kl_penalty_k1,
    kl_penalty_k2,
    kl_penalty_k3,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    sft_nll,
)
from rlhfkit.ops import masked_mean, masked_sum


def softplus(x):
    """−log σ(x) = log(1 + e^{−x}), the reference for every logistic loss below."""
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- SFT


def test_sft_nll_matches_cross_entropy_per_token():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=generator)
    labels = torch.randint(0, 7, (3, 5), generator=generator)
    labels[0, :2] = -100  # prompt
    labels[1, 3:] = -100  # padding
    labels[2, :] = -100  # nothing to learn
    out = sft_nll(logits, labels)
    per_token = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="none").view(3, 5)
    for row in range(3):
        valid = [t for t in range(5) if labels[row, t] != -100]
        expected_sum = sum(per_token[row, t].item() for t in valid)
        assert out.nll_sum[row].item() == pytest.approx(expected_sum, rel=1e-5)
        assert out.token_count[row].item() == len(valid)
        expected_mean = expected_sum / len(valid) if valid else 0.0
        assert out.nll_mean[row].item() == pytest.approx(expected_mean, rel=1e-5)


def test_sft_nll_token_weighted_gradient_accumulation_equals_full_batch():
    """Two micro-batches, each ``nll_sum.sum() / total tokens``, give the full batch's gradient."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(4, 5, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 6, (4, 5), generator=generator)
    labels[0, 1:] = -100  # very ragged token counts make a plain mean of means wrong
    labels[3, 4:] = -100

    def loss_over(rows, total_tokens):
        out = sft_nll(features[rows] @ weights, labels[rows])
        return out.nll_sum.sum() / total_tokens

    total_tokens = (labels != -100).sum()
    (full_grad,) = torch.autograd.grad(loss_over(slice(0, 4), total_tokens), weights)
    accumulated = sum(
        torch.autograd.grad(loss_over(rows, total_tokens), weights)[0] for rows in (slice(0, 2), slice(2, 4))
    )
    torch.testing.assert_close(accumulated, full_grad)
    # The mean of per-micro-batch token means is a different (wrong) estimator here.
    halves = [sft_nll(features[r] @ weights, labels[r]) for r in (slice(0, 2), slice(2, 4))]
    mean_of_means = sum(h.nll_sum.sum() / h.token_count.sum() for h in halves) / 2
    assert not torch.isclose(mean_of_means, loss_over(slice(0, 4), total_tokens))


# ----------------------------------------------------------------------------- Bradley–Terry


def test_bradley_terry_hand_worked():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 0.0, 3.0])
    out = bradley_terry_loss(chosen, rejected)
    expected = [softplus(1.0), math.log(2.0), softplus(-2.0)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.accuracies.tolist() == [1.0, 0.5, 0.0]


def test_bradley_terry_margin_and_stability():
    out = bradley_terry_loss(
        torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1000.0]), margin=torch.tensor([0.5, 0.0])
    )
    assert out.losses[0].item() == pytest.approx(softplus(0.5), rel=1e-6)
    assert out.losses[1].item() == pytest.approx(1000.0)  # −log σ(−1000) without overflow


def test_bradley_terry_gradient_raises_chosen_lowers_rejected():
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([0.1], requires_grad=True)
    bradley_terry_loss(chosen, rejected).losses.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_worked():
    logprobs, ref_logprobs = torch.tensor([-1.0]), torch.tensor([-3.0])  # log r = −2
    assert kl_penalty_k1(logprobs, ref_logprobs).item() == pytest.approx(2.0)
    assert kl_penalty_k2(logprobs, ref_logprobs).item() == pytest.approx(2.0)
    assert kl_penalty_k3(logprobs, ref_logprobs).item() == pytest.approx(math.exp(-2) - 1 + 2)
    assert kl_penalty("k3", logprobs, ref_logprobs).item() == pytest.approx(math.exp(-2) + 1)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty("k4", logprobs, ref_logprobs)


@pytest.mark.parametrize(
    ("policy_probs", "ref_probs", "estimators"),
    [
        ([0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], ("k1", "k3")),  # far apart: k2 is biased
        ([0.3, 0.3, 0.2, 0.2], [0.25, 0.3, 0.25, 0.2], ("k1", "k2", "k3")),  # close: all agree
    ],
)
def test_kl_estimators_converge_to_true_kl(policy_probs, ref_probs, estimators):
    policy, ref = (
        torch.tensor(policy_probs, dtype=torch.float64),
        torch.tensor(ref_probs, dtype=torch.float64),
    )
    true_kl = float((policy * (policy / ref).log()).sum())
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(policy, 200_000, replacement=True, generator=generator)  # a ~ π_θ
    logprobs, ref_logprobs = policy.log()[samples], ref.log()[samples]
    for name in estimators:
        estimate = kl_penalty(name, logprobs, ref_logprobs).mean().item()
        assert estimate == pytest.approx(true_kl, rel=0.05, abs=2e-3), name


def test_k3_and_k2_are_never_negative():
    generator = torch.Generator().manual_seed(1)
    logprobs = torch.randn(10_000, generator=generator) * 5
    ref_logprobs = torch.randn(10_000, generator=generator) * 5
    ref_logprobs[:3] = logprobs[:3] + torch.tensor([1e-7, -1e-7, 0.0])  # r ≈ 1
    assert (kl_penalty_k3(logprobs, ref_logprobs) >= 0).all()
    assert (kl_penalty_k2(logprobs, ref_logprobs) >= 0).all()
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


# ----------------------------------------------------------------------------- rewards and GAE


def test_per_token_rewards_hand_worked():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 9.0, 9.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -9.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = per_token_rewards(torch.tensor([10.0, 20.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(out.kl, torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    expected_rewards = torch.tensor([[-0.05, 0.0, 0.1 + 10.0], [-0.1 + 20.0, 0.0, 0.0]])
    torch.testing.assert_close(out.rewards, expected_rewards)


def test_per_token_rewards_refuses_empty_response_and_left_padding():
    ones = torch.ones(2, 3)
    with pytest.raises(ValueError, match="no valid token"):
        per_token_rewards(torch.ones(2), ones, ones, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="right-padded"):
        per_token_rewards(torch.ones(2), ones, ones, torch.tensor([[1, 0, 0], [0, 1, 1]]), 0.1)


def gae_reference(rewards, values, lengths, gamma, lam):
    """Plain-Python GAE: A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t, V past the end = 0."""
    advantages = [[0.0] * len(row) for row in rewards]
    for b, length in enumerate(lengths):
        for t in range(length):
            total = 0.0
            for step in range(t, length):
                next_value = values[b][step + 1] if step + 1 < length else 0.0
                delta = rewards[b][step] + gamma * next_value - values[b][step]
                total += (gamma * lam) ** (step - t) * delta
            advantages[b][t] = total
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(0.9, 0.8), (1.0, 0.95), (1.0, 1.0)])
def test_gae_matches_python_double_loop_on_ragged_batch(gamma, lam):
    generator = torch.Generator().manual_seed(2)
    lengths = [6, 3, 1, 0, 5]
    rewards = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    values = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    garbage_rewards = rewards.masked_fill(mask == 0, float("nan"))  # padding must not be read
    garbage_values = values.masked_fill(mask == 0, float("nan"))
    advantages, returns = gae(garbage_rewards, garbage_values, mask, gamma, lam)
    expected = gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(returns, (torch.tensor(expected, dtype=torch.float64) + values) * mask)


def test_gae_with_gamma_lambda_one_is_monte_carlo_return_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[6.0, 5.0, 3.0, 0.0]]
    assert advantages.tolist() == [[5.5, 4.5, 2.5, 0.0]]


def test_gae_rows_are_independent_under_batch_split():
    generator = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in (5, 2, 4, 1)])
    whole = gae(rewards, values, mask, 0.99, 0.95)
    halves = [gae(rewards[r], values[r], mask[r], 0.99, 0.95) for r in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(whole[0], torch.cat([h[0] for h in halves]))
    torch.testing.assert_close(whole[1], torch.cat([h[1] for h in halves]))


# ----------------------------------------------------------------------------- PPO


def test_ppo_policy_loss_clipping_hand_worked():
    # Tokens: (A=+1, ρ=1.5) clipped; (A=−1, ρ=0.5) clipped; (A=+1, ρ=0.5) and (A=−1, ρ=1.5)
    # unclipped (the pessimistic bound is the unclipped term); (A=+1, ρ=1.1) inside the range,
    # where both terms tie and nothing is clipped; then a garbage padding token.
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    old_logprobs = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0, 0.0]])
    logprobs = (old_logprobs + torch.tensor([[*map(math.log, ratios), float("inf")]])).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    out = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=0.2)  # clip_high = clip_low
    assert out.losses.tolist()[0] == pytest.approx([-1.2, 0.8, -0.5, 1.5, -1.1, 0.0])
    assert out.clipfrac.item() == pytest.approx(2 / 5)
    assert (out.clipfrac_low.item(), out.clipfrac_high.item()) == pytest.approx((1 / 5, 1 / 5))  # low: A<0, ρ=0.5; high: A>0, ρ=1.5
    assert out.approxkl.item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in ratios) / 5)
    assert out.ratio_mean.item() == pytest.approx(sum(ratios) / 5)
    assert out.ratio_max.item() == pytest.approx(1.5)
    out.losses.sum().backward()
    # d(−A·ρ)/d log π = −A·ρ where unclipped, 0 where the clip is active or on padding.
    assert logprobs.grad.tolist()[0] == pytest.approx([0.0, 0.0, -0.5, 1.5, -1.1, 0.0])


def test_ppo_policy_loss_batch_split_token_weighting():
    generator = torch.Generator().manual_seed(4)
    logprobs = torch.randn(4, 6, generator=generator) * 0.3
    old_logprobs = torch.randn(4, 6, generator=generator) * 0.3
    advantages = torch.randn(4, 6, generator=generator)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in (6, 1, 3, 5)])
    whole = masked_mean(ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2).losses, mask)
    total_tokens = mask.sum()
    combined = sum(
        masked_sum(ppo_policy_loss(logprobs[r], old_logprobs[r], advantages[r], mask[r], 0.2).losses, mask[r])
        / total_tokens
        for r in (slice(0, 2), slice(2, 4))
    )
    torch.testing.assert_close(combined, whole)


def test_ppo_value_loss_clipping_hand_worked():
    values = torch.tensor([[0.5, 0.1, 1.5, -0.5, 0.5, 3.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.0, 1.4, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, -1.0, 0.1, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    out = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # V=0.5 clipped to 0.2: max(0.25, 0.64) → clipped; V=0.1 inside the range; V=1.5 inside;
    # V=−0.5 clipped to −0.2: max(0.25, 0.64) → clipped; V=0.5 → 0.2: max(0.16, 0.01) → unclipped.
    assert out.losses.tolist()[0] == pytest.approx([0.32, 0.405, 0.125, 0.32, 0.08, 0.0])
    assert out.clipfrac.item() == pytest.approx(2 / 5)
    out.losses.sum().backward()
    # Gradient (V − R) where the unclipped error wins, 0 where the clipped one does or on padding.
    assert values.grad.tolist()[0] == pytest.approx([0.0, -0.9, 0.5, 0.0, 0.4, 0.0])
