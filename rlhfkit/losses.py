"""The losses of the RLHF recipe's SFT, reward-model and online RL stages, as pure functions of tensors,
named as in the papers: the SFT NLL, Bradley–Terry, the KL estimators, per-token rewards, GAE and PPO's
clipped policy and value losses. The direct preference losses (DPO and its family, KTO) are in
:mod:`rlhfkit.preference_losses`; the critic-free update's pieces in :mod:`rlhfkit.policy_losses`.

Each function states its equation, the shapes and the reduction. They return per-example (or
per-token) values plus diagnostics and leave the reduction over the batch to the caller, who knows
how the batch was split (see ``docs/losses.md`` for the weights that keep gradient accumulation
exact). Imports only torch, the standard library and :mod:`rlhfkit.ops`.

Vocabulary (STYLE.md item 5): *score* is the reward model's output; *rewards* are per-token
``score − β·KL``; then *values*, *advantages*, *returns*; ``logprobs``, ``ref_logprobs``,
``old_logprobs`` are per-token log-probabilities of the sampled tokens, shape (B, T).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhfkit.ops import IGNORE_INDEX, check_same_shape, logprobs_from_logits, masked_mean, masked_sum

# ----------------------------------------------------------------------------- SFT


@dataclass(frozen=True)
class NLLOutput:
    """Per-example negative log-likelihood. All (B,).

    ``nll_sum``: Σ_t −log p(y_t) over non-ignored tokens; ``token_count``: number of such tokens;
    ``nll_mean``: ``nll_sum / token_count`` (0 for an example with no token).
    """

    nll_sum: torch.Tensor
    token_count: torch.Tensor
    nll_mean: torch.Tensor


def sft_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> NLLOutput:
    """Negative log-likelihood of the labels, per example: ``−Σ_t log p_θ(y_t | y_<t)``.

    Shapes: ``logits`` (B, T, V); ``labels`` (B, T), *aligned* with the logits (``labels[:, t]`` is
    the target of ``logits[:, t]``; use :func:`rlhfkit.ops.shift_labels` on input ids), with
    ``ignore_index`` on prompt and padding positions. Returns (B,) sums, counts and means.

    Reduction: the token-weighted mean ``nll_sum.sum() / token_count.sum()`` weighs every token
    equally. With gradient accumulation over micro-batches, divide each micro-batch's
    ``nll_sum.sum()`` by the token count of the *whole* accumulated batch (not its own): the summed
    gradients then equal the full batch's exactly. Averaging per-micro-batch means does not.
    """
    token_logprobs = logprobs_from_logits(logits, labels, ignore_index=ignore_index)  # (B, T)
    valid = labels != ignore_index
    nll_sum = -masked_sum(token_logprobs, valid, dim=1)
    token_count = valid.sum(dim=1)
    nll_mean = nll_sum / token_count.clamp(min=1).to(nll_sum.dtype)
    return NLLOutput(nll_sum=nll_sum, token_count=token_count, nll_mean=nll_mean)


# ----------------------------------------------------------------------------- reward model


@dataclass(frozen=True)
class BradleyTerryOutput:
    """Per-pair Bradley–Terry loss and accuracy (1 if the chosen scores higher, ½ on a tie). (P,)."""

    losses: torch.Tensor
    accuracies: torch.Tensor


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | float | None = None
) -> BradleyTerryOutput:
    """Bradley–Terry loss of a reward model on preference pairs: ``−log σ(r_w − r_l − m)``.

    Ouyang et al. 2022 (InstructGPT) Eq. 1; the optional margin ``m`` is Touvron et al. 2023
    (Llama 2) Eq. 2. Shapes: scores (P,) for P pairs, margin scalar or (P,). Uses ``logsigmoid``
    (finite for any score gap). Reduction: mean over pairs. InstructGPT keeps the K(K−1)/2 pairs of
    one ranking in one batch and weights each ranking equally, i.e. a mean over its pairs.
    """
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    gap = chosen_scores - rejected_scores
    if margin is not None:
        gap = gap - margin
    losses = -F.logsigmoid(gap)
    score_gap = (chosen_scores - rejected_scores).detach()
    accuracies = (score_gap > 0).to(losses.dtype) + 0.5 * (score_gap == 0).to(losses.dtype)
    return BradleyTerryOutput(losses=losses, accuracies=accuracies)


# ----------------------------------------------------------------------------- KL estimators


def kl_penalty_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = −log r = log π_θ(a) − log π_ref(a), with r = π_ref(a)/π_θ(a), a ~ π_θ.

    Schulman 2020, "Approximating KL divergence". Unbiased for KL(π_θ ‖ π_ref) but high variance and
    negative on some samples. Per token: (B, T) -> (B, T).
    """
    return logprobs - ref_logprobs


