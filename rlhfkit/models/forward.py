"""Forward passes that give the same answer for left- and right-padded batches.

Hugging Face Llama, Qwen2, GPT-2 and GPT-NeoX compute position ids from the cache position (0, 1, 2, …
for every row), not from the attention mask. A left-padded row (generation pads on the left) then puts
its first real token at position ``n_pad`` instead of 0. Rotary models (Llama, Qwen2, NeoX) are nearly
immune, since attention scores depend only on relative positions; models with learned absolute position
embeddings (GPT-2) are not. We always pass ``position_ids`` counted over the real tokens, as
lm-human-preferences did (``positions_for``: an exclusive cumsum of the mask).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row: ``pos[b, t] = Σ_{s<t} mask[b, s]``.

    Shapes: (B, T) 0/1 -> (B, T) long. Real tokens get 0, 1, 2, … whatever the padding side; a padding
    position gets the count of real tokens before it (0 for left padding), a harmless in-range value
    that no real token ever attends to.
    """
    mask = attention_mask.long()
    return mask.cumsum(dim=-1) - mask


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: ``max{t : mask[b, t] = 1}``. (B, T) -> (B,) long.

    Decided by the mask alone, so it works for left or right padding and when the pad id equals EOS.
    A row with no real token is an error (there is nothing to score).
    """
    mask = attention_mask.bool()
    if not mask.any(dim=-1).all():
        empty = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} of the attention mask have no real token")
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask, positions, -1).max(dim=-1).values


def unwrap_model(model):
    """The underlying ``transformers`` model: strips a PEFT wrapper and :class:`PolicyWithValueHead`."""
    model = getattr(model, "policy", model) if type(model).__name__ == "PolicyWithValueHead" else model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def trunk_of(model):
    """The transformer trunk (``LlamaModel``, ``GPT2Model``, …) of a causal-LM or scalar-head model."""
    inner = unwrap_model(model)
    return getattr(inner, inner.base_model_prefix)


def _forward_parameters(model) -> set[str]:
    return set(inspect.signature(unwrap_model(model).forward).parameters)


def accepts_position_ids(model) -> bool:
    """Whether the model's forward takes ``position_ids`` (every modern decoder does)."""
    return "position_ids" in _forward_parameters(model)


def model_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Keyword arguments for a padding-safe forward: ids, mask, mask-derived positions, no KV cache."""
    if input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ"
        )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if accepts_position_ids(model):
        inputs["position_ids"] = position_ids_from_mask(attention_mask)
    return inputs


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits with position ids from the mask: (B, T) ids/mask -> (B, T, V).

    ``logits[b, t]`` predicts token ``t + 1``. The same sequence gives the same logits at its real
    tokens whether it is left- or right-padded. ``logits_to_keep`` (a 1-D tensor of positions, or an
    int for the last N) computes the LM head only there, when the model supports it: (B, K, V).
    """
    inputs = model_inputs(model, input_ids, attention_mask)
    full = None
    if logits_to_keep is not None:
        if "logits_to_keep" in _forward_parameters(model):
            inputs["logits_to_keep"] = logits_to_keep
        else:
            full = logits_to_keep
    logits = model(**inputs).logits
    if full is None:
        return logits
    if isinstance(full, int):
        return logits[:, -full:] if full else logits
    return logits[:, full.to(logits.device)]


@contextmanager
def capture_trunk_output(model):
    """Record the trunk's last hidden state (B, T, H) during a forward: ``with … as captured: model(…)``.

    ``captured["hidden"]`` is the final (normalised) hidden state the LM or score head reads, taken with a
    forward hook so one forward pass gives both logits and values, for any architecture.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = trunk_of(model).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def trunk_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states of the trunk alone (no LM / score head): (B, T) -> (B, T, H)."""
    trunk = trunk_of(model)
    return trunk(**model_inputs(model, input_ids, attention_mask)).last_hidden_state
