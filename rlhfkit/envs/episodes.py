"""The multi-turn episode runner: model turn → observation → model turn … for a batch of prompts.

:func:`run_episodes` samples each model turn with :func:`rlhfkit.rollout.generate.generate` (a turn pauses at
EOS, at one of the environment's ``stop_strings``, or when its budget runs out), asks the environment for an
observation, appends its tokens (``tokenizer.encode(observation, add_special_tokens=False)``) as *environment
tokens*, and goes on until every episode is done. What ends an episode:

- the model's EOS (with an environment that has ``stop_strings``; without any, EOS ends a turn and the
  environment is asked, None ending the episode);
- the budget: ``max_new_tokens`` counts the **model's** tokens over the whole episode (every turn's, EOS
  included; environment tokens do not count) — a row cut there has no EOS;
- ``max_turns`` model turns: a call in the last turn is not answered and ends the episode there (a pause at
  text that is not a call resumes, as in any turn);
- the model's context (``max_position_embeddings``) full, or an observation that would not fit in it.

A turn that paused at a stop string which the environment does not answer (``step`` returns None: the text
``=`` in ``7 plus 5 = 12`` is not a call) resumes: the same turn goes on. So the last response token of
every row is always a model token, and every row has at least one.

Each segment of a turn re-prefills prompt + response so far (no KV cache kept across turns: the engine's
cache is preallocated per call and rows of one batch diverge in length after the first observation; a
prefill is one batched forward, cheap beside the token-by-token decoding). Rows that need the same number of
steps share a call; a row that needs fewer leaves the running batch as it ends (``drop_finished``).

RNG: only ``generator`` (through ``generate``), so the same generator state gives the same episodes — the
trainer's checkpointed sampling generator makes them resumable like single-turn rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhfkit.envs.environment import Conversation, Turn
from rlhfkit.rollout.generate import generate, left_pad


@dataclass
class EpisodeOutput:
    """B episodes, row i = prompt i. Responses interleave model and environment tokens, right-padded."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 1 = prompt token
    response_ids: torch.Tensor  # (B, T) long: model and environment tokens in order, right-padded
    response_mask: torch.Tensor  # (B, T) long: 1 on every response token (model, environment, EOS), 0 = padding
    env_mask: torch.Tensor  # (B, T) long: 1 on environment tokens (context only), 0 on model tokens and padding
    ended_with_eos: torch.Tensor  # (B,) bool: the last response token is an EOS
    logprobs: torch.Tensor  # (B, T) float32 sampling log π_T(a_t|s_t) of model tokens; 0 on environment tokens
    entropy: torch.Tensor  # (B, T) float32 sampling entropy at model tokens; 0 elsewhere
    turns: torch.Tensor  # (B,) long: model turns
    tool_calls: torch.Tensor  # (B,) long: observations (each answers one call)
    tool_errors: torch.Tensor  # (B,) long: observations that report an error
    conversations: list[Conversation]

    @property
    def action_mask(self) -> torch.Tensor:
        """(B, T): 1 on the model's own tokens."""
        return self.response_mask * (1 - self.env_mask)

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: response tokens per row (model and environment), EOS included."""
        return self.response_mask.sum(dim=1)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P + T) ids and attention mask of prompt ⧺ response."""
        return (torch.cat([self.prompt_ids, self.response_ids], dim=1),
                torch.cat([self.prompt_mask, self.response_mask], dim=1))

    def response_token_lists(self) -> list[list[int]]:
        """Each row's response ids without padding (environment tokens included)."""
        return [row[: int(n)].tolist() for row, n in zip(self.response_ids, self.response_lengths)]


@dataclass
class _Row:
    prompt: list[int]
    conversation: Conversation
    budget: int
    tokens: list[int]
    env: list[int]
    logprobs: list[float]
    entropy: list[float]
    turn_tokens: list[int]  # the current model turn's tokens
    turns: int = 1
    calls: int = 0
    errors: int = 0
    done: bool = False


class _StopStrings:
    """``stop(tokens)``: the decoded tail of a segment contains a stop string. The tail is long enough to hold
    any stop string (≥ 4 tokens per character: byte-level pieces of one UTF-8 character), and it is checked
    after every token, so a stop string is found at the token that completes it — whatever the BPE merges."""

    def __init__(self, tokenizer, stop_strings: Sequence[str]) -> None:
        self.tokenizer, self.stop_strings = tokenizer, tuple(s for s in stop_strings if s)
        self.window = 4 * max((len(s) for s in self.stop_strings), default=0) + 4

    def __call__(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens[-self.window:], skip_special_tokens=False)
        return any(s in text for s in self.stop_strings)


