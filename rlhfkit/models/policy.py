"""Per-token log-probabilities, entropies and values of a policy's responses.

Alignment convention for every per-token tensor of a rollout (B, T): position ``t`` is the *action*
"emit token t": ``logprobs[:, t] = log π(x_t | x_{<t})``, ``values[:, t] = V(x_{<t})`` (the state in which
token t was chosen), ``rewards[:, t]``. Positions outside ``response_mask`` hold 0.

Logits are divided by the sampling temperature before the log-softmax, so the log-probs are those of the
distribution the tokens were actually sampled from ("logits ÷ temperature", one of the PPO details of
Huang et al. 2022, *The N implementation details of RLHF with PPO*).
"""

from __future__ import annotations

import torch

from rlhfkit.models.forward import (
    _forward_parameters,
    forward_logits,
    query_response_forward,
    supports_query_cache,
    unwrap_model,
)
from rlhfkit.ops import distinct_rows, entropy_from_logits, logprobs_from_logits


def response_span(response_mask: torch.Tensor) -> tuple[int, int]:
    """``(start, end)``: the smallest column range ``[start, end)`` holding every response token of the batch.

    Logits are needed only at positions ``start − 1 … end − 2`` (each predicts the next token), which for
    a left-padded rollout (prompt then response) is just the response part — the memory that matters on a
    large vocabulary. A response token at position 0 has no context and is an error.
    """
    columns = response_mask.bool().any(dim=0).nonzero().flatten()
    if columns.numel() == 0:
        raise ValueError("response_mask marks no token")
    start, end = int(columns[0]), int(columns[-1]) + 1
    if start == 0:
        raise ValueError("a response token at position 0 has no context to be predicted from")
    return start, end


