"""Batched sampling from any Hugging Face causal LM: the generation engine of PPO, best-of-N, evaluation, demo.

One function, :func:`generate`, turns a list of token-id prompts into a :class:`GenerationOutput`:
left-padded prompts, right-padded responses, a response mask that is 1 up to and including EOS, and
optionally the log-probabilities of the sampled tokens.

What it does, and why (each detail is one a PPO implementation gets wrong sooner or later):

- **Left padding with correct position ids.** Prompts of different lengths are left-padded so that every
  row's next token is at the same column. Position ids are ``cumsum(mask) − 1`` (padding gets 0), so a
  left-padded row sees exactly the positions it would see alone — without them Hugging Face models number
  the padding too and shift every real token's position. ``model.generate`` does the same, which is why
  greedy outputs are identical.
- **A preallocated KV cache** (``rollout/kv_cache.py``): one buffer per layer for prompt + max_new_tokens
  positions, a column written per step, instead of ``DynamicCache``'s ``torch.cat`` of the whole cache.
- **A preallocated 4-D attention mask in the attention kernel's own format** (boolean for ``sdpa``, additive
  for ``eager``; ``rollout/attention.py`` says why and picks it); any other kernel takes ``model.generate``'s
  own path: ``DynamicCache`` and a 2-D mask.
- **Finished rows leave the batch** (``drop_finished=True``, the default). Once a quarter of the rows have
  produced EOS, the others are copied into a smaller batch (cache, mask, positions), so a step costs what
  the unfinished rows need; ``model.generate`` computes every row until the last one ends. Mathematically
  nothing changes, but PyTorch's CPU attention kernel is not batch-invariant: a row's logits can move by
  float rounding (~1e-7) with the batch size, so a greedy token can differ from ``model.generate``'s only
  where two logits tie to that precision. ``drop_finished=False`` keeps every row (bitwise equal logits).
- **Logits ÷ temperature, then top-k, then top-p**, then one draw from the given ``torch.Generator``
  (``rollout/sampling.py``).
- **Stop when every sequence has produced EOS**; tokens after a row's EOS are padding, masked out.
- ``torch.no_grad()`` (not ``inference_mode``: under a caller's bf16 autocast, only outside inference mode
  does autocast cache the bf16 copy of each weight instead of casting it again at every token), the model in
  eval mode (dropout off) and each module's training flag restored after; the returned tensors are ordinary
  tensors (usable in a forward pass with gradients).

RNG: sampling consumes only ``generator`` (one float64 uniform number per row still being decoded, per
decoding step, turned into a token by inverting the cumulative distribution, accumulated in float64 so that
every token keeps its exact share — see :func:`rlhfkit.ops.sample_categorical`; ``torch.multinomial`` draws an
exponential number per vocabulary entry instead, which costs more than the model's attention on a small
model), or the global default generator of the model's device when ``generator`` is None.
Greedy decoding consumes no randomness. So the same generator state and the same inputs give the same
samples, and saving ``generator.get_state()`` in a checkpoint makes sampling resumable. (Which random
numbers a row receives depends on the whole batch, so a prompt sampled alone gets another — equally
distributed — response than inside a batch.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from rlhfkit.ops import distinct_rows
from rlhfkit.rollout.attention import cache_keyword, decode_mask_format, float32_attention, forward_parameters
from rlhfkit.rollout.kv_cache import PreallocatedCache

# filter_logits and sampling_logprobs live in rollout/sampling.py; re-exported here, where docs/generation.md
# documents them as part of the engine's public API
from rlhfkit.rollout.sampling import filter_logits, next_tokens, sampling_logprobs

__all__ = ["GenerationOutput", "generate", "left_pad", "filter_logits", "sampling_logprobs"]

# Never shrink a batch below this many rows when dropping finished ones (see `_rows_to_keep`).
_MIN_ROWS = 8


@dataclass
class GenerationOutput:
    """Prompts and sampled responses of one call to :func:`generate`, row i of every field = prompt i."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded with pad_token_id
    prompt_mask: torch.Tensor  # (B, P) long, 1 = real prompt token, 0 = left padding
    response_ids: torch.Tensor  # (B, R) long, right-padded with pad_token_id; R ≤ max_new_tokens
    response_mask: torch.Tensor  # (B, R) long, 1 up to and including the first EOS, 0 after it
    ended_with_eos: torch.Tensor  # (B,) bool, True if the response ends with EOS (not cut at max_new_tokens)
    # (B, R) float32 log p_T(a_t | s_t) of each sampled token under softmax(logits / temperature), before
    # top-k/top-p truncation (see `sampling_logprobs`); 0 where response_mask is 0. None unless requested.
    logprobs: torch.Tensor | None = None
    # (B, R) float32 entropy (nats) of that same distribution at each step; 0 off the response. With logprobs.
    entropy: torch.Tensor | None = None
    # (B, R) float32 ``readout(h_t)`` of the trunk's final hidden state h_t at the position token t was sampled
    # from (e.g. a value head: V(s_t)); 0 off the response. None unless a readout was given.
    readouts: torch.Tensor | None = None

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: number of response tokens per row, EOS included."""
        return self.response_mask.sum(dim=1)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P + R) ids and attention mask of prompt ⧺ response (left-padded prompt, right-padded response)."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        return ids, mask

    def response_token_lists(self) -> list[list[int]]:
        """Each row's response ids without padding (EOS kept when present)."""
        return [row[: int(n)].tolist() for row, n in zip(self.response_ids, self.response_lengths)]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (B, P) left-padded ids and a (B, P) mask (1 = token), P = longest prompt."""
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty: a prompt needs at least one token (e.g. BOS)")
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------
# The decoding loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Sampling:
    """The per-call settings the decoding loop needs (validated by `generate`)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    greedy: bool
    eos_ids: torch.Tensor  # (E,) long, every id that ends a response
    pad_token_id: int
    generator: torch.Generator | None
    return_logprobs: bool
    readout: Callable[[torch.Tensor], torch.Tensor] | None
    mask_format: str  # "boolean" / "additive" 4-D with the preallocated cache, "2d" with DynamicCache
    mask_dtype: torch.dtype  # an additive mask's dtype: the embeddings' (as transformers' eager_mask)
    cache_dtype: torch.dtype | None  # the KV cache's dtype; None = the keys' own
    cache_keyword: str  # the forward's name for the KV cache: "cache" or (older transformers) "past_key_values"
    logits_to_keep: bool
    drop_finished: bool
    synced: bool = False  # keep every process of the group forwarding until all have finished (FSDP2)
    stop: Callable[[list[int]], bool] | None = None  # a row's response so far → True: the row ends there


