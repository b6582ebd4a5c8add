"""Tokenization with an exact prompt/response boundary. Needs only a tokenizer object; no torch.

For each row the chat template gives ``prompt_text`` (ending with the generation prompt) and
``response_text`` (what follows it, see ``templates.split_conversation``). Then:

- ``prompt_ids`` = the tokens of ``prompt_text`` with ``add_special_tokens=False``, starting with exactly
  the special tokens the tokenizer itself puts first (a Llama BOS), once: a template that writes
  ``{{ bos_token }}`` and a tokenizer that adds BOS would otherwise give two; a template without it
  would give none where the model was trained with one.
- ``response_ids`` = the tokens that follow ``prompt_ids`` when the whole conversation is tokenized at
  once — the ids a model generates after the prompt. If a tokenizer merges characters across the
  boundary (the joint tokens do not start with ``prompt_ids``), the response text is tokenized on its
  own instead and the row counted in ``EncodeReport.n_boundary_fallback``.
- the response ends with exactly one EOS: the template's, or ``eos_token_id`` appended.
- labels are ``IGNORE_INDEX`` on the prompt and the response ids on the response.

Truncation: ``max_prompt_length`` keeps the END of the prompt (left truncation; the leading BOS is
kept), then ``max_length`` (prompt + response) keeps the START of the response (the cut response then
has no EOS: the model must not learn to stop there). A row whose response would be empty, or whose
chosen and rejected become identical, is dropped. Every truncation and drop is counted in an
:class:`EncodeReport`; :func:`format_encode_report` makes it one log line. If every row is dropped,
:class:`~rlhfkit.data.formats.DataValidationError` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.data.formats import DataValidationError
from rlhfkit.data.rankings import ComparisonGroup
from rlhfkit.data.rows import Prompt, Response
from rlhfkit.data.templates import TemplateError, Tools, render_prompt, split_conversation

IGNORE_INDEX = -100  # equals rlhfkit.ops.IGNORE_INDEX; repeated so this module never imports torch
MAX_LISTED_DROPS = 5


@dataclass
class EncodedSFT:
    """One SFT example. ``input_ids = prompt_ids + response_ids``; ``index`` is the row's position."""

    prompt_ids: list[int]
    response_ids: list[int]
    index: int = 0
    origin: str = ""

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * len(self.prompt_ids) + self.response_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class EncodedPreference:
    """One comparison: ``prompt_ids + chosen_ids`` is preferred over ``prompt_ids + rejected_ids``."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int = 0
    origin: str = ""

    def __len__(self) -> int:  # the longer sequence, for length grouping
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class EncodedPrompt:
    """A prompt to generate from (RL rollouts, evaluation)."""

    prompt_ids: list[int]
    index: int = 0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclass
class EncodedGroup:
    """A :class:`~rlhfkit.data.rankings.ComparisonGroup`, tokenized. ``pairs`` index ``response_ids``."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    pairs: list[tuple[int, int]]
    index: int = 0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(r) for r in self.response_ids)


@dataclass
class EncodeReport:
    """What tokenization changed. Counts are rows (a preference row counts once)."""

    n_rows: int = 0  # rows given
    n_truncated_prompt: int = 0  # prompts cut to their last max_prompt_length tokens
    n_truncated_response: int = 0  # rows with a response cut to fit max_length
    n_dropped: int = 0  # rows removed (response empty after truncation, pair identical after it)
    n_boundary_fallback: int = 0  # rows whose response was tokenized alone (merge across the boundary)
    max_length: int | None = None
    max_prompt_length: int | None = None
    dropped: list[str] = field(default_factory=list)  # the first few drops, one sentence each

    @property
    def n_kept(self) -> int:
        return self.n_rows - self.n_dropped


def format_encode_report(report: EncodeReport, name: str = "rows") -> str:
    """One line for logs, e.g. ``sft: 1000 rows, 997 kept; 12 prompts truncated (…); 3 dropped (…)``."""
    parts = [f"{report.n_rows} rows, {report.n_kept} kept"]
    parts.append(
        f"{report.n_truncated_prompt} prompts truncated (kept the end, "
        f"max_prompt_length={report.max_prompt_length})"
    )
    parts.append(
        f"{report.n_truncated_response} responses truncated (kept the start, max_length={report.max_length})"
    )
    dropped = f"{report.n_dropped} dropped"
    if report.dropped:
        dropped += f" (first: {report.dropped[0].rstrip('.')})"
    parts.append(dropped)
    if report.n_boundary_fallback:
        parts.append(f"{report.n_boundary_fallback} responses tokenized apart from their prompt")
    return f"{name}: " + "; ".join(parts)


def special_prefix_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text by itself (``[bos_id]`` for Llama, ``[]`` for GPT-2)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


