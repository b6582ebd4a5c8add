"""Sampling K responses per prompt from a policy, as texts for judges and as tokens for KL.

Each prompt is rendered with the chat template (:func:`rlhfkit.data.render_prompt`, via
:func:`rlhfkit.data.encode_prompt`, which also puts a BOS-adding tokenizer's prefix exactly once), the
K copies of every prompt are decoded together by :func:`rlhfkit.rollout.generate.generate` (left-padded
batches, KV cache), and each response is decoded **without special tokens** (EOS, role markers) and
stripped of surrounding whitespace — the judges read text, and a leftover ``</s>`` would be garbage to
the gold judge.

Reproducibility: one ``torch.Generator`` seeded with ``seed`` drives the whole call, and the batches are
fixed by the prompts, ``n_samples`` and ``batch_size`` (``generate`` groups rows by length, stably). So
the same arguments give the same samples on the same machine and software; a different ``batch_size``
gives different, equally valid samples (each decoding step draws one token per row of a batch from the
shared generator, so which draw a row gets depends on its batch). Keep ``batch_size`` fixed when
comparing runs. Evaluation samples at temperature 1 with top-p 1, i.e. from the policy itself, which is
what the KL estimate of :mod:`rlhfkit.evaluate.kl` requires.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data import PromptRow, encode_prompt
from rlhfkit.envs.environment import tool_schemas
from rlhfkit.rollout.generate import GenerationOutput, generate

# Independent random streams for the two sides of a comparison (see `stream_seed`).
STREAMS = {"policy": 0, "baseline": 1}


def stream_seed(seed: int, role: str) -> int:
    """The sampling seed of ``role`` ("policy" or "baseline") for evaluation seed ``seed``: ``2·seed + stream``.

    Why two streams: with one seed for both sides, two similar policies would draw the same random numbers
    and produce identical text more often than independent samples do, which inflates the tie and
    identical-output fractions the protocol reports. Distinct parities never collide across seeds.
    """
    if role not in STREAMS:
        raise ValueError(f"unknown sampling role {role!r}; valid: {', '.join(STREAMS)}")
    return 2 * int(seed) + STREAMS[role]


@dataclass
class PolicySamples:
    """``n_samples`` responses per prompt from one policy.

    ``texts[i][j]`` is the j-th response to ``prompts[i]``. ``generation`` holds the tokens, one row per
    response in prompt-major order (row ``i · n_samples + j`` is ``texts[i][j]``); it is None for samples
    built from texts alone (:meth:`from_texts`), which can be judged but not used for KL.
    """

    prompts: list[Any]  # str or a list of chat messages (world prompts are stored as their text)
    texts: list[list[str]]
    n_samples: int
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int | None = None
    generation: GenerationOutput | None = None

    @classmethod
    def from_texts(cls, prompts: Sequence[Any], texts: Sequence[Sequence[str]]) -> PolicySamples:
        """Samples given as texts (e.g. best-of-N picks, or responses from elsewhere); no tokens."""
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts but {len(texts)} lists of responses")
        counts = {len(t) for t in texts}
        if len(counts) > 1 or 0 in counts:
            raise ValueError(f"every prompt needs the same number (>= 1) of responses, got {sorted(counts)}")
        return cls([as_data_prompt(p) for p in prompts], [list(t) for t in texts], counts.pop() if counts else 0)

    def row(self, i: int, j: int) -> int:
        """Row of ``generation`` holding ``texts[i][j]``."""
        return i * self.n_samples + j

    def subset(self, indices: Sequence[int]) -> PolicySamples:
        """The samples of the prompts at ``indices`` only (tokens included)."""
        generation = None
        if self.generation is not None:
            rows = torch.tensor([self.row(i, j) for i in indices for j in range(self.n_samples)], dtype=torch.long)
            g = self.generation
            generation = dataclasses.replace(g, **{  # a GenerationOutput or an EpisodeOutput, every row field
                f.name: (value.index_select(0, rows.to(value.device)) if isinstance(value, torch.Tensor)
                         else [value[int(r)] for r in rows])
                for f in dataclasses.fields(g) if (value := getattr(g, f.name)) is not None})
        return PolicySamples([self.prompts[i] for i in indices], [self.texts[i] for i in indices], self.n_samples,
                             self.seed, self.temperature, self.top_p, self.max_new_tokens, self.batch_size,
                             generation)

    def mean_tokens(self) -> float | None:
        """Mean response length in tokens, EOS included (None without tokens)."""
        if self.generation is None:
            return None
        return float(self.generation.response_lengths.float().mean())


def as_data_prompt(prompt: Any) -> Any:
    """A prompt as the data layer takes it: text or chat messages. World ``Prompt``s become their text and
    ``PromptRow``s their prompt."""
    if isinstance(prompt, PromptRow):
        return prompt.prompt
    if not isinstance(prompt, str | list | tuple) and isinstance(getattr(prompt, "text", None), str):
        return prompt.text
    return prompt


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS plus the model's ``generation_config`` EOS id(s)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for value in [extra] if isinstance(extra, int) else list(extra or []):
        if int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model's generation config names none; "
                         "set tokenizer.eos_token so responses can end")
    return ids


def decode_response(tokenizer, token_ids: Sequence[int], eos_ids: Sequence[int]) -> str:
    """Response text: tokens before the first EOS, decoded without special tokens, stripped."""
    ids = list(token_ids)
    for position, token in enumerate(ids):
        if token in eos_ids:
            ids = ids[:position]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def sample_policy(model, tokenizer, prompts: Sequence[Any], n_samples: int, *, seed: int, max_new_tokens: int = 48,
                  temperature: float = 1.0, top_p: float = 1.0, batch_size: int | None = 64,
                  template: str | None = None, max_prompt_length: int | None = None, environment=None,
                  max_turns: int = 4) -> PolicySamples:
    """``n_samples`` responses per prompt (texts and tokens); see the module docstring for determinism.

    ``prompts``: texts, chat-message lists, world ``Prompt``s or ``PromptRow``s. ``template``: a chat
    template overriding the tokenizer's (``"raw"`` for none). ``max_prompt_length`` keeps the end of
    longer prompts. ``environment`` (:mod:`rlhfkit.envs`): each response is an episode of at most ``max_turns``
    model turns and ``max_new_tokens`` model tokens; its text holds the observations; ``generation`` is then an
    :class:`~rlhfkit.envs.episodes.EpisodeOutput` (its ``action_mask`` is what KL sums over). Its tools go to the
    chat template (``tools=``, as in training), so the policy is evaluated on the prompts it was trained on.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not prompts:
        raise ValueError("sample_policy needs at least one prompt")
    data_prompts = [as_data_prompt(p) for p in prompts]
    rows = [PromptRow(prompt=p, origin=f"prompt {i}") for i, p in enumerate(data_prompts)]
    encoded, _ = encode_prompt(tokenizer, rows, max_prompt_length=max_prompt_length, template=template,
                               tools=tool_schemas(environment))
    prompt_ids = [e.prompt_ids for e in encoded for _ in range(n_samples)]  # prompt-major: row i·K + j
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    if environment is not None:  # episodes: the judge reads the whole text, tool calls and observations included
        output = _episodes(model, tokenizer, prompt_ids, environment, max_new_tokens=max_new_tokens,
                           max_turns=max_turns, temperature=temperature, top_p=top_p, eos_token_id=eos_ids,
                           pad_token_id=pad_id, generator=generator, batch_size=batch_size)
        flat = [decode_episode(tokenizer, ids, eos_ids) for ids in output.response_token_lists()]
    else:
        output = generate(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          eos_token_id=eos_ids, pad_token_id=pad_id, generator=generator, batch_size=batch_size)
        flat = [decode_response(tokenizer, ids, eos_ids) for ids in output.response_token_lists()]
    texts = [flat[i * n_samples : (i + 1) * n_samples] for i in range(len(data_prompts))]
    return PolicySamples(data_prompts, texts, n_samples, int(seed), float(temperature), float(top_p), max_new_tokens,
                         batch_size, output)