class _Batch:
    """The rows still being decoded and their per-row state; rows are dropped as they finish (compaction).

    ``rows`` maps each live row to its index in the output; everything else is indexed by live row.
    """

    def __init__(self, prompt_mask: torch.Tensor, capacity: int, mask_format: str, mask_dtype: torch.dtype):
        batch, prompt_len = prompt_mask.shape
        device = prompt_mask.device
        self.rows = torch.arange(batch, device=device)  # (b,) output row of each live row
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (b,) has emitted EOS
        self.next_position = prompt_mask.sum(dim=1, keepdim=True)  # (b, 1): a row's n tokens sit at 0..n−1
        self.has_padding = not bool(prompt_mask.all())
        padding = prompt_mask == 0  # (b, P)
        if mask_format == "boolean":  # (b, 1, 1, capacity), True = attend; generated columns always visible
            self.mask = torch.ones((batch, 1, 1, capacity), dtype=torch.bool, device=device)
            self.mask[:, 0, 0, :prompt_len] = ~padding
        elif mask_format == "additive":  # (b, 1, 1, capacity), added to the scores: 0 = attend, min = never
            self.mask = torch.zeros((batch, 1, 1, capacity), dtype=mask_dtype, device=device)
            self.mask[:, 0, 0, :prompt_len].masked_fill_(padding, torch.finfo(mask_dtype).min)
        else:  # the 2-D mask, grown by one column per step (DynamicCache path); transformers builds the rest
            self.mask = prompt_mask

    def attention_mask(self, length: int) -> torch.Tensor | None:
        """The mask for a one-token step that attends to ``length`` positions."""
        if self.mask.dim() == 2:
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
            return self.mask
        return self.mask[:, :, :, :length] if self.has_padding else None

    def keep(self, local: torch.Tensor, cache) -> None:
        """Keep only the live rows ``local`` (indices into the current rows), in the batch and in the cache."""
        self.rows, self.finished = self.rows[local], self.finished[local]
        self.next_position, self.mask = self.next_position[local], self.mask[local]
        cache.batch_select_indices(local)


