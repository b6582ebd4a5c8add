"""Scoring a rollout: the *score* of each whole response, from the frozen reward model or any function.

A scorer is anything callable as ``scorer(prompts, rollout) -> scores`` (:class:`Scorer`): ``prompts`` are the
rows' prompts (text or messages, as in the data file), ``rollout`` a :class:`~rlhfkit.rollout.experience.Rollout`
with its ids and masks; ``scores`` is a (B,) float tensor. Two kinds:

- :class:`RewardModelScorer` — the frozen reward model's normalised score (``gain · raw + bias``, stored in the
  model's config after reward training, so reference responses average 0; Ziegler et al. 2019 §2.2). When the
  reward model shares the policy's vocabulary, it reads the policy's token ids directly. When it does not (a
  reward model built on another base), each response is **decoded to text and re-encoded** with the reward
  tokenizer and its chat template, prompt included — as a human rater would read it. The separator the
  policy's template writes before a response (e.g. a space) is removed first (:func:`assistant_contents`).
- :class:`FunctionScorer` — ``fn(prompt, response_text) -> float`` per row: a programmatic judge (the built-in
  world's gold judge has this ``score(prompt, response)`` interface), or a known scorer in tests.

A response cut at ``max_new_tokens`` has no EOS; the re-encoded text then carries no EOS either, so both paths
show the reward model the same thing. (The optional missing-EOS penalty is applied by the PPO step.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from rlhfkit.rollout.experience import Rollout

__all__ = ["Scorer", "RewardModelScorer", "FunctionScorer", "response_texts", "assistant_contents",
           "ends_with_eos", "same_vocabulary"]


class Scorer(Protocol):
    def __call__(self, prompts: Sequence[Any], rollout: Rollout) -> torch.Tensor:
        """(B,) float32 scores, one per row of ``rollout`` (row i answers ``prompts[i]``)."""
        ...


def _eos_list(eos_token_id: int | Sequence[int]) -> list[int]:
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]


def ends_with_eos(rollout: Rollout, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B,) bool: the last response token (under ``response_mask``) is an EOS id."""
    lengths = rollout.response_lengths  # (B,)
    last = rollout.response_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
    eos = torch.tensor(_eos_list(eos_token_id), device=last.device)
    return torch.isin(last, eos) & (lengths > 0)


def response_texts(tokenizer, rollout: Rollout, eos_token_id: int | Sequence[int] | None = None) -> list[str]:
    """Each row's response as text: its tokens up to (not including) a final EOS, special tokens skipped."""
    eos = set(_eos_list(tokenizer.eos_token_id if eos_token_id is None else eos_token_id))
    texts = []
    for row, n in zip(rollout.response_ids, rollout.response_lengths.tolist()):
        ids = row[:n].tolist()
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


def assistant_contents(tokenizer, prompts: Sequence[Any], texts: Sequence[str],
                       template: str | None = None) -> list[str]:
    """The assistant message each response text is the rendering of, under the policy's chat template.

    A template may write a separator between the generation prompt and the content (the world template a
    space, the default template the space after "Assistant:"); the policy generates it as part of its
    response. Before the text is rendered again — by another template, or shown to a judge — that separator
    is removed, so it is neither doubled nor judged. Texts not starting with the separator are kept as they are.
    """
    from rlhfkit.data.templates import split_conversation

    marker = "\ue000"  # a private-use character: never in real text
    contents = []
    for prompt, text in zip(prompts, texts):
        _, rendered = split_conversation(tokenizer, prompt, marker, template=template)
        separator = rendered[: rendered.index(marker)]
        contents.append(text[len(separator):] if separator and text.startswith(separator) else text)
    return contents


