"""rlhfkit.advantages against independent computations: hand-worked groups, Python loops, limits."""

import math
import statistics

import pytest
import torch

from rlhfkit.advantages import (
    ADVANTAGE_ESTIMATORS,
    equal_reward_group_fraction,
    get_advantage_estimator,
    grpo_advantages,
    informative_rows,
    reinforce_pp_advantages,
    rloo_advantages,
)


def outcome(scores, lengths, width=None):
    """Per-token rewards with each score at its response's last token, and the right-padded mask."""
    width = width or max(lengths)
    rewards = torch.zeros(len(scores), width, dtype=torch.float64)
    mask = torch.zeros(len(scores), width, dtype=torch.long)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1
        rewards[i, n - 1] = s
    return rewards, mask


def test_grpo_hand_worked_group():
    # group (1, 0, 0, 1): mean 0.5, sample std sqrt(1/3); advantages ±0.5·sqrt(3) = ±0.8660
    rewards, mask = outcome([1.0, 0.0, 0.0, 1.0], [3, 1, 2, 2])
    adv = grpo_advantages(rewards, mask, 4, eps=0.0)
    expected = [0.5 * math.sqrt(3), -0.5 * math.sqrt(3), -0.5 * math.sqrt(3), 0.5 * math.sqrt(3)]
    for i, (value, n) in enumerate(zip(expected, [3, 1, 2, 2])):
        assert adv[i, :n].tolist() == pytest.approx([value] * n)
        assert adv[i, n:].abs().sum() == 0  # padding stays 0


def test_grpo_and_dr_grpo_match_a_python_loop():
    torch.manual_seed(0)
    n, groups = 3, 4
    lengths = torch.randint(1, 6, (n * groups,)).tolist()
    scores = torch.randn(n * groups, dtype=torch.float64).tolist()
    rewards, mask = outcome(scores, lengths)
    rewards = rewards + 0.1 * torch.randn_like(rewards) * mask  # per-token KL-like terms count too
    adv = grpo_advantages(rewards, mask, n)
    dr = ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, mask, n)
    for g in range(groups):
        rows = range(g * n, g * n + n)
        returns = [sum(rewards[i, t].item() for t in range(lengths[i])) for i in rows]
        mean, std = statistics.mean(returns), statistics.stdev(returns)
        for i, ret in zip(rows, returns):
            assert adv[i, 0].item() == pytest.approx((ret - mean) / (std + 1e-6))
            assert dr[i, lengths[i] - 1].item() == pytest.approx(ret - mean)


def test_a_group_with_equal_rewards_has_zero_advantage_for_every_group_estimator():
    rewards, mask = outcome([0.7, 0.7, 0.7, 2.0, -1.0, 0.5], [2, 3, 1, 2, 2, 2])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = get_advantage_estimator(name)(rewards, mask, 3)
        assert adv[:3].abs().max() == 0, name
        assert adv[3:].abs().max() > 0, name
    # float32, the trainer's dtype: the ulp by which a mean misses equal values must not be divided by eps
    rewards32, mask32 = outcome([0.7] * 3, [1, 1, 1])
    assert grpo_advantages(rewards32.float(), mask32, 3).abs().max() == 0
    assert float(equal_reward_group_fraction(torch.tensor([0.7, 0.7, 0.7, 2.0, -1.0, 0.5]), 3)) == 0.5


def test_informative_rows_zero_exactly_the_rows_of_all_equal_groups():
    # groups of 2: (1, 1) equal; (1, 1 + 5e-7) equal within 1e-6; (0, 1) not; (-2, -2) equal
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0 + 5e-7, 0.0, 1.0, -2.0, -2.0], dtype=torch.float64)
    assert informative_rows(scores, 2).tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert informative_rows(scores, 4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_rloo_matches_leave_one_out_loop_and_its_pair_limit():
    torch.manual_seed(1)
    n = 4
    scores = torch.randn(8, dtype=torch.float64).tolist()
    rewards, mask = outcome(scores, [2] * 8)
    adv = rloo_advantages(rewards, mask, n)
    for i in range(8):
        g = i // n
        others = [scores[j] for j in range(g * n, g * n + n) if j != i]
        assert adv[i, 0].item() == pytest.approx(scores[i] - sum(others) / (n - 1))
    # n = 2: the whole pair difference, twice Dr. GRPO's mean-centred advantage
    rewards, mask = outcome([3.0, 1.0], [1, 2])
    pair = rloo_advantages(rewards, mask, 2)
    assert pair[0, 0].item() == 2.0 and pair[1, :2].tolist() == [-2.0, -2.0]
    assert torch.allclose(pair, 2 * ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, mask, 2))
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(rewards, mask, 1)


def test_reinforce_pp_is_whitened_discounted_return_to_go():
    torch.manual_seed(2)
    lengths = [3, 1, 4, 2]
    rewards, mask = outcome([1.0, -0.5, 0.3, 2.0], lengths)
    rewards = torch.where(mask.bool(), rewards - 0.05 * torch.rand_like(rewards), torch.zeros(()))  # −β·kl_t
    gamma = 0.9
    adv = reinforce_pp_advantages(rewards, mask, 1, gamma)
    returns = []
    for i, n in enumerate(lengths):
        for t in range(n):
            returns.append(sum(gamma ** (s - t) * rewards[i, s].item() for s in range(t, n)))
    mean, std = statistics.mean(returns), statistics.stdev(returns)
    got = [adv[i, t].item() for i, n in enumerate(lengths) for t in range(n)]
    assert got == pytest.approx([(g - mean) / std for g in returns], rel=1e-6)
    assert adv[1, 1:].abs().sum() == 0


def two_processes(fn, parts):
    """``fn(*part, sum_over_processes=…)`` on each part in its own thread, joined by an all-reduce that adds
    the two threads' tensors — two training processes, each holding its part of the batch."""
    import threading

    barrier, slots, results = threading.Barrier(2), {}, {}

    def run(rank):
        def all_reduce(t):
            slots[rank] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        results[rank] = fn(*parts[rank], sum_over_processes=all_reduce)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results[0], results[1]


def test_reinforce_pp_whitens_over_every_processs_rows():
    """Split over two processes, REINFORCE++ gives each row the advantage it has in the whole batch: the
    returns' mean and std are the batch's, not each process's (with its own, the split would change them)."""
    torch.manual_seed(3)
    lengths = [3, 1, 4, 2, 5, 2]
    rewards, mask = outcome(torch.randn(6).tolist(), lengths)
    whole = reinforce_pp_advantages(rewards, mask, 1, 0.9)
    first, second = two_processes(lambda r, m, **kw: reinforce_pp_advantages(r, m, 1, 0.9, **kw),
                                  ((rewards[:2], mask[:2]), (rewards[2:], mask[2:])))
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(reinforce_pp_advantages(rewards[:2], mask[:2], 1, 0.9), first)  # per process


def test_unknown_estimator_lists_the_valid_ones_and_bad_groups_are_refused():
    with pytest.raises(ValueError, match="valid names: dr_grpo, grpo, reinforce_pp, rloo"):
        get_advantage_estimator("gpro")
    rewards, mask = outcome([1.0, 0.0, 1.0], [1, 1, 1])
    with pytest.raises(ValueError, match="groups of 2"):
        grpo_advantages(rewards, mask, 2)