def kl_penalty_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)² / 2, r = π_ref(a)/π_θ(a), a ~ π_θ. Biased, low variance, ≥ 0 (Schulman 2020).

    Per token: (B, T) -> (B, T).
    """
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_penalty_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r, r = π_ref(a)/π_θ(a), a ~ π_θ. Unbiased, low variance, ≥ 0 (Schulman 2020).

    Computed as ``expm1(log r) − log r`` for accuracy when r ≈ 1. Per token: (B, T) -> (B, T).
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_penalty_k1,
    "k2": kl_penalty_k2,
    "k3": kl_penalty_k3,
}


def kl_penalty(name: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate ``name`` ∈ {k1, k2, k3} on samples of π_θ. (B, T)."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; valid names: {', '.join(sorted(KL_ESTIMATORS))}")
    return KL_ESTIMATORS[name](logprobs, ref_logprobs)


# ----------------------------------------------------------------------------- PPO


def _check_right_padded(mask: torch.Tensor) -> torch.Tensor:
    valid = mask.bool()
    if valid.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError("mask must be right-padded: 1s for the response tokens, then only 0s")
    return valid


@dataclass(frozen=True)
class PerTokenRewards:
    """``rewards`` (B, T): −β·kl at every response token plus the score at the last one;
    ``kl`` (B, T): the per-token KL estimate. Both 0 on padding."""

    rewards: torch.Tensor
    kl: torch.Tensor


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    kl_estimator: str = "k1",
    *,
    gaps: bool = False,
) -> PerTokenRewards:
    """PPO rewards with a per-token KL penalty (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2).

    ``rewards_t = −β·kl_t + [t = last response token]·score``, ``kl_t`` the ``kl_estimator`` of
    KL(π_θ ‖ π_ref) at token t (default k1 = log π_θ − log π_ref, as in lm-human-preferences).
    Shapes: ``scores`` (B,), ``logprobs`` / ``ref_logprobs`` / ``mask`` (B, T) with a right-padded
    mask; every row needs at least one response token (its score would be lost otherwise).
    ``gaps=True`` accepts a mask with holes — a multi-turn episode's model tokens, the environment's tokens
    between them 0 (``Rollout.action_mask``) — and puts the score at the last 1 of each row.
    Inputs are detached: rewards are targets, never differentiated.
    """
    valid = mask.bool() if gaps else _check_right_padded(mask)
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    lengths = valid.sum(dim=1)  # (B,)
    if scores.shape != lengths.shape:
        raise ValueError(f"scores must be (B,) = {tuple(lengths.shape)}, got {tuple(scores.shape)}")
    if bool((lengths == 0).any()):
        raise ValueError("per_token_rewards: a response has no valid token, so its score has nowhere to go")
    kl = kl_penalty(kl_estimator, logprobs.detach(), ref_logprobs.detach())
    kl = torch.where(valid, kl, torch.zeros((), dtype=kl.dtype))
    rewards = -kl_coef * kl
    # the last valid position: lengths − 1 for a right-padded mask
    last_index = (valid.shape[1] - 1 - valid.flip(1).long().argmax(dim=1)).unsqueeze(1)  # (B, 1)
    rewards = rewards.scatter_add(1, last_index, scores.detach().to(rewards.dtype).unsqueeze(1))
    return PerTokenRewards(rewards=rewards, kl=kl)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float, *, gaps: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) on right-padded responses.

    ``δ_t = r_t + γ·V_{t+1} − V_t`` and ``A_t = δ_t + γλ·A_{t+1}``, where V_{t+1} and A_{t+1} are 0
    after the last response token (the episode ends at EOS: bootstrap value 0). ``returns = A + V``,
    the value targets. Shapes: ``rewards``, ``values``, ``mask`` (B, T) -> ``(advantages, returns)``
    (B, T), both 0 on padding. A Python loop over T, vectorised over B; inputs are detached.
    ``gaps=True`` accepts a mask with holes (a multi-turn episode's ``Rollout.action_mask``: environment tokens
    0): the recursion runs over each row's valid tokens only, in order — t + 1 is the next *model* token, so an
    observation between two model turns is neither a step nor a discount — and holes get A = 0, returns 0.
    """
    valid = mask.bool() if gaps else _check_right_padded(mask)
    check_same_shape(rewards=rewards, values=values, mask=mask)
    # With rewards and values zeroed on padding (replaced, not multiplied: padding may hold nan),
    # every padding position gets δ = 0 and A = 0, so V_{t+1} and A_{t+1} read after the last
    # response token are 0: the bootstrap at EOS needs no special case.
    rewards = torch.where(valid, rewards.detach(), torch.zeros((), dtype=rewards.dtype))
    values = torch.where(valid, values.detach(), torch.zeros((), dtype=values.dtype))
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        if gaps:  # a hole is skipped: it keeps A = 0 and passes the next valid token's V and A through
            here = valid[:, t]
            advantage = torch.where(here, advantage, torch.zeros((), dtype=advantage.dtype))
            advantages[:, t] = advantage
            next_value = torch.where(here, values[:, t], next_value)
            next_advantage = torch.where(here, advantage, next_advantage)
            continue
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    returns = advantages + values
    return advantages, returns