def _rows_to_keep(finished: torch.Tensor, min_rows: int = _MIN_ROWS) -> torch.Tensor | None:
    """Live-row indices to keep once a quarter of the batch has finished, else None (not worth a copy).

    At least ``min_rows`` rows stay (finished ones fill up): on a few rows per-step overhead dominates, so
    the copy would not pay, and matrix products of 1–3 rows take other BLAS code paths (other rounding).
    """
    alive = ~finished
    n_alive, n_rows = int(alive.sum()), finished.shape[0]
    if n_rows <= min_rows or n_alive > 0.75 * n_rows:
        return None
    if n_alive < min_rows:
        alive = alive.clone()
        alive[finished.nonzero().flatten()[: min_rows - n_alive]] = True
    return alive.nonzero().flatten()


def _decode_batch(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, s: _Sampling) -> GenerationOutput:
    """Prefill the (B, P) left-padded prompts, then decode one token per step for every unfinished row."""
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    capacity = prompt_len + s.max_new_tokens
    cache = DynamicCache(config=model.config) if s.mask_format == "2d" else PreallocatedCache(capacity, s.cache_dtype)
    live = _Batch(prompt_mask, capacity, s.mask_format, s.mask_dtype)
    # cumsum − 1 numbers each row's real tokens 0, 1, …; left padding gets 0 (masked out anyway)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P)
    extra = {"logits_to_keep": 1} if s.logits_to_keep else {}
    with_cache = {s.cache_keyword: cache, "use_cache": True}
    out = {}
    response_ids = torch.full((batch, s.max_new_tokens), s.pad_token_id, dtype=torch.long, device=device)
    response_mask = torch.zeros((batch, s.max_new_tokens), dtype=torch.long, device=device)
    per_step = {name: torch.zeros((batch, s.max_new_tokens), device=device)
                for name, wanted in (("logprobs", s.return_logprobs), ("entropy", s.return_logprobs),
                                     ("readouts", s.readout is not None)) if wanted}
    with _capture_hidden(model, s.readout is not None) as captured:
        logits = _prefill(model, prompt_ids, prompt_mask, positions, cache, with_cache, extra, captured)  # (b, V)
        steps = 0
        for t in range(s.max_new_tokens):
            tokens, token_logprobs, token_entropy = next_tokens(
                logits, greedy=s.greedy, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                generator=s.generator, want_logprobs=s.return_logprobs)
            tokens = tokens.masked_fill(live.finished, s.pad_token_id)  # a finished row only emits padding
            response_ids[live.rows, t] = tokens
            response_mask[live.rows, t] = (~live.finished).long()
            if s.return_logprobs:
                out["logprobs"], out["entropy"] = token_logprobs, token_entropy
            if s.readout is not None:  # the hidden state the logits of this step were read from
                out["readouts"] = s.readout(captured["hidden"][:, -1, :]).reshape(-1).float()
            for name, values in out.items():
                per_step[name][live.rows, t] = values.masked_fill(live.finished, 0.0)
            live.finished |= torch.isin(tokens, s.eos_ids)
            if s.stop is not None:  # e.g. a tool call's stop string: the row ends after this token, as at EOS
                _apply_stop(s.stop, response_ids, live, t)
            steps = t + 1
            done = steps == s.max_new_tokens or bool(live.finished.all())
            if s.synced and not _done_everywhere(done, device) and done:  # the flag: every step, every process
                _forward_until_done_everywhere(model, s.pad_token_id, device)  # others still decode: keep pace
            if done:
                break
            kept = _rows_to_keep(live.finished) if s.drop_finished else None
            if kept is not None:
                live.keep(kept, cache)
                tokens = tokens[kept]
            logits = model(input_ids=tokens[:, None], attention_mask=live.attention_mask(prompt_len + steps),
                           position_ids=live.next_position, **with_cache).logits[:, -1, :]
            live.next_position = live.next_position + 1

    ended_with_eos = torch.isin(response_ids, s.eos_ids).logical_and(response_mask.bool()).any(dim=1)
    return GenerationOutput(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        response_ids=response_ids[:, :steps], response_mask=response_mask[:, :steps],
        ended_with_eos=ended_with_eos, **{name: values[:, :steps] for name, values in per_step.items()},
    )


