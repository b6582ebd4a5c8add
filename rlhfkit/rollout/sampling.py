"""Choosing the next token from a decoding step's logits: temperature, top-k / top-p, one draw, log-probs.

Used by :func:`rlhfkit.rollout.generate.generate` at every decoding step. The order is fixed: logits ÷
temperature, then top-k, then top-p, then one draw from the given ``torch.Generator`` by
:func:`rlhfkit.ops.sample_categorical` (greedy decoding takes the argmax and draws nothing). The log-probs and
entropies returned alongside are those of softmax(logits / temperature) *before* truncation — the temperature
policy π_T that PPO's importance ratio uses.
"""

from __future__ import annotations

import torch

from rlhfkit.ops import sample_categorical

__all__ = ["filter_logits", "sampling_logprobs", "next_tokens"]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering: excluded tokens get −inf. Shapes: (B, V) → (B, V).

    Top-k keeps the k largest logits (ties at the k-th value are all kept); 0 or ≥ V keeps all.
    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (Holtzman et al.
    2020): a token is kept when the mass of the strictly more likely tokens is < top_p, so the most likely
    token is always kept. Apply after dividing by the temperature: the nucleus is taken in the distribution
    that is sampled.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_logprobs(scaled_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(scaled_logits)[token] per row. Shapes: (B, V), (B,) → (B,) float32.

    ``scaled_logits`` are logits ÷ temperature, before top-k/top-p filtering: this is the temperature policy
    π_T that PPO's importance ratio uses (its old_logprobs are recomputed the same way), and it equals the
    distribution actually sampled from when top_k = 0 and top_p = 1.
    """
    scaled_logits = scaled_logits.float()
    chosen = scaled_logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(scaled_logits, dim=-1)


def next_tokens(
    logits: torch.Tensor, *, greedy: bool, temperature: float, top_k: int, top_p: float,
    generator: torch.Generator | None, want_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pick one token per row from the last-position logits (B, V); return (B,) tokens, and with
    ``want_logprobs`` the (B,) log-probabilities and entropies of softmax(logits / temperature)."""
    logits = logits.float()
    scaled = logits / temperature if temperature != 1.0 else logits
    if greedy:
        # argmax of the raw logits, as model.generate(do_sample=False) does (temperature cannot change it)
        tokens = logits.argmax(dim=-1)
    else:
        tokens = sample_categorical(filter_logits(scaled, top_k, top_p).softmax(dim=-1), generator)
    if not want_logprobs:
        return tokens, None, None
    log_normalizer = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, 1)
    logprobs = scaled.gather(-1, tokens.unsqueeze(-1)) - log_normalizer  # as `sampling_logprobs`, bit for bit
    # H = −Σ p log p = logsumexp(s) − Σ p·s, with p = softmax(s) = exp(s − logsumexp(s)) of the scaled logits s
    entropy = log_normalizer - ((scaled - log_normalizer).exp_() * scaled).sum(dim=-1, keepdim=True)
    return tokens, logprobs.squeeze(-1), entropy.squeeze(-1)
