"""KL(π ‖ π_ref) in nats per sequence, estimated on responses sampled from π.

The sequence KL is ``KL = E_{y∼π}[log π(y|x) − log π_ref(y|x)]``. By the chain rule it equals
``E_{y∼π}[Σ_t KL_t]`` with the **per-position KL over the whole vocabulary**

    KL_t = Σ_v π(v | x, y_<t) · (log π(v | x, y_<t) − log π_ref(v | x, y_<t)),

because, given the prefix, the expectation of the token's log-ratio over y_t ∼ π is exactly KL_t. So
``Σ_t KL_t`` on a sampled y (our headline, ``nats_per_seq``) is unbiased like the Monte-Carlo estimate
``k1 = Σ_t log π(y_t) − log π_ref(y_t)`` (Schulman 2020; also reported), and has lower variance: it
averages over the token at every position instead of using the one drawn (Rao–Blackwellisation), and is
never negative. A response cut at ``max_new_tokens`` is the KL of the length-limited process, which is
what was sampled. Sums run over response positions (EOS included, padding excluded).

Both models must use one tokenizer (the KL compares next-token distributions id by id):
:func:`check_same_tokenizer` raises a one-sentence error otherwise. The samples must come from π itself
(temperature 1, top-p 1): otherwise neither estimator measures KL(π ‖ π_ref).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from rlhfkit.errors import UserError
from rlhfkit.evaluate.sampling import PolicySamples
from rlhfkit.models.forward import forward_logits
from rlhfkit.models.policy import response_span


class TokenizerMismatchError(UserError):
    """The two models of a KL do not share one tokenizer."""


def token_kl_from_logits(policy_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Full per-position KL ``Σ_v p_v (log p_v − log q_v)``, p = softmax(policy), q = softmax(reference).

    Shapes: (…, V), (…, V) -> (…) float32, ≥ 0 up to rounding (clamped at 0). Computed in float32 from
    log-softmaxes, so a token with p_v ≈ 0 contributes 0 even where q_v ≈ 0.
    """
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(f"policy logits {tuple(policy_logits.shape)} and reference logits "
                         f"{tuple(reference_logits.shape)} differ: the models do not share one vocabulary")
    log_p = torch.log_softmax(policy_logits.float(), dim=-1)
    log_q = torch.log_softmax(reference_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp(min=0.0)


def token_log_ratio_from_logits(policy_logits: torch.Tensor, reference_logits: torch.Tensor,
                                tokens: torch.Tensor) -> torch.Tensor:
    """k1 per position: ``log p(tokens) − log q(tokens)``. Shapes: (…, V), (…, V), (…) -> (…) float32."""
    log_p = torch.log_softmax(policy_logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    log_q = torch.log_softmax(reference_logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return log_p - log_q


@torch.inference_mode()
def per_sequence_kl(policy, reference, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_t KL_t, Σ_t k1_t)`` over each row's response positions. (B, T) ×3 -> (B,), (B,) float32.

    ``response_mask[b, t] = 1`` where token t is a sampled response token (EOS included); token t is
    predicted by the logits at position t − 1, computed only over the response span.
    """
    start, end = response_span(response_mask)
    keep = torch.arange(start - 1, end - 1, device=input_ids.device)
    policy_logits = forward_logits(policy, input_ids, attention_mask, logits_to_keep=keep)  # (B, S, V)
    reference_logits = forward_logits(reference, input_ids, attention_mask, logits_to_keep=keep)  # (B, S, V)
    mask = response_mask[:, start:end].bool()  # (B, S)
    full = token_kl_from_logits(policy_logits, reference_logits)  # (B, S)
    k1 = token_log_ratio_from_logits(policy_logits, reference_logits, input_ids[:, start:end])  # (B, S)
    zero = torch.zeros((), dtype=full.dtype, device=full.device)
    return torch.where(mask, full, zero).sum(dim=1), torch.where(mask, k1, zero).sum(dim=1)


@dataclass(frozen=True)
class SequenceKL:
    """KL(π ‖ π_ref) estimates in nats per sequence, with standard errors over the sampled sequences."""

    nats_per_seq: float  # mean of Σ_t KL_t (full vocabulary; the headline)
    k1_nats_per_seq: float  # mean of Σ_t log π(y_t) − log π_ref(y_t)
    stderr: float  # standard error of nats_per_seq (sample std / √n)
    k1_stderr: float
    n_sequences: int
    per_sequence: list[float] = field(repr=False, default_factory=list)
    per_sequence_k1: list[float] = field(repr=False, default_factory=list)

    def __float__(self) -> float:
        return self.nats_per_seq

    def metrics(self) -> dict[str, float | int]:
        """The ``kl/*`` keys of the evaluation report (docs/evaluation.md)."""
        return {"kl/nats_per_seq": self.nats_per_seq, "kl/nats_per_seq_stderr": self.stderr,
                "kl/k1_nats_per_seq": self.k1_nats_per_seq, "kl/k1_nats_per_seq_stderr": self.k1_stderr,
                "kl/n_sequences": self.n_sequences}


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def summarize(per_sequence: list[float], per_sequence_k1: list[float]) -> SequenceKL:
    """:class:`SequenceKL` from per-sequence values of both estimators."""
    if not per_sequence:
        raise ValueError("no sequences to estimate KL on")
    mean, stderr = _mean_and_stderr(per_sequence)
    k1_mean, k1_stderr = _mean_and_stderr(per_sequence_k1)
    return SequenceKL(mean, k1_mean, stderr, k1_stderr, len(per_sequence), per_sequence, per_sequence_k1)


def check_same_tokenizer(tokenizer, other, names: tuple[str, str] = ("policy", "reference")) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers map every token to the same id."""
    if tokenizer is other:
        return
    if tokenizer.get_vocab() != other.get_vocab():
        sizes = f"{len(tokenizer)} vs {len(other)} tokens"
        raise TokenizerMismatchError(
            f"the {names[0]} and {names[1]} tokenizers differ ({sizes}); KL({names[0]} ‖ {names[1]}) compares "
            "next-token distributions id by id and needs one tokenizer.")
    if tokenizer.eos_token_id != other.eos_token_id:
        raise TokenizerMismatchError(
            f"the {names[0]} and {names[1]} tokenizers end responses with different EOS ids "
            f"({tokenizer.eos_token_id} vs {other.eos_token_id}); KL needs one tokenizer.")


@contextmanager
def _eval_mode(*models) -> Iterator[None]:
    """Dropout off for the forwards (samples came from the models in eval mode); training flags restored."""
    flags = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, was_training in flags:
            module.training = was_training


def _trimmed(ids: torch.Tensor, mask: torch.Tensor, response_mask: torch.Tensor):
    """Drop columns that are padding in every row of the batch (left of the prompts, right of responses)."""
    used = mask.bool().any(dim=0).nonzero().flatten()
    first, last = int(used[0]), int(used[-1]) + 1
    return ids[:, first:last], mask[:, first:last], response_mask[:, first:last]


def sequence_kl(policy, reference, samples: PolicySamples, *, batch_size: int = 16, tokenizer=None,
                reference_tokenizer=None) -> SequenceKL:
    """KL(policy ‖ reference) on ``samples`` drawn from ``policy`` (see the module docstring).

    ``samples`` must carry tokens (:func:`rlhfkit.evaluate.sampling.sample_policy`) drawn at temperature 1
    and top-p 1. When both tokenizers are given they must agree (:func:`check_same_tokenizer`).
    ``batch_size`` rows per forward bounds memory: each batch holds (B, response length, V) logits twice.
    """
    if samples.generation is None:
        raise ValueError("these samples have no tokens (built from texts); KL needs samples from sample_policy")
    if samples.temperature != 1.0 or samples.top_p != 1.0:
        raise ValueError(f"KL(π ‖ π_ref) needs samples from π itself (temperature 1, top_p 1), got temperature "
                         f"{samples.temperature}, top_p {samples.top_p}")
    if tokenizer is not None and reference_tokenizer is not None:
        check_same_tokenizer(tokenizer, reference_tokenizer)
    ids, mask = samples.generation.sequences()  # (N, P + R): left-padded prompt, right-padded response
    # the tokens π sampled: an episode's environment tokens (rlhfkit.envs) are context, not π's choices
    sampled = getattr(samples.generation, "action_mask", samples.generation.response_mask)
    response_mask = torch.cat([torch.zeros_like(samples.generation.prompt_mask), sampled], dim=1)  # (N, P + R)
    device = next(policy.parameters()).device
    full: list[float] = []
    k1: list[float] = []
    with _eval_mode(policy, reference):
        for start in range(0, ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            batch_ids, batch_mask, batch_response = _trimmed(ids[rows], mask[rows], response_mask[rows])
            kl_full, kl_k1 = per_sequence_kl(policy, reference, batch_ids.to(device), batch_mask.to(device),
                                             batch_response.to(device))
            full.extend(kl_full.tolist())
            k1.extend(kl_k1.tolist())
    return summarize(full, k1)