class _Encoder:
    """Tokenizer facts looked up once per call: EOS id, special prefix, template (and the tools it lists)."""

    def __init__(
        self, tokenizer: Any, template: str | None, max_length: int | None, max_prompt_length: int | None,
        tools: Tools = None,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.tools = tools
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(
                "the tokenizer has no EOS token (eos_token_id is None); set tokenizer.eos_token "
                "so responses can end"
            )
        self.prefix = special_prefix_ids(tokenizer)
        _check_lengths(max_length, max_prompt_length, len(self.prefix))
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def with_prefix(self, ids: list[int]) -> list[int]:
        """Start ``ids`` with the tokenizer's special prefix exactly once."""
        p = len(self.prefix)
        if not p:
            return ids
        if ids[:p] != self.prefix:
            ids = self.prefix + ids
        while ids[p : 2 * p] == self.prefix:  # the template wrote BOS and so did something else
            del ids[p : 2 * p]
        return ids

    def prompt(self, prompt: Prompt, origin: str) -> list[int]:
        try:
            return self.with_prefix(
                self.tokens(render_prompt(self.tokenizer, prompt, template=self.template, tools=self.tools))
            )
        except TemplateError as exc:
            raise TemplateError(f"{origin}: {exc}") from None

    def response(
        self, prompt: Prompt, response: Response, prompt_ids: list[int], origin: str
    ) -> tuple[list[int], bool]:
        """(response ids ending in one EOS, whether the boundary fallback was needed)."""
        try:
            prompt_text, response_text = split_conversation(
                self.tokenizer, prompt, response, template=self.template, tools=self.tools
            )
        except TemplateError as exc:
            raise TemplateError(f"{origin}: {exc}") from None
        joint = self.with_prefix(self.tokens(prompt_text + response_text))
        fallback = joint[: len(prompt_ids)] != prompt_ids
        ids = self.tokens(response_text) if fallback else joint[len(prompt_ids) :]
        return self.end_with_one_eos(ids), fallback

    def end_with_one_eos(self, ids: list[int]) -> list[int]:
        if self.eos_id in ids:  # drop what a template writes after the final EOS (e.g. a newline)
            last = len(ids) - 1 - ids[::-1].index(self.eos_id)
            if not self.tokenizer.decode(ids[last + 1 :]).strip():
                ids = ids[: last + 1]
        if not ids or ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
        while len(ids) >= 2 and ids[-2] == self.eos_id:  # a response that already ended with EOS text
            ids = ids[:-1]
        return ids

    def truncate_prompt(self, ids: list[int]) -> tuple[list[int], bool]:
        """Keep the last ``max_prompt_length`` tokens, with the special prefix kept in front."""
        if self.max_prompt_length is None or len(ids) <= self.max_prompt_length:
            return ids, False
        kept_prefix = len(self.prefix) if ids[: len(self.prefix)] == self.prefix else 0
        keep = self.max_prompt_length - kept_prefix
        return ids[:kept_prefix] + ids[len(ids) - keep :], True

    def room(self, prompt_ids: list[int]) -> int | None:
        """Response tokens that fit after the prompt under ``max_length`` (None: no limit)."""
        return None if self.max_length is None else self.max_length - len(prompt_ids)


def _check_lengths(max_length: int | None, max_prompt_length: int | None, n_prefix: int) -> None:
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length <= n_prefix:
        raise ValueError(
            f"max_prompt_length must exceed the {n_prefix} special token(s) the tokenizer puts "
            f"first, got {max_prompt_length}"
        )
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length}) "
            "so that every response keeps at least one token"
        )


def _cut(ids: list[int], room: int | None) -> tuple[list[int], bool]:
    if room is None or len(ids) <= room:
        return ids, False
    return ids[: max(room, 0)], True


def _drop(report: EncodeReport, sentence: str) -> None:
    report.n_dropped += 1
    if len(report.dropped) < MAX_LISTED_DROPS:
        report.dropped.append(sentence)


def _no_room(origin: str, n_prompt: int, max_length: int | None) -> str:
    return (
        f"{origin}: the prompt's {n_prompt} tokens leave no room for a response under "
        f"max_length={max_length} (row dropped; set max_prompt_length to truncate prompts)."
    )


def _finish(kept: list, report: EncodeReport, what: str) -> None:
    if report.n_rows and not kept:
        summary = (
            f"all {report.n_rows} {what} rows were dropped by truncation (max_length={report.max_length}, "
            f"max_prompt_length={report.max_prompt_length}); the first {len(report.dropped)} follow."
        )
        raise DataValidationError([summary, *report.dropped], f"encode {what}", "nothing is left to train on")


def _new_report(encoder: _Encoder, n_rows: int) -> EncodeReport:
    return EncodeReport(
        n_rows=n_rows, max_length=encoder.max_length, max_prompt_length=encoder.max_prompt_length
    )


