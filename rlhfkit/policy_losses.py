"""The critic-free policy update's loss pieces, as pure functions (PPO's own are in :mod:`rlhfkit.losses`).

- :func:`asymmetric_clip_loss`: PPO's clipped surrogate with separate low and high clip ranges (DAPO's
  "clip-higher"), reporting how often each side clips.
- :func:`k3_kl_loss`: GRPO's KL term, added to the loss instead of to the rewards.
- :func:`aggregate_loss` / :func:`loss_normaliser`: how per-token losses become one number — ``token_mean``
  (every token of the batch weighs the same: DAPO, Dr. GRPO) or ``sequence_mean`` (each response weighs the
  same, its tokens averaged first: the original GRPO objective, DeepSeekMath Eq. 3). Split in two so that
  gradient accumulation over micro-batches gives exactly the loss of the whole minibatch: sum
  ``aggregate_loss`` over the micro-batches and divide by the minibatch's ``loss_normaliser``.

Shapes: per-token tensors (B, T) with a right-padded 0/1 ``mask``. Imports only torch and rlhfkit.ops/losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.losses import kl_penalty_k3
from rlhfkit.ops import masked_mean

LOSS_AGGREGATIONS = ("token_mean", "sequence_mean")


@dataclass(frozen=True)
class ClippedLossOutput:
    """``losses`` (B, T), 0 on padding; detached 0-d diagnostics over valid tokens: ``clipfrac_low`` (share of
    tokens with A < 0 and ρ < 1 − ε_low, where the clip removes the gradient), ``clipfrac_high`` (A > 0 and
    ρ > 1 + ε_high), ``approxkl`` (½·mean (log ρ)²), ``ratio_mean``, ``ratio_max``."""

    losses: torch.Tensor
    clipfrac_low: torch.Tensor
    clipfrac_high: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_max: torch.Tensor


def asymmetric_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_low: float, clip_high: float) -> ClippedLossOutput:
    """Clipped surrogate with an asymmetric range (Yu et al. 2025, DAPO, Eq. 10 "clip-higher").

    ``ρ_t = exp(log π_θ − log π_old)``, ``loss_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε_low, 1 + ε_high))``;
    ``clip_low = clip_high = ε`` is PPO's (Schulman et al. 2017, Eq. 7). A larger ε_high lets unlikely tokens
    with positive advantage grow further before the clip stops them, which DAPO found keeps entropy up.
    All (B, T); no reduction (see :func:`aggregate_loss`).
    """
    if not logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape:
        raise ValueError("logprobs, old_logprobs, advantages and mask must share one (B, T) shape")
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)  # garbage on padding → exp(0)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.where(valid, torch.maximum(unclipped, clipped), zero)
    with torch.no_grad():
        low = (advantages < 0) & (ratio < 1.0 - clip_low)
        high = (advantages > 0) & (ratio > 1.0 + clip_high)
        return ClippedLossOutput(
            losses, masked_mean(low.to(logprobs.dtype), valid), masked_mean(high.to(logprobs.dtype), valid),
            0.5 * masked_mean(log_ratio**2, valid), masked_mean(ratio, valid),
            torch.where(valid, ratio, zero).max())


def k3_kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's per-token KL term (Shao et al. 2024, DeepSeekMath Eq. 4), differentiable in ``logprobs``.

    ``D_t = π_ref/π_θ − log(π_ref/π_θ) − 1`` (Schulman's k3, ≥ 0, unbiased for KL(π_θ ‖ π_ref) on samples of
    π_θ); the loss adds ``β · D_t`` at every token. (B, T), 0 on padding; ``ref_logprobs`` is detached.
    """
    kl = kl_penalty_k3(logprobs, ref_logprobs.detach())
    return torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))


def aggregate_loss(losses: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The un-normalised sum of a (micro-)batch's per-token losses under ``mode`` (0-d).

    ``token_mean``: ``Σ_i Σ_t loss_{i,t}``; ``sequence_mean``: ``Σ_i (1/|o_i|)·Σ_t loss_{i,t}``. Divide the
    sum over a minibatch's micro-batches by :func:`loss_normaliser` of the whole minibatch.
    """
    valid = mask.bool()
    per_token = torch.where(valid, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    if mode == "token_mean":
        return per_token.sum()
    if mode == "sequence_mean":
        return (per_token.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(losses.dtype)).sum()
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")


def loss_normaliser(mask: torch.Tensor, mode: str) -> float:
    """What a minibatch's :func:`aggregate_loss` is divided by: its response tokens (``token_mean``) or its
    responses (``sequence_mean``) — the rows with at least one valid token, so that a row masked out entirely
    (dropped by ``advantage.filter_zero_std_groups``) counts as absent."""
    valid = mask.bool()
    if mode == "token_mean":
        return float(valid.sum())
    if mode == "sequence_mean":
        return float(valid.any(dim=1).sum())
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")