@dataclass(frozen=True)
class PolicyLossOutput:
    """``losses`` (B, T), 0 on padding; diagnostics are detached 0-d tensors over valid tokens:
    ``clipfrac_low`` (share of tokens with A < 0 and ρ < 1 − ε_low, where the clip removes the gradient),
    ``clipfrac_high`` (A > 0 and ρ > 1 + ε_high), ``clipfrac`` (their sum: the share where the clipped term is
    active), ``approxkl`` (0.5·mean of (logprobs − old_logprobs)², the k2 estimate of KL(π_old ‖ π_θ)),
    ``ratio_mean``, ``ratio_max``."""

    losses: torch.Tensor
    clipfrac: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_max: torch.Tensor
    clipfrac_low: torch.Tensor
    clipfrac_high: torch.Tensor


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float | None = None,
) -> PolicyLossOutput:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, Eq. 7), with an optional
    asymmetric range (Yu et al. 2025, DAPO, Eq. 10 "clip-higher").

    ``ρ_t = exp(log π_θ − log π_old)``, ``loss_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε_low, 1 + ε_high))``;
    ``clip_high=None`` is ε_high = ε_low, PPO's symmetric range. A larger ε_high lets unlikely tokens with
    positive advantage grow further before the clip stops them, which DAPO found keeps entropy up.
    Shapes: all (B, T). Reduction: none — PPO takes the mean over valid tokens, ``masked_mean(losses, mask)``
    (for gradient accumulation: ``masked_sum`` over the micro-batch / valid tokens of the whole batch); the
    critic-free estimators aggregate with :func:`rlhfkit.policy_losses.aggregate_loss`.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    clip_high = clip_low if clip_high is None else clip_high
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Zero the log-ratio on padding before exp: garbage there would give inf·0 = nan gradients.
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.where(valid, torch.maximum(unclipped, clipped), zero)
    with torch.no_grad():
        # the clipped term is the larger (the pessimistic bound, with no gradient) exactly on these two sides
        low = masked_mean(((advantages < 0) & (ratio < 1.0 - clip_low)).to(logprobs.dtype), valid)
        high = masked_mean(((advantages > 0) & (ratio > 1.0 + clip_high)).to(logprobs.dtype), valid)
        approxkl = 0.5 * masked_mean(log_ratio**2, valid)
        ratio_mean = masked_mean(ratio, valid)
        ratio_max = torch.where(valid, ratio, zero).max()
    return PolicyLossOutput(losses, low + high, approxkl, ratio_mean, ratio_max, low, high)


@dataclass(frozen=True)
class ValueLossOutput:
    """``losses`` (B, T), 0 on padding; ``clipfrac``: detached share of valid tokens where the
    clipped error is the larger."""

    losses: torch.Tensor
    clipfrac: torch.Tensor


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> ValueLossOutput:
    """PPO's clipped value loss (as in OpenAI baselines ppo2 and lm-human-preferences).

    ``V_clip = V_old + clip(V − V_old, −ε_v, ε_v)``, ``loss_t = ½·max((V − R)², (V_clip − R)²)``.
    Shapes: all (B, T). Reduction: mean over valid tokens, as for :func:`ppo_policy_loss`.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    valid = mask.bool()
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    zero = torch.zeros((), dtype=values.dtype)
    losses = torch.where(valid, 0.5 * torch.maximum(unclipped_error, clipped_error), zero)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).to(values.dtype), valid)
    return ValueLossOutput(losses, clipfrac)