def decode_episode(tokenizer, token_ids: Sequence[int], eos_ids: Sequence[int]) -> str:
    """An episode's text: every token (an observation may hold a chat template's EOS-like tokens) but a final
    EOS, decoded without special tokens, stripped."""
    ids = list(token_ids)
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _episodes(model, tokenizer, prompt_ids: list, environment, *, batch_size: int | None, **settings):
    """:func:`rlhfkit.envs.episodes.run_episodes` over chunks of ``batch_size`` rows in order, merged."""
    from rlhfkit.envs.episodes import EpisodeOutput, run_episodes

    size = batch_size or len(prompt_ids)
    parts = [run_episodes(model, tokenizer, prompt_ids[i : i + size], environment, **settings)
             for i in range(0, len(prompt_ids), size)]
    if len(parts) == 1:
        return parts[0]
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_r = max(p.response_ids.shape[1] for p in parts)
    pad_id = settings["pad_token_id"]
    merged = {}
    for f in dataclasses.fields(EpisodeOutput):
        values = [getattr(p, f.name) for p in parts]
        if not isinstance(values[0], torch.Tensor):
            merged[f.name] = [v for part in values for v in part]
            continue
        if values[0].dim() == 2:
            left = f.name.startswith("prompt")
            width = width_p if left else width_r
            fill = pad_id if f.name.endswith("_ids") else 0
            values = [torch.nn.functional.pad(v, (width - v.shape[1], 0) if left else (0, width - v.shape[1]),
                                              value=fill) for v in values]
        merged[f.name] = torch.cat(values)
    return EpisodeOutput(**merged)


def sample_responses(model, tokenizer, prompts: Sequence[Any], n_samples: int, *, temperature: float = 1.0,
                     top_p: float = 1.0, max_new_tokens: int = 48, seed: int, batch_size: int | None = 64,
                     template: str | None = None) -> list[list[str]]:
    """Texts only: ``sample_policy(...).texts`` (``[prompt][sample]``)."""
    return sample_policy(model, tokenizer, prompts, n_samples, seed=seed, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, batch_size=batch_size, template=template).texts