def encode_pair(
    tokenizer: Any, prompt: Prompt, response: Response, *, template: str | None = None
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` of one prompt/response, untruncated (e.g. to score generated text)."""
    encoder = _Encoder(tokenizer, template, None, None)
    prompt_ids = encoder.prompt(prompt, "encode_pair")
    return prompt_ids, encoder.response(prompt, response, prompt_ids, "encode_pair")[0]


def encode_sft(
    tokenizer: Any,
    rows: Sequence[Any],
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    template: str | None = None,
) -> tuple[list[EncodedSFT], EncodeReport]:
    """Tokenize SFT rows (anything with ``prompt``, ``response``, ``origin``: ``SFTRow``)."""
    encoder = _Encoder(tokenizer, template, max_length, max_prompt_length)
    report = _new_report(encoder, len(rows))
    out = []
    for index, row in enumerate(rows):
        full_prompt = encoder.prompt(row.prompt, row.origin)
        response, fallback = encoder.response(row.prompt, row.response, full_prompt, row.origin)
        prompt, cut_prompt = encoder.truncate_prompt(full_prompt)
        response, cut_response = _cut(response, encoder.room(prompt))
        if not response:
            _drop(report, _no_room(row.origin, len(prompt), max_length))
            continue
        report.n_truncated_prompt += cut_prompt
        report.n_truncated_response += cut_response
        report.n_boundary_fallback += fallback
        out.append(EncodedSFT(prompt, response, index, row.origin))
    _finish(out, report, "sft")
    return out, report


def encode_preference(
    tokenizer: Any,
    rows: Sequence[Any],
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    template: str | None = None,
) -> tuple[list[EncodedPreference], EncodeReport]:
    """Tokenize preference rows (``PreferenceRow``); chosen and rejected share the prompt's ids."""
    encoder = _Encoder(tokenizer, template, max_length, max_prompt_length)
    report = _new_report(encoder, len(rows))
    out = []
    for index, row in enumerate(rows):
        full_prompt = encoder.prompt(row.prompt, row.origin)
        chosen, fallback_c = encoder.response(row.prompt, row.chosen, full_prompt, row.origin)
        rejected, fallback_r = encoder.response(row.prompt, row.rejected, full_prompt, row.origin)
        prompt, cut_prompt = encoder.truncate_prompt(full_prompt)
        room = encoder.room(prompt)
        chosen, cut_c = _cut(chosen, room)
        rejected, cut_r = _cut(rejected, room)
        if not chosen or not rejected:
            _drop(report, _no_room(row.origin, len(prompt), max_length))
            continue
        if chosen == rejected and (cut_c or cut_r):
            _drop(
                report,
                f"{row.origin}: chosen and rejected are identical after truncation to "
                f"max_length={max_length} (row dropped: no preference signal left).",
            )
            continue
        report.n_truncated_prompt += cut_prompt
        report.n_truncated_response += cut_c or cut_r
        report.n_boundary_fallback += fallback_c or fallback_r
        out.append(EncodedPreference(prompt, chosen, rejected, index, row.origin))
    _finish(out, report, "preference")
    return out, report


def encode_groups(
    tokenizer: Any,
    groups: Sequence[ComparisonGroup],
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    template: str | None = None,
) -> tuple[list[EncodedGroup], EncodeReport]:
    """Tokenize comparison groups (``rankings.ranking_groups``). A pair whose two responses become
    identical after truncation is removed; a group with no pair left is dropped."""
    encoder = _Encoder(tokenizer, template, max_length, max_prompt_length)
    report = _new_report(encoder, len(groups))
    out = []
    for index, group in enumerate(groups):
        full_prompt = encoder.prompt(group.prompt, group.origin)
        encoded = [encoder.response(group.prompt, r, full_prompt, group.origin) for r in group.responses]
        prompt, cut_prompt = encoder.truncate_prompt(full_prompt)
        cuts = [_cut(ids, encoder.room(prompt)) for ids, _ in encoded]
        responses = [ids for ids, _ in cuts]
        if not all(responses):
            _drop(report, _no_room(group.origin, len(prompt), max_length))
            continue
        pairs = [
            (c, r) for c, r in group.pairs if responses[c] != responses[r] or not (cuts[c][1] or cuts[r][1])
        ]
        if not pairs:
            _drop(
                report,
                f"{group.origin}: every pair is identical after truncation to max_length={max_length} "
                "(group dropped: no preference signal left).",
            )
            continue
        report.n_truncated_prompt += cut_prompt
        report.n_truncated_response += any(cut for _, cut in cuts)
        report.n_boundary_fallback += any(fallback for _, fallback in encoded)
        out.append(EncodedGroup(prompt, responses, pairs, index, group.origin))
    _finish(out, report, "ranking")
    return out, report


def encode_prompt(
    tokenizer: Any, rows: Sequence[Any], *, max_prompt_length: int | None = None, template: str | None = None,
    tools: Tools = None,
) -> tuple[list[EncodedPrompt], EncodeReport]:
    """Tokenize prompts (any row with ``prompt`` and ``origin``), ending with the generation prompt.

    Over-long prompts keep their end (left truncation, leading BOS kept); nothing is dropped. ``tools``: the
    schemas the chat template lists (an environment's, docs/tools.md; ``templates.render_prompt``).
    """
    encoder = _Encoder(tokenizer, template, None, max_prompt_length, tools)
    report = _new_report(encoder, len(rows))
    out = []
    for index, row in enumerate(rows):
        prompt, cut = encoder.truncate_prompt(encoder.prompt(row.prompt, row.origin))
        report.n_truncated_prompt += cut
        out.append(EncodedPrompt(prompt, index, row.origin))
    return out, report
