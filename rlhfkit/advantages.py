"""Critic-free advantage estimators, as pure functions of per-token rewards (GAE, which needs a critic, is
:func:`rlhfkit.losses.gae`).

Every estimator here has the signature ``fn(rewards, mask, group_size, gamma=1.0, *, sum_over_processes=identity)
-> advantages``:

- ``rewards`` (B, T): per-token rewards of B right-padded responses — the score at the last response token,
  plus ``−β·kl_t`` at every token when the KL penalty is a reward (:func:`rlhfkit.losses.per_token_rewards`);
  0 on padding. A response's *return* is the sum of its rewards.
- ``mask`` (B, T): 1 on response tokens (right-padded); every row has at least one.
- ``group_size`` n: the rows come in B/n consecutive groups of n responses to the same prompt
  (rows ``g·n … g·n + n − 1`` answer prompt g). The group estimators need it; REINFORCE++ ignores it.
- ``sum_over_processes``: adds a small tensor over the training processes (an all-reduce; identity with one).
  Only a statistic of the whole batch needs it (REINFORCE++'s whitening); a group's n rows sit on one process,
  so the group estimators ignore it.
- ``advantages`` (B, T): the same value at every token of a response for the group estimators (an outcome
  reward has one return per response), per-token for REINFORCE++; 0 on padding. Detached: targets only.

The estimators are picked by name from :data:`ADVANTAGE_ESTIMATORS` (:func:`get_advantage_estimator`).
Imports only torch, the standard library and :mod:`rlhfkit.ops`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhfkit.ops import identity, whiten_over_processes


def _checked(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 2 or rewards.shape != mask.shape:
        raise ValueError(f"rewards and mask must both be (B, T), got {tuple(rewards.shape)} and "
                         f"{tuple(mask.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"the batch of {rewards.shape[0]} rows is not made of groups of {group_size}")
    valid = mask.bool()
    if bool((valid.sum(dim=1) == 0).any()):
        raise ValueError("a response has no valid token, so it has no return")
    return valid


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) undiscounted return of each response: Σ_t rewards_t over its valid tokens."""
    valid = mask.bool()
    return torch.where(valid, rewards.detach(), torch.zeros((), dtype=rewards.dtype)).sum(dim=1)


def _broadcast(per_sequence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, per_sequence.unsqueeze(1), torch.zeros((), dtype=per_sequence.dtype))


def grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0, *,
                    scale_by_std: bool = True, eps: float = 1e-6, sum_over_processes: Callable = identity
                    ) -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, DeepSeekMath §4.1.2, Eq. 3 with outcome supervision).

    ``Â_i = (R_i − mean(R_group)) / (std(R_group) + eps)`` at every token of response i, R_i its return and
    the mean and (Bessel-corrected, as TRL and verl use) std over the n responses to the same prompt.
    ``scale_by_std=False`` is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1): no
    division by the std, which otherwise up-weights prompts whose answers are nearly all right or all wrong.
    A group whose rewards are all equal gets advantage 0 (no learning signal). n = 1 gives 0 everywhere.
    ``gamma`` is unused (one outcome per response). (B, T) -> (B, T).
    """
    valid = _checked(rewards, mask, group_size)
    returns = sequence_returns(rewards, mask).view(-1, group_size)  # (G, n)
    # the mean of equal floats can miss them by an ulp, which ÷ (std + eps) would blow up to ~0.1 in float32:
    # an all-equal group is set to exactly 0
    equal = (returns == returns[:, :1]).all(dim=1, keepdim=True)
    centred = torch.where(equal, torch.zeros((), dtype=returns.dtype), returns - returns.mean(dim=1, keepdim=True))
    if scale_by_std and group_size > 1:
        centred = centred / (returns.std(dim=1, keepdim=True) + eps)
    return _broadcast(centred.reshape(-1), valid)


def dr_grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0, *,
                       sum_over_processes: Callable = identity) -> torch.Tensor:
    """Dr. GRPO: :func:`grpo_advantages` with ``scale_by_std=False`` — ``Â_i = R_i − mean(R_group)``."""
    return grpo_advantages(rewards, mask, group_size, gamma, scale_by_std=False)


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0, *,
                    sum_over_processes: Callable = identity) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", Eq. 5).

    ``Â_i = R_i − 1/(n − 1) · Σ_{j ≠ i} R_j`` — each response's baseline is the mean return of the *other*
    n − 1 responses to its prompt, so the baseline does not depend on the response it scores (unbiased).
    Equal to ``n/(n − 1) · (R_i − mean(R_group))``, i.e. n/(n − 1) times Dr. GRPO's advantage; with n = 2
    it is the whole pair difference ``R_1 − R_2`` (and ``R_2 − R_1``), twice the mean-centred value.
    Needs n ≥ 2. (B, T) -> (B, T).
    """
    valid = _checked(rewards, mask, group_size)
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt (rollout.n >= 2)")
    returns = sequence_returns(rewards, mask).view(-1, group_size)  # (G, n)
    others = (returns.sum(dim=1, keepdim=True) - returns) / (group_size - 1)
    equal = (returns == returns[:, :1]).all(dim=1, keepdim=True)  # exactly 0, not an ulp of rounding
    return _broadcast(torch.where(equal, torch.zeros((), dtype=returns.dtype), returns - others).reshape(-1), valid)


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int = 1, gamma: float = 1.0, *,
                            sum_over_processes: Callable = identity) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs", §3).

    The per-token rewards carry the KL penalty (``r_t = −β·kl_t``, plus the score at the last token), the
    return-to-go is ``G_t = Σ_{s ≥ t} γ^{s−t} r_s``, and the advantages are G whitened over every response
    token of the batch (global batch normalisation, no critic and no per-prompt baseline):
    ``Â_t = (G_t − mean(G)) / std(G)``. The batch is every process's rows (``sum_over_processes``), as PPO
    whitens its advantages: per process, each process's returns would get their own scale and 2 processes
    would not train like 1. ``group_size`` is unused. (B, T) -> (B, T).
    """
    valid = _checked(rewards, mask, 1)
    rewards = torch.where(valid, rewards.detach(), torch.zeros((), dtype=rewards.dtype))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):  # padding has reward 0, so it adds nothing to G
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return whiten_over_processes(returns, valid, sum_over_processes)


AdvantageEstimator = Callable[..., torch.Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}

GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
"""The estimators whose baseline is the other responses to the same prompt (they need ``rollout.n`` ≥ 2)."""


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The critic-free estimator called ``name``; an unknown name raises ``ValueError`` listing the valid."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; valid names: {valid}") from None


def equal_reward_groups(scores: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """(B/n,) bool: whether each group's n scores are all equal (max − min ≤ ``atol``) — groups that give
    the group estimators no learning signal (DAPO, Yu et al. 2025, §3.2 "dynamic sampling" filters them)."""
    groups = scores.detach().view(-1, group_size)  # (G, n)
    return groups.max(dim=1).values - groups.min(dim=1).values <= atol


def equal_reward_group_fraction(scores: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """0-d: the share of the B/n groups whose n scores are all equal (:func:`equal_reward_groups`)."""
    return equal_reward_groups(scores, group_size, atol).float().mean()


def informative_rows(scores: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """(B,) float 1/0: 0 on every row of a group whose scores are all equal, 1 elsewhere — the rows
    ``advantage.filter_zero_std_groups`` keeps (the rows come in consecutive groups of ``group_size``)."""
    equal = equal_reward_groups(scores, group_size, atol)  # (G,)
    return (~equal).repeat_interleave(group_size).to(scores.dtype)
