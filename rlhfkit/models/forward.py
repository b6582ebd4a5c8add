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
    """The underlying ``transformers`` model: strips DDP, a PEFT wrapper and :class:`PolicyWithValueHead`."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
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


def query_response_forward(model, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                           response_mask: torch.Tensor, first: torch.Tensor, inverse: torch.Tensor,
                           **query_kwargs):
    """``(query output, response output)`` of two forwards of ``model`` (a causal LM or a bare trunk) over
    query ⧺ response rows whose queries repeat: the distinct queries ``query_ids[first]`` fill a KV cache, copied
    to every row by ``inverse`` (:func:`rlhfkit.ops.distinct_rows`), then each row's response runs against its
    query's keys and values — the query's matrix products once per distinct query. Position ids from the masks,
    as :func:`model_inputs` gives the full sequence; (B, P) left-padded queries, (B, T) right-padded responses.
    ``query_kwargs`` go to the first forward only (e.g. ``logits_to_keep=1``). Differentiable: the copy is an
    index, so each query's gradient sums its rows'."""
    from transformers.cache_utils import DynamicCache

    keyword = "cache" if "cache" in _forward_parameters(model) else "past_key_values"
    cache = DynamicCache(config=unwrap_model(model).config)
    positions = position_ids_from_mask(query_mask)
    query_out = model(input_ids=query_ids[first], attention_mask=query_mask[first], position_ids=positions[first],
                      use_cache=True, **{keyword: cache}, **query_kwargs)
    cache.batch_select_indices(inverse)  # (U, …) → (B, …)
    steps = torch.arange(response_ids.shape[1], device=response_ids.device)
    response_out = model(input_ids=response_ids, attention_mask=torch.cat([query_mask, response_mask], 1),
                         position_ids=query_mask.sum(1, keepdim=True) + steps, use_cache=True, **{keyword: cache})
    return query_out, response_out


def supports_query_cache(model) -> bool:
    """Whether :func:`query_response_forward` applies: the forward takes position ids and a KV cache."""
    parameters = _forward_parameters(model)
    return "position_ids" in parameters and ("cache" in parameters or "past_key_values" in parameters)


# ----------------------------------------------------------------------------- shared-prompt rows


def shared_prompt_attention_mask(segment_ids: torch.Tensor,
                                 additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Who attends to whom in a shared-prompt row (``rlhfkit.data.collate.collate_shared_prompt``).

    ``allowed[g, 0, q, k] = (k ≤ q) ∧ (seg[k] ≥ 0) ∧ (seg[k] = 0 ∨ seg[k] = seg[q])``: causal, never a padding
    key, and a response sees the prompt and itself only. A padding query sees itself alone (a query with no
    key at all would give NaN). Shapes: (G, T) -> (G, 1, T, T) bool, True = attend (what sdpa takes); with
    ``additive_dtype`` the additive float mask eager attention adds to its scores (0, or the dtype's minimum).
    """
    length = segment_ids.shape[-1]
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]  # (G, T, 1), (G, 1, T)
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))  # (G, T, T)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device) & (query < 0)
    allowed = allowed[:, None]  # (G, 1, T, T)
    if additive_dtype is None:
        return allowed
    zero = torch.zeros((), dtype=additive_dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(additive_dtype).min)


def shared_prompt_inputs(model, batch: dict) -> dict:
    """Keyword arguments for a forward over shared-prompt rows: ids, the (G, 1, T, T) mask in the form the
    model's attention implementation takes, the batch's position ids, no KV cache."""
    inner = unwrap_model(model)
    eager = getattr(inner.config, "_attn_implementation", "sdpa") == "eager"
    dtype = next(inner.parameters()).dtype if eager else None
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False,
            "attention_mask": shared_prompt_attention_mask(batch["segment_ids"], dtype)}


def response_ids_of(batch: dict) -> torch.Tensor:
    """(G, T) long: n on the tokens of response n of a shared-prompt batch, −1 on the prompt and padding."""
    owner = torch.full_like(batch["input_ids"], -1)
    columns = torch.arange(owner.shape[1], device=owner.device)
    for n, (row, start, end) in enumerate(zip(*(batch[k].tolist() for k in
                                                ("response_row", "response_start", "response_end")))):
        owner[row] = torch.where((columns >= start) & (columns < end), n, owner[row])
    return owner