def run_episodes(model, tokenizer, prompts: Sequence[Sequence[int]], environment, *, max_new_tokens: int,
                 max_turns: int, eos_token_id: int | Sequence[int], pad_token_id: int | None,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                 generator: torch.Generator | None = None) -> EpisodeOutput:
    """Episodes from ``prompts`` (token-id lists) against ``environment``; see the module docstring."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be ≥ 1, got {max_turns}")
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(int(i) for i in eos_token_id)
    pad = min(eos) if pad_token_id is None else int(pad_token_id)
    stop_strings = tuple(getattr(environment, "stop_strings", ()) or ())
    stop = _StopStrings(tokenizer, stop_strings) if stop_strings else None
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limit = limit or 10**9
    rows = [_Row(list(p), Conversation(tokenizer.decode(list(p), skip_special_tokens=True), [Turn("model", "")]),
                 max_new_tokens, [], [], [], [], []) for p in prompts]
    while True:
        active = [r for r in rows if not r.done]
        if not active:
            break
        longest = max(len(r.prompt) + len(r.tokens) for r in active)
        steps = min(max(r.budget for r in active), limit - longest)
        out = generate(model, [r.prompt + r.tokens for r in active], max_new_tokens=steps, temperature=temperature,
                       top_p=top_p, top_k=top_k, greedy=greedy, eos_token_id=sorted(eos), pad_token_id=pad,
                       generator=generator, return_logprobs=True, stop=stop)
        for i, row in enumerate(active):
            n = min(int(out.response_mask[i].sum()), row.budget)
            new = out.response_ids[i, :n].tolist()
            row.tokens += new
            row.env += [0] * n
            row.logprobs += out.logprobs[i, :n].tolist()
            row.entropy += out.entropy[i, :n].tolist()
            row.turn_tokens += new
            row.budget -= n
            text = tokenizer.decode([t for t in row.turn_tokens if t not in eos], skip_special_tokens=False)
            row.conversation.turns[-1].text = text
            _after_segment(row, new, eos, stop, environment, tokenizer, max_turns, limit)
    return _pack(rows, pad, eos, next(model.parameters()).device)


def _after_segment(row: _Row, new: list[int], eos: set[int], stop, environment, tokenizer, max_turns: int,
                   limit: int) -> None:
    """Decide what follows a generated segment: done, the same turn resumed, or an observation and a new turn."""
    ended = bool(new) and new[-1] in eos
    paused = not ended and stop is not None and bool(new) and stop(new)
    context_full = len(row.prompt) + len(row.tokens) >= limit
    if ended and stop is not None:
        row.done = True  # an environment that answers at stop strings: EOS ends the episode
        return
    if not (ended or paused):  # the budget, the context, or this call's step cap (then the turn goes on)
        row.done = row.budget <= 0 or context_full
        return
    if row.budget <= 0 or context_full:
        row.done = True  # no room for another model token: an observation would be read by nobody
        return
    observation = environment.step(row.conversation)
    if observation is None:
        row.done = ended  # paused at text that is not a call: the model's turn resumes
        return
    if row.turns >= max_turns:
        row.done = True  # a call in the last turn: not answered, the episode ends there (no EOS)
        return
    ids = tokenizer.encode(str(observation), add_special_tokens=False)
    if not ids or len(row.prompt) + len(row.tokens) + len(ids) >= limit:
        row.done = bool(ids)  # an empty observation: the model simply goes on
        return
    row.tokens += ids
    row.env += [1] * len(ids)
    row.logprobs += [0.0] * len(ids)
    row.entropy += [0.0] * len(ids)
    row.conversation.turns += [Turn("environment", str(observation)), Turn("model", "")]
    row.turn_tokens = []
    row.turns += 1
    row.calls += 1
    row.errors += int(bool(getattr(observation, "is_error", False)))


def _pack(rows: list[_Row], pad: int, eos: set[int], device: torch.device) -> EpisodeOutput:
    prompt_ids, prompt_mask = left_pad([r.prompt for r in rows], pad)
    width = max(len(r.tokens) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    env = torch.zeros_like(mask)
    logprobs = torch.zeros((len(rows), width))
    entropy = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        n = len(r.tokens)
        ids[i, :n] = torch.tensor(r.tokens, dtype=torch.long)
        mask[i, :n] = 1
        env[i, :n] = torch.tensor(r.env, dtype=torch.long)
        logprobs[i, :n] = torch.tensor(r.logprobs)
        entropy[i, :n] = torch.tensor(r.entropy)
    ended = torch.tensor([bool(r.tokens) and r.tokens[-1] in eos for r in rows])
    stats = {name: torch.tensor([getattr(r, name) for r in rows]) for name in ("turns", "calls", "errors")}
    tensors = [t.to(device) for t in (prompt_ids, prompt_mask, ids, mask, env, ended, logprobs, entropy,
                                      stats["turns"], stats["calls"], stats["errors"])]
    return EpisodeOutput(*tensors, [r.conversation for r in rows])