def _apply_stop(stop: Callable[[list[int]], bool], response_ids: torch.Tensor, live, t: int) -> None:
    """Mark finished the live rows whose response so far (columns 0…t) ``stop`` says ends there."""
    open_rows = (~live.finished).nonzero().flatten().tolist()
    if not open_rows:
        return
    rows = live.rows[open_rows].tolist()
    window = getattr(stop, "window", None)  # a stop that reads only the last `window` tokens gets only those
    first = 0 if window is None else max(0, t + 1 - window)
    so_far = response_ids[rows, first : t + 1].tolist()
    for local, tokens in zip(open_rows, so_far):
        if stop(tokens):
            live.finished[local] = True


def _done_everywhere(done: bool, device: torch.device) -> bool:
    """Whether every process of the default group is done (one all-reduce of a 0/1 flag)."""
    import torch.distributed as dist

    flag = torch.tensor([0 if done else 1], device=device)
    dist.all_reduce(flag)
    return int(flag) == 0


def _forward_until_done_everywhere(model, pad_token_id: int, device: torch.device) -> None:
    """``synced`` decoding for a process whose rows have all ended: one throwaway forward (a padding token, no
    cache) for each decoding step the others still take. With sharded weights every forward is a collective
    (each unit's all-gather), so the processes must run the same number of them whatever their rows do."""
    token = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
    while True:
        model(input_ids=token)
        if _done_everywhere(True, device):
            return


def _prefill(model, prompt_ids, prompt_mask, positions, cache, with_cache: dict, extra: dict, captured: dict):
    """The prompts' forward into ``cache``; the last position's logits (B, V). A prompt that occurs several
    times (each prompt ``rollout.n`` times for GRPO) is run once and its keys/values copied to its other rows:
    a row's prefill does not depend on the other rows, so the cache and logits are those of the full batch
    (to float rounding — the kernels see fewer rows) at a fraction of the prompt's matrix products."""
    repeated = distinct_rows(prompt_ids, prompt_mask)
    if repeated is None:
        return model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                     **with_cache, **extra).logits[:, -1, :]
    first, inverse = repeated
    logits = model(input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=positions[first],
                   **with_cache, **extra).logits[:, -1, :]  # (U, V)
    cache.batch_select_indices(inverse)  # (U, …) → (B, …): each row gets its prompt's keys and values
    if "hidden" in captured:
        captured["hidden"] = captured["hidden"][inverse]
    return logits[inverse]


def _capture_hidden(model, wanted: bool):
    """The trunk's final hidden states of each forward (``captured["hidden"]``, (b, L, H)) when ``wanted``."""
    if not wanted:
        return nullcontext({})
    from rlhfkit.models.forward import capture_trunk_output

    return capture_trunk_output(model)