def same_vocabulary(policy_tokenizer, reward_tokenizer) -> bool:
    """True when every token of the policy's vocabulary has the same id in the reward tokenizer.

    The reward tokenizer may hold extra tokens (its dedicated pad, see ``rlhfkit.models.reward``).
    """
    reward_vocab = reward_tokenizer.get_vocab()
    return all(reward_vocab.get(token) == index for token, index in policy_tokenizer.get_vocab().items())


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class RewardModelScorer:
    """The frozen reward model as a :class:`Scorer` (normalised scores, no gradient, eval mode).

    ``retokenize``: ``"never"`` (pass the policy's ids), ``"always"`` (decode → re-encode), or ``"auto"``
    (ids when :func:`same_vocabulary`, else text). ``template``: the chat template for re-encoding (None: the
    reward tokenizer's own); ``policy_template``: the one the policy's prompts were rendered with (None: the
    policy tokenizer's own), to recover each response's content (:func:`assistant_contents`). ``batch_size``:
    rows per forward (None: all at once).
    """

    def __init__(self, model, reward_tokenizer, policy_tokenizer, *, retokenize: str = "auto",
                 template: str | None = None, policy_template: str | None = None, batch_size: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None) -> None:
        if retokenize not in ("auto", "always", "never"):
            raise ValueError(f"retokenize must be auto, always or never; got {retokenize!r}")
        shared = same_vocabulary(policy_tokenizer, reward_tokenizer)
        if retokenize == "never" and not shared:
            raise ValueError("reward_model.retokenize=never, but the reward model's tokenizer gives some policy "
                             "tokens other ids; use retokenize=auto or always")
        self.model = model.eval()
        self.reward_tokenizer = reward_tokenizer
        self.policy_tokenizer = policy_tokenizer
        self.template = template
        self.policy_template = policy_template
        self.batch_size = batch_size
        self.eos_token_id = policy_tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.retokenized = retokenize == "always" or (retokenize == "auto" and not shared)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], rollout: Rollout) -> torch.Tensor:
        if len(prompts) != rollout.batch_size:
            raise ValueError(f"{len(prompts)} prompts for a rollout of {rollout.batch_size} rows")
        if self.retokenized:
            return self.score_ids(*self.encode_for_reward_model(prompts, rollout))
        return self.score_query_response(rollout)

    def score_query_response(self, rollout: Rollout) -> torch.Tensor:
        """Normalised scores of the rollout's query ⧺ response in the policy's ids (the same vocabulary), a
        query repeated in the batch forwarded once (:func:`~rlhfkit.models.heads.score_query_response`). (B,)"""
        from rlhfkit.models.heads import get_score_normalization, score_query_response

        device = next(self.model.parameters()).device
        gain, bias = get_score_normalization(self.model)
        size = self.batch_size or rollout.batch_size
        fields = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
        parts = [gain * score_query_response(self.model, *(t[i : i + size].to(device) for t in fields)) + bias
                 for i in range(0, rollout.batch_size, size)]
        return torch.cat(parts).float().cpu()

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised scores of (B, L) sequences in reward-model ids; any padding side. (B,) float32."""
        from rlhfkit.models.heads import normalized_scores

        device = next(self.model.parameters()).device
        size = self.batch_size or input_ids.shape[0]
        parts = [normalized_scores(self.model, input_ids[i : i + size].to(device),
                                   attention_mask[i : i + size].to(device))
                 for i in range(0, input_ids.shape[0], size)]
        return torch.cat(parts).float().cpu()

    def encode_for_reward_model(self, prompts: Sequence[Any], rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode each response, re-encode ``prompt + response`` with the reward tokenizer: (B, L) right-padded.

        The response keeps its EOS only if the policy produced one (the template's EOS is removed otherwise).
        """
        from rlhfkit.data.encode import encode_pair

        texts = response_texts(self.policy_tokenizer, rollout, self.eos_token_id)
        texts = assistant_contents(self.policy_tokenizer, prompts, texts, self.policy_template)
        ended = ends_with_eos(rollout, self.eos_token_id).tolist()
        reward_eos = self.reward_tokenizer.eos_token_id
        rows = []
        for prompt, text, has_eos in zip(prompts, texts, ended):
            prompt_ids, response_ids = encode_pair(self.reward_tokenizer, prompt, text, template=self.template)
            if not has_eos and response_ids and response_ids[-1] == reward_eos:
                response_ids = response_ids[:-1]
            rows.append(prompt_ids + response_ids)
        pad_id = self.reward_tokenizer.pad_token_id
        return _right_pad(rows, reward_eos if pad_id is None else pad_id)


class FunctionScorer:
    """``fn(prompt, response) -> float`` applied to each row. ``response`` is the assistant message's text:
    decoded with ``tokenizer``, without the EOS and the separator of the policy's ``template``
    (:func:`assistant_contents`; None = the tokenizer's own template)."""

    def __init__(self, fn: Callable[[Any, str], float], tokenizer, *, template: str | None = None,
                 eos_token_id: int | Sequence[int] | None = None) -> None:
        self.fn = fn
        self.tokenizer = tokenizer
        self.template = template
        self.eos_token_id = eos_token_id

    def __call__(self, prompts: Sequence[Any], rollout: Rollout) -> torch.Tensor:
        if len(prompts) != rollout.batch_size:
            raise ValueError(f"{len(prompts)} prompts for a rollout of {rollout.batch_size} rows")
        texts = response_texts(self.tokenizer, rollout, self.eos_token_id)
        texts = assistant_contents(self.tokenizer, prompts, texts, self.template)
        return torch.tensor([float(self.fn(p, t)) for p, t in zip(prompts, texts)], dtype=torch.float32)