def _span_logits(model, input_ids, attention_mask, start: int, end: int, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keep = torch.arange(start - 1, end - 1, device=input_ids.device)
    logits = forward_logits(model, input_ids, attention_mask, logits_to_keep=keep)  # (B, end−start, V)
    return logits / temperature if temperature != 1.0 else logits


def _scatter_span(span_values: torch.Tensor, response_mask: torch.Tensor, start: int) -> torch.Tensor:
    """Place (B, S) span values at columns [start, start + S) of a zero (B, T) tensor; zero off-response."""
    full = span_values.new_zeros(response_mask.shape)
    full[:, start : start + span_values.shape[1]] = span_values
    return torch.where(response_mask.bool(), full, torch.zeros((), dtype=full.dtype, device=full.device))


def logprobs_and_entropy_from_span_logits(
    span_logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From logits (B, S, V) at positions ``start−1 … start+S−2`` (already ÷ temperature) to (B, T) log-probs of
    ``input_ids[:, start:start+S]`` and entropies, response-aligned and zero off the response."""
    labels = input_ids[:, start : start + span_logits.shape[1]]  # (B, S)
    logprobs = logprobs_from_logits(span_logits, labels)  # (B, S)
    entropy = entropy_from_logits(span_logits.detach())  # (B, S) diagnostic, no gradient
    return _scatter_span(logprobs, response_mask, start), _scatter_span(entropy, response_mask, start)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``logprobs[b, t] = log softmax(logits_{t−1} / temperature)[x_t]`` where ``response_mask[b, t]``, else 0.

    Shapes: ``input_ids``, ``attention_mask``, ``response_mask`` (B, T) -> (B, T) float32. Differentiable
    (call under ``torch.no_grad()`` for rollouts and the reference). Position ids come from the mask, so
    left- and right-padded batches agree. Logits are computed only over the response span.
    """
    start, end = response_span(response_mask)
    span_logits = _span_logits(model, input_ids, attention_mask, start, end, temperature)
    labels = input_ids[:, start:end]
    return _scatter_span(logprobs_from_logits(span_logits, labels), response_mask, start)


def response_logprobs_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                  response_mask: torch.Tensor, temperature: float = 1.0
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logprobs` plus the entropy ``H_t = −Σ_v p_v log p_v`` of the same (tempered)
    distribution at each response position, in nats, without gradient. Both (B, T), zero off-response."""
    start, end = response_span(response_mask)
    span_logits = _span_logits(model, input_ids, attention_mask, start, end, temperature)
    return logprobs_and_entropy_from_span_logits(span_logits, input_ids, response_mask, start)


def query_response_span_logits(model, query_ids: torch.Tensor, query_mask: torch.Tensor,
                               response_ids: torch.Tensor, response_mask: torch.Tensor,
                               always: bool = False) -> torch.Tensor | None:
    """(B, T, V) logits where ``[:, t]`` predicts response token t (query ⧺ response), each distinct query
    forwarded once (:func:`~rlhfkit.models.forward.query_response_forward`); None when no query repeats or the
    model takes no KV cache (or checkpoints activations, which turns the cache off) — then use the full forward.
    Differentiable: the gradient reaches the query's tokens through the copied keys and values. ``always``: the
    two forwards even without a repeated query (every row its own), so that a row's numbers never depend on
    whether its query happens to repeat in this batch."""
    repeated = distinct_rows(query_ids, query_mask)
    if repeated is None and always:
        rows = torch.arange(query_ids.shape[0], device=query_ids.device)
        repeated = (rows, rows)
    inner = unwrap_model(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers ≥ 5.2x; before: gradient_
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if repeated is None or not supports_query_cache(model) or checkpointing:
        return None
    last = {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}
    query_out, response_out = query_response_forward(model, query_ids, query_mask, response_ids, response_mask,
                                                     *repeated, **last)
    query_logits = query_out.logits[:, -1]  # (U, V): predicts response token 0
    logits = response_out.logits  # (B, T, V): position t predicts token t + 1
    return torch.cat([query_logits[repeated[1], None], logits[:, :-1]], 1)  # (B, T, V)


def _on_response(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return torch.where(response_mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def query_response_logprobs(model, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                            response_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
                            share: bool = True, always: bool = False):
    """(B, T) ``log π_T(response_t | query, response_<t)``, zero off ``response_mask`` — and with ``with_entropy``
    the (B, T) entropies (no gradient) too. As :func:`response_logprobs` on query ⧺ response, but a query that
    occurs several times (GRPO's ``rollout.n`` responses per prompt) is forwarded once: its keys and values go
    into a KV cache copied to each of its rows, and the responses are then forwarded against that cache — the
    prompt's matrix products once per distinct prompt instead of once per response; equal to the full forward
    to float rounding. (B, P) left-padded queries, (B, T) right-padded responses. Without a repeated query it
    is the full forward, unless ``always``: then the two forwards (query, then response against the cache) run
    anyway, so a row's numbers do not depend on whether its query repeats in this batch. ``share=False``: the
    full forward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    span_logits = (query_response_span_logits(model, query_ids, query_mask, response_ids, response_mask, always)
                   if share else None)
    if span_logits is None:
        ids, mask = torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1)
        in_sequence = torch.cat([torch.zeros_like(query_mask), response_mask], 1)
        width = query_ids.shape[1]
        if with_entropy:
            logprobs, entropy = response_logprobs_and_entropy(model, ids, mask, in_sequence, temperature)
            return logprobs[:, width:], entropy[:, width:]
        return response_logprobs(model, ids, mask, in_sequence, temperature)[:, width:]
    if temperature != 1.0:
        span_logits = span_logits / temperature
    logprobs = _on_response(logprobs_from_logits(span_logits, response_ids), response_mask)
    if with_entropy:
        return logprobs, _on_response(entropy_from_logits(span_logits.detach()), response_mask)
    return logprobs


def values_for_actions(state_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Action-aligned values from state-aligned ones: ``out[:, t] = state_values[:, t − 1]`` on the response.

    ``state_values[:, t] = V(x_{≤t})`` (what :func:`rlhfkit.models.heads.token_values` and
    :class:`~rlhfkit.models.heads.PolicyWithValueHead` return); PPO needs the value of the state in which
    token t was emitted, ``V(x_{<t})``, at the same position as ``logprobs[:, t]``. (B, T) -> (B, T), 0 off-response.
    """
    if state_values.shape != response_mask.shape:
        raise ValueError(f"values {tuple(state_values.shape)} and mask {tuple(response_mask.shape)} differ")
    shifted = torch.cat([torch.zeros_like(state_values[:, :1]), state_values[:, :-1]], dim=1)
    return torch.where(response_mask.bool(), shifted, torch.zeros((), dtype=shifted.dtype, device=shifted.device))


def policy_value_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         response_mask: torch.Tensor, temperature: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of a :class:`~rlhfkit.models.heads.PolicyWithValueHead`: ``(logprobs, entropy, values)``,
    each (B, T), action-aligned and zero off the response (see the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    start, end = response_span(response_mask)
    keep = torch.arange(start - 1, end - 1, device=input_ids.device)
    span_logits, state_values = model(input_ids, attention_mask, logits_to_keep=keep)
    if temperature != 1.0:
        span_logits = span_logits / temperature
    logprobs, entropy = logprobs_and_entropy_from_span_logits(span_logits, input_ids, response_mask, start)
    return logprobs, entropy, values_for_actions(state_values, response_mask)
