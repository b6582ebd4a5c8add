"""rlhfkit.policy_losses and the asymmetric clip range of PPO's clipped surrogate, against Python loops."""

import math

import pytest
import torch

from rlhfkit.losses import ppo_policy_loss
from rlhfkit.policy_losses import aggregate_loss, k3_kl_loss, loss_normaliser


def batch(seed=0, rows=4, width=5):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(rows, width, generator=g, dtype=torch.float64)
    old = logprobs + 0.4 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    advantages = torch.randn(rows, width, generator=g, dtype=torch.float64)
    lengths = [5, 2, 4, 1][:rows]
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return logprobs, old, advantages, mask, lengths


def test_asymmetric_clip_matches_a_loop_and_counts_each_side():
    logprobs, old, adv, mask, lengths = batch()
    low, high = 0.2, 0.28
    out = ppo_policy_loss(logprobs, old, adv, mask, low, high)
    n_low = n_high = total = 0
    for i, n in enumerate(lengths):
        for t in range(n):
            r, a = math.exp(logprobs[i, t] - old[i, t]), adv[i, t].item()
            expected = max(-a * r, -a * min(max(r, 1 - low), 1 + high))
            assert out.losses[i, t].item() == pytest.approx(expected)
            n_low += a < 0 and r < 1 - low
            n_high += a > 0 and r > 1 + high
            total += 1
        assert out.losses[i, n:].abs().sum() == 0
    assert out.clipfrac_low.item() == pytest.approx(n_low / total)
    assert out.clipfrac_high.item() == pytest.approx(n_high / total)
    assert n_low > 0 and n_high > 0  # the example exercises both sides


def test_symmetric_range_is_ppos_clipped_surrogate_and_clipfrac_counts_the_active_clip():
    logprobs, old, adv, mask, lengths = batch(seed=3)
    ours = ppo_policy_loss(logprobs, old, adv, mask, 0.2, 0.2)
    ppo = ppo_policy_loss(logprobs, old, adv, mask, 0.2)  # clip_high=None: PPO's symmetric range
    assert torch.equal(ours.losses, ppo.losses)
    # clipfrac = low + high = the share of tokens where the clipped term is the larger (PPO's definition)
    active = total = 0
    for i, n in enumerate(lengths):
        for t in range(n):
            r, a = math.exp(logprobs[i, t] - old[i, t]), adv[i, t].item()
            active += -a * min(max(r, 0.8), 1.2) > -a * r
            total += 1
    assert ppo.clipfrac.item() == pytest.approx(active / total) and active > 0
    assert (ppo.clipfrac_low + ppo.clipfrac_high).item() == pytest.approx(ppo.clipfrac.item())


def test_k3_kl_loss_is_grpos_equation_4_and_its_gradient():
    logprobs, _, _, mask, lengths = batch(seed=5)
    ref = logprobs - 0.3
    logprobs = logprobs.clone().requires_grad_(True)
    kl = k3_kl_loss(logprobs, ref, mask)
    for i, n in enumerate(lengths):
        for t in range(n):
            q = math.exp(ref[i, t] - logprobs[i, t].item())  # π_ref/π_θ
            assert kl[i, t].item() == pytest.approx(q - math.log(q) - 1)
    kl.sum().backward()
    # d/dlogπ (e^{ref−logπ} − (ref − logπ) − 1) = 1 − π_ref/π_θ; 0 on padding
    expected = torch.where(mask.bool(), 1 - torch.exp(ref - logprobs.detach()), torch.zeros(()))
    assert torch.allclose(logprobs.grad, expected)


def test_aggregations_match_loops_and_split_exactly_over_micro_batches():
    losses = torch.arange(20, dtype=torch.float64).view(4, 5)
    _, _, _, mask, lengths = batch()
    token = sum(losses[i, t].item() for i, n in enumerate(lengths) for t in range(n)) / sum(lengths)
    sequence = sum(sum(losses[i, t].item() for t in range(n)) / n for i, n in enumerate(lengths)) / len(lengths)
    for mode, expected in (("token_mean", token), ("sequence_mean", sequence)):
        whole = aggregate_loss(losses, mask, mode) / loss_normaliser(mask, mode)
        parts = (aggregate_loss(losses[:1], mask[:1], mode) + aggregate_loss(losses[1:], mask[1:], mode))
        assert whole.item() == pytest.approx(expected)
        assert (parts / loss_normaliser(mask, mode)).item() == pytest.approx(expected)
    assert token != pytest.approx(sequence)  # the two weightings differ on unequal lengths
    with pytest.raises(ValueError, match="valid: token_mean, sequence_mean"):
        aggregate_loss(losses, mask, "seq_mean")


def test_a_row_masked_out_entirely_counts_as_absent():
    """A dropped row (all-zero mask, advantage.filter_zero_std_groups) adds nothing and is not counted: the same
    as the batch without it, under both aggregations."""
    losses = torch.arange(20, dtype=torch.float64).view(4, 5) + 1
    _, _, _, mask, _ = batch()
    dropped = mask.clone()
    dropped[2] = 0
    kept = [0, 1, 3]
    for mode in ("token_mean", "sequence_mean"):
        with_dropped = aggregate_loss(losses, dropped, mode) / loss_normaliser(dropped, mode)
        without = aggregate_loss(losses[kept], mask[kept], mode) / loss_normaliser(mask[kept], mode)
        assert with_dropped.item() == pytest.approx(without.item())
    assert loss_normaliser(dropped, "sequence_mean") == 3 and loss_normaliser(dropped, "token_mean") == 8
