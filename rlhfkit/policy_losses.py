"""The critic-free policy update's loss pieces, as pure functions. The clipped surrogate itself is PPO's,
:func:`rlhfkit.losses.ppo_policy_loss`, called with separate low and high clip ranges (DAPO's "clip-higher").

- :func:`k3_kl_loss`: GRPO's KL term, added to the loss instead of to the rewards.
- :func:`aggregate_loss` / :func:`loss_normaliser`: how per-token losses become one number — ``token_mean``
  (every token of the batch weighs the same: DAPO, Dr. GRPO) or ``sequence_mean`` (each response weighs the
  same, its tokens averaged first: the original GRPO objective, DeepSeekMath Eq. 3). Split in two so that
  gradient accumulation over micro-batches gives exactly the loss of the whole minibatch: sum
  ``aggregate_loss`` over the micro-batches and divide by the minibatch's ``loss_normaliser``.

Shapes: per-token tensors (B, T) with a right-padded 0/1 ``mask``. Imports only torch and rlhfkit.ops/losses.
"""

from __future__ import annotations

import torch

from rlhfkit.losses import kl_penalty_k3

LOSS_AGGREGATIONS = ("token_mean", "sequence_mean")


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