def shared_prompt_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, lengths)`` of every response n of a shared-prompt batch: ``log π(y_n|x) = Σ_t log π(y_t|x, y_<t)``
    over the response's own tokens, and its token count. (G, T) batch -> (N,), (N,).

    Logits are computed from the first prompt end to the last response end only (``logits_to_keep``).
    Inside a response, token t is predicted at column t−1; the *first* token of every response is predicted
    at the prompt's last column p−1 (what the response would follow in a row of its own), not at the end of
    the response before it — those N log-probs are taken from column p−1 separately.
    """
    from rlhfkit.ops import logprobs_from_logits

    input_ids = batch["input_ids"]
    first = int(batch["prompt_length"].min()) - 1  # the first column whose logits are needed
    last = int(batch["response_end"].max()) - 1  # one past the last such column
    inputs = shared_prompt_inputs(model, batch)
    if "logits_to_keep" in _forward_parameters(model):
        inputs["logits_to_keep"] = torch.arange(first, last, device=input_ids.device)
    logits = model(**inputs).logits  # (G, S, V), or (G, T, V) when every column was computed
    if logits.shape[1] != last - first:
        logits = logits[:, first:last]
    token_logprobs = logprobs_from_logits(logits, input_ids[:, first + 1 : last + 1])  # (G, S): token c+1 at c
    rows, starts = batch["response_row"], batch["response_start"]  # (N,)
    predictor = batch["prompt_length"][rows] - 1 - first  # (N,) column p−1 in the kept logits
    first_logprobs = logprobs_from_logits(logits[rows, predictor][:, None],
                                          input_ids[rows, starts][:, None])[:, 0]  # (N,)
    owner = response_ids_of(batch)  # (G, T)
    is_first = torch.zeros_like(owner, dtype=torch.bool)
    is_first[rows, starts] = True
    # (G, S): the response of the token each kept column predicts; its first tokens were taken above
    owner, is_first = owner[:, first + 1 : last + 1], is_first[:, first + 1 : last + 1]
    inside = (owner >= 0) & ~is_first
    logps = first_logprobs.new_zeros(rows.shape[0]).index_add(0, owner[inside], token_logprobs[inside])
    return logps + first_logprobs, batch["response_end"] - starts


def forward_hidden_states(model, inputs: dict) -> torch.Tensor:
    """Final hidden states of the trunk from a forward of the *whole* model on ``inputs`` (its head's output is
    not used): (B, T) -> (B, T, H). Unlike :func:`trunk_hidden_states`, whatever wraps that forward applies —
    accelerate's autocast for ``mixed_precision``, DDP's gradient synchronisation (a trunk called alone
    leaves DDP ranks with unsynchronised gradients)."""
    with capture_trunk_output(model) as captured:
        model(**inputs)
    return captured["hidden"]


def shared_prompt_hidden_states(model, batch: dict) -> torch.Tensor:
    """Final hidden states of the trunk over shared-prompt rows, through the whole model's forward
    (:func:`forward_hidden_states`): (G, T) -> (G, T, H)."""
    return forward_hidden_states(model, shared_prompt_inputs(model, batch))


@torch.no_grad()
def shared_prompt_matches_separate_rows(model, atol: float = 1e-4) -> bool:
    """Whether ``model`` gives a response the same hidden states in a shared-prompt row as in a row of its own.

    Checked on the live model with a 3-token prompt and two responses: an attention implementation that
    ignores 4-D masks or position ids (FlashAttention, some custom code) fails it, and callers then keep one
    row per sequence.
    """
    from rlhfkit.data.collate import collate_shared_prompt

    embeddings = model.get_input_embeddings().weight
    vocab, device = embeddings.shape[0], embeddings.device
    prompt, responses = [3 % vocab, 7 % vocab, 11 % vocab], [[5 % vocab, 9 % vocab], [13 % vocab, 2, 4 % vocab]]
    batch = {k: v.to(device) for k, v in collate_shared_prompt([prompt], [responses], pad_token_id=0).items()}
    was_training = model.training
    model.eval()
    try:
        shared = shared_prompt_hidden_states(model, batch)[0]  # (T, H)
        for response, start in zip(responses, batch["response_start"].tolist()):
            ids = torch.tensor([prompt + response], device=device)
            alone = trunk_hidden_states(model, ids, torch.ones_like(ids))[0, len(prompt):]
            here = shared[start : start + len(response)]
            if not torch.allclose(here.float(), alone.float(), atol=atol, rtol=atol):
                return False
    except (RuntimeError, ValueError, TypeError):  # an implementation that refuses a 4-D mask
        return False
    finally:
        model.train(was_training)
    return True