def _merge(parts: list[GenerationOutput], order: list[int], pad_token_id: int) -> GenerationOutput:
    """Concatenate per-chunk outputs (re-padding to common widths) and put rows back in `order`'s inverse."""
    if len(parts) == 1 and order == sorted(order):
        return parts[0]
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_r = max(p.response_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
        missing = width - t.shape[1]
        return torch.nn.functional.pad(t, (missing, 0) if left else (0, missing), value=value)

    fields = {
        "prompt_ids": torch.cat([pad(p.prompt_ids, width_p, pad_token_id, True) for p in parts]),
        "prompt_mask": torch.cat([pad(p.prompt_mask, width_p, 0, True) for p in parts]),
        "response_ids": torch.cat([pad(p.response_ids, width_r, pad_token_id, False) for p in parts]),
        "response_mask": torch.cat([pad(p.response_mask, width_r, 0, False) for p in parts]),
        "ended_with_eos": torch.cat([p.ended_with_eos for p in parts]),
    }
    for name in ("logprobs", "entropy", "readouts"):
        if getattr(parts[0], name) is not None:
            fields[name] = torch.cat([pad(getattr(p, name), width_r, 0.0, False) for p in parts])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(fields["prompt_ids"].device)
    return GenerationOutput(**{k: v.index_select(0, inverse) for k, v in fields.items()})


def _eos_ids(eos_token_id: int | Sequence[int]) -> list[int]:
    ids = [eos_token_id] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    if not ids:
        raise ValueError("eos_token_id must be an id or a non-empty list of ids")
    return ids


def _check_settings(prompts, max_new_tokens, temperature, top_p, top_k, batch_size, model) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use greedy=True for argmax decoding)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be ≥ 0 (0 = off), got {top_k}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1 or None, got {batch_size}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    longest = max((len(p) for p in prompts), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{limit} positions; truncate prompts or lower max_new_tokens")


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    eos_token_id: int | Sequence[int],
    pad_token_id: int | None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    return_logprobs: bool = False,
    drop_finished: bool = True,
    readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    synced: bool = False,
    stop: Callable[[list[int]], bool] | None = None,
) -> GenerationOutput:
    """Sample (or greedily decode) up to ``max_new_tokens`` tokens after each prompt; see the module docstring.

    ``prompts`` are token-id lists (no padding). ``model`` is any Hugging Face causal LM, possibly wrapped in
    PEFT. ``eos_token_id`` may be a list (any of them ends a response). ``pad_token_id`` None pads with the
    first EOS id (the masks say what is padding). ``generator`` must live on the model's device; None uses
    the global RNG. ``batch_size`` splits the prompts into chunks of that many rows, grouped by length to
    waste less padding (rows come back in the input order); None decodes all at once. ``drop_finished``
    removes rows that have ended from the running batch (faster; logits equal to float rounding — see the
    module docstring); False reproduces ``model.generate``'s logits bit for bit. ``return_logprobs`` also
    returns each step's entropy. ``readout`` maps the trunk's final hidden states (b, H) to (b,) values at
    every sampling step — the state each token was chosen in, e.g. PPO's value head: V(s_t) at no extra forward.
    ``synced``: every process of the default process group calls ``generate`` together (the same number of
    chunks), and each keeps forwarding — throwaway forwards once its own rows have ended — until all have
    ended: for weights sharded with FSDP2, where every forward is a collective (``transformers``' name for
    this is ``synced_gpus``). Each process's samples are what they would be without it.
    ``stop``: called after every step with each still-decoding row's response tokens so far (only the last
    ``stop.window`` ones if it has that attribute); True ends the row there (its last token kept, as an EOS is)
    — the episode runner's stop strings (:mod:`rlhfkit.envs.episodes`).
    Returns a :class:`GenerationOutput` whose row i belongs to ``prompts[i]``.
    """
    _check_settings(prompts, max_new_tokens, temperature, top_p, top_k, batch_size, model)
    eos_ids = _eos_ids(eos_token_id)
    pad_id = eos_ids[0] if pad_token_id is None else int(pad_token_id)
    weight = next(model.parameters())
    device = weight.device
    mask_format = decode_mask_format(model)
    # a caller's bf16 autocast over float32 weights: bf16 products, a float32 KV cache and sdpa attention
    mixed = (weight.dtype == torch.float32 and torch.is_autocast_enabled(device.type)
             and torch.get_autocast_dtype(device.type) != torch.float32)
    float32_sdpa = mixed and mask_format == "boolean"
    settings = _Sampling(
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        greedy=greedy, eos_ids=torch.tensor(eos_ids, device=device), pad_token_id=pad_id, generator=generator,
        return_logprobs=return_logprobs, readout=readout, mask_format=mask_format,
        mask_dtype=model.get_input_embeddings().weight.dtype,
        cache_dtype=torch.float32 if float32_sdpa else None, cache_keyword=cache_keyword(model),
        logits_to_keep="logits_to_keep" in forward_parameters(model), drop_finished=drop_finished,
        synced=synced, stop=stop,
    )
    if batch_size is None or batch_size >= len(prompts):
        order = list(range(len(prompts)))
        chunks = [order]
    else:  # longest first, so the first chunk fails fast on memory; stable for determinism
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    training_flags = [(module, module.training) for module in model.modules()]
    model.eval()  # dropout off: samples come from the policy itself, and PPO's recomputed logprobs match
    try:
        with torch.no_grad(), float32_attention(model, float32_sdpa):
            parts = []
            for chunk in chunks:
                ids, mask = left_pad([prompts[i] for i in chunk], pad_id)
                parts.append(_decode_batch(model, ids.to(device), mask.to(device), settings))
            merged = _merge(parts, order, pad_id)
    finally:
        for module, was_training in training_flags:
            module.training = was_training
    return merged
