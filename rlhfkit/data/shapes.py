"""Which row shapes each kind reads — ours and the ecosystem's — and what to say about the ones it does not.

Standard library only. A *kind* (``sft``, ``preference``, ``ranking``, ``prompt``) is what a stage needs; a
*shape* is one way rows of that kind are written. Every shape of a kind parses to the same typed row, with
the same checks and the same one-sentence problems, named after the row's own fields:

=================  ==============================  ===================================================
kind               shape                           keys
=================  ==============================  ===================================================
sft                ours                            ``prompt``, ``response`` — or ``messages``
sft                TRL prompt-completion           ``prompt``, ``completion`` (strings or messages)
preference         explicit prompt (ours, TRL's)   ``prompt``, ``chosen``, ``rejected``
preference         TRL implicit prompt             ``chosen``, ``rejected`` (each holds the prompt)
ranking            ours                            ``prompt``, ``responses``, ``ranking``
prompt             ours, TRL prompt-only           ``prompt``
=================  ==============================  ===================================================

HH-RLHF transcripts (``"\\n\\nHuman: …\\n\\nAssistant: …"``) are accepted wherever a conversation is: in
``prompt``, ``messages``, and the implicit-prompt ``chosen`` / ``rejected``; they are split into turns.

A new kind is one more entry in :data:`SHAPES` (its own shape first: its keys are what an error says is
missing when no shape matches) and, if it has near-misses, entries in :data:`FOREIGN`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from rlhfkit.data.rows import Row
from rlhfkit.data.transcripts import (
    looks_like_hh,
    split_common_prefix,
    split_common_text,
    split_hh_transcript,
)
from rlhfkit.data.validate import (
    PARSERS,
    RowChecker,
    check_messages,
    check_response,
    check_text,
    json_type,
    make_preference,
    parse_prompt_response,
)


@dataclass(frozen=True)
class Shape:
    """One way rows of a kind are written: picked when the row has every key of ``keys``."""

    name: str  # as docs/data-formats.md names it
    keys: frozenset[str]  # all present: this shape reads the row
    reads: frozenset[str]  # every key it reads; any other key is ignored (and counted)
    parse: Callable[[RowChecker, Mapping[str, Any]], Row | None]


def _shape(name: str, keys: Iterable[str], parse, reads: Iterable[str] = ()) -> Shape:
    return Shape(name, frozenset(keys), frozenset(keys) | frozenset(reads), parse)


def _parse_implicit_preference(checker: RowChecker, obj: Mapping[str, Any]) -> Row | None:
    """TRL's implicit prompt: ``chosen`` and ``rejected`` are whole conversations (or texts) sharing their
    start, which is the prompt (TRL's ``extract_prompt``)."""
    chosen, rejected = obj["chosen"], obj["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if check_text(checker, chosen, "chosen") is None or check_text(checker, rejected, "rejected") is None:
            return None
        prompt, chosen_rest, rejected_rest = split_common_text(chosen, rejected)
        if not prompt.strip():
            checker.add("chosen", 'shares no start with "rejected", so no prompt can be split off (TRL\'s '
                        'implicit-prompt format); give the prompt in a "prompt" field')
            return None
        return make_preference(checker, prompt, check_response(checker, chosen_rest, "chosen"),
                               check_response(checker, rejected_rest, "rejected"))
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        checker.add("rejected", f'expected the same type as "chosen" (two strings or two message lists), '
                    f"got {json_type(chosen)} and {json_type(rejected)}")
        return None
    chosen_msgs = check_messages(checker, chosen, "chosen")
    rejected_msgs = check_messages(checker, rejected, "rejected")
    if chosen_msgs is None or rejected_msgs is None:
        return None
    prompt, chosen_rest, rejected_rest = split_common_prefix(chosen_msgs, rejected_msgs)
    if not prompt:
        checker.add("chosen", 'shares no first turns with "rejected", so no prompt can be split off (TRL\'s '
                    'implicit-prompt format); give the prompt in a "prompt" field')
        return None
    if not chosen_rest or not rejected_rest:
        which = "chosen" if not chosen_rest else "rejected"
        checker.add(which, "has no reply after the turns it shares with the other response")
        return None
    parts = []
    for name, rest, offset in (("chosen", chosen_rest, len(prompt)), ("rejected", rejected_rest, len(prompt))):
        for index in (0, len(rest) - 1):
            if rest[index].role != "assistant":
                checker.add(f"{name}[{offset + index}].role",
                            "after the shared prompt a response's first and last turns must be the "
                            f'assistant\'s, got "{rest[index].role}"')
                return None
        parts.append(rest)
    return make_preference(checker, prompt, *parts)


# kind -> its shapes, ours first. A row matching none is read as the shape of the source's other rows, or
# as the first (so a "missing" key is named after the shape the row was meant to have).
SHAPES: dict[str, tuple[Shape, ...]] = {
    "sft": (
        _shape("prompt/response", ("prompt", "response"), PARSERS["sft"], ("messages",)),
        _shape("messages", ("messages",), PARSERS["sft"], ("prompt", "response")),
        _shape("TRL prompt-completion", ("prompt", "completion"), partial(parse_prompt_response,
                                                                          response_key="completion")),
    ),
    "preference": (
        _shape("explicit prompt", ("prompt", "chosen", "rejected"), PARSERS["preference"]),
        _shape("TRL implicit prompt", ("chosen", "rejected"), _parse_implicit_preference),
    ),
    "ranking": (_shape("ranking", ("prompt", "responses", "ranking"), PARSERS["ranking"]),),
    "prompt": (_shape("prompt", ("prompt",), PARSERS["prompt"]),),
    # (one more kind — e.g. unpaired {"prompt", "completion", "label"} rows — is one more entry here)
}


@dataclass(frozen=True)
class Foreign:
    """A row shape a kind does not read, recognised by its keys, with the fix to say."""

    keys: frozenset[str]
    kinds: frozenset[str]  # the kinds for which these rows are a mistake
    what: str  # "this looks like <what>"
    fix: str  # what to do instead

    def sentence(self, keys: Iterable[str], noun: str = "keys") -> str:
        return f"this looks like {self.what} ({noun} {_key_list(keys)}); {self.fix}"


def _foreign(keys: Iterable[str], kinds: Iterable[str], what: str, fix: str) -> Foreign:
    return Foreign(frozenset(keys), frozenset(kinds), what, fix)


# Checked in order when a row matches none of its kind's shapes; the first whose keys the row has wins.
FOREIGN: tuple[Foreign, ...] = (
    _foreign(("prompt", "completion", "label"), ("sft", "preference", "ranking"),
             "TRL's unpaired preference format (one response with a true/false label)",
             'KTO trains on them as they are (rlhfkit kto, or rlhfkit dpo loss=kto data_kind=unpaired); the other '
             'losses read pairs: pair the responses of each prompt into {"prompt", "chosen", "rejected"}'),
    _foreign(("prompt", "completions", "labels"), ("sft", "preference", "ranking"),
             "TRL's stepwise-supervision format (a label per reasoning step)",
             'rlhfkit does not read it; give whole responses as {"prompt", "response"} or '
             '{"prompt", "chosen", "rejected"} rows'),
    _foreign(("prompt", "responses", "ranking"), ("sft", "preference"),
             "ranking rows", "the reward and dpo stages read them with data_kind=ranking"),
    _foreign(("chosen", "rejected"), ("sft",), "preference rows",
             "train them with `rlhfkit reward` or `rlhfkit dpo`; to learn the chosen replies by SFT instead, "
             "map data.columns={chosen: response} (explicit-prompt rows)"),
    _foreign(("prompt", "response"), ("preference", "ranking"), "SFT demonstrations, not comparisons",
             "train them with `rlhfkit sft`"),
    _foreign(("prompt", "completion"), ("preference", "ranking"),
             "TRL's prompt-completion format (demonstrations, not comparisons)", "train them with `rlhfkit sft`"),
    _foreign(("messages",), ("preference", "ranking"), "conversational SFT rows",
             "train them with `rlhfkit sft`"),
    _foreign(("messages",), ("prompt",), "conversations without a prompt",
             "if each conversation ends with the user's turn, map data.columns={messages: prompt}"),
    _foreign(("conversations",), ("sft", "preference", "ranking", "prompt"),
             'the ShareGPT format ({"from", "value"} turns)',
             'rlhfkit reads {"messages": [{"role", "content"}]} with roles system/user/assistant '
             "(human → user, gpt → assistant)"),
    _foreign(("text",), ("sft",), "TRL's language-modelling format, which has no prompt/response boundary",
             'give {"prompt", "response"} or {"messages"} rows (an HH transcript in "text" is read with '
             "data.columns={text: messages})"),
    _foreign(("instruction", "output"), ("sft", "prompt"), "the Alpaca format",
             'map data.columns={instruction: prompt, output: response} (join any "input" into the '
             "instruction first)"),
    _foreign(("question",), ("sft", "preference", "ranking", "prompt"), "a prompt column with another name",
             "map it with data.columns, e.g. {question: prompt, answer: response}"),
    _foreign(("query",), ("sft", "preference", "ranking", "prompt"), "a prompt column with another name",
             "map it with data.columns, e.g. {query: prompt}"),
)


def pick_shape(kind: str, keys: Iterable[str], usual: Shape | None = None) -> Shape | Foreign:
    """The shape of ``kind`` that reads a row with ``keys``; else a known foreign shape; else ``usual`` (the
    shape of the source's other rows, so a row missing ``completion`` among prompt-completion rows is told
    that, not that ``response`` is missing); else ours."""
    present = set(keys)
    for shape in SHAPES[kind]:
        if shape.keys <= present:
            return shape
    for foreign in FOREIGN:
        if kind in foreign.kinds and foreign.keys <= present:
            return foreign
    return usual or SHAPES[kind][0]


def usual_shape(kind: str, rows: Iterable[Any]) -> Shape | None:
    """The shape of the first row (an object) that some shape of ``kind`` reads; None if none does."""
    for obj in rows:
        if isinstance(obj, Mapping):
            shape = pick_shape(kind, obj)
            if isinstance(shape, Shape) and shape.keys <= set(obj):
                return shape
    return None


def readable_names(kind: str) -> frozenset[str]:
    """Every key some shape of ``kind`` reads (what ``data.columns`` may map a column to)."""
    return frozenset().union(*(shape.reads for shape in SHAPES[kind]))


# Fields that hold a conversation, where an HH transcript string is split into turns.
_CONVERSATION_FIELDS = ("prompt", "messages")


def split_transcripts(obj: Mapping[str, Any], shape: Shape) -> Mapping[str, Any]:
    """``obj`` with every HH transcript in a conversation field as a message list.

    An HH prompt's responses follow ``"Assistant:"``, so their leading space (part of that tag) is dropped.
    Implicit-prompt rows: ``chosen`` / ``rejected`` transcripts become whole conversations.
    """
    fields = [f for f in _CONVERSATION_FIELDS if looks_like_hh(obj.get(f))]
    implicit = "prompt" not in shape.keys and all(looks_like_hh(obj.get(f)) for f in ("chosen", "rejected"))
    if not fields and not implicit:
        return obj
    out = dict(obj)
    for name in fields + (["chosen", "rejected"] if implicit else []):
        out[name] = [{"role": m.role, "content": m.content} for m in split_hh_transcript(obj[name])]
    if "prompt" in fields:
        for name in ("response", "completion", "chosen", "rejected"):
            if isinstance(out.get(name), str):
                out[name] = out[name].lstrip()
        if isinstance(out.get("responses"), list):
            out["responses"] = [r.lstrip() if isinstance(r, str) else r for r in out["responses"]]
    return out


def read_row(checker: RowChecker, obj: Any, kind: str, *, transcripts: bool = True,
             usual: Shape | None = None) -> tuple[Row | None, Shape | None]:
    """The typed row of ``obj`` as ``kind`` (None when it has an error; all recorded in ``checker``) and
    the shape that read it (None when it is not an object or is a known foreign shape). ``usual``: see
    :func:`pick_shape`."""
    if not isinstance(obj, Mapping):
        checker.add(None, f"expected a JSON object, got {json_type(obj)}")
        return None, None
    shape = pick_shape(kind, obj, usual)
    if isinstance(shape, Foreign):
        checker.add(None, shape.sentence(obj))
        return None, None
    if transcripts:
        obj = split_transcripts(obj, shape)
    row = shape.parse(checker, obj)
    return (row if checker.n_errors == 0 else None), shape


def column_problems(kind: str, columns: list[str], display: str) -> list[str]:
    """Problems of a whole dataset's columns (one sentence each, not one per row); [] when a shape fits."""
    shape = pick_shape(kind, columns)
    have = _key_list(columns) or "none"
    if isinstance(shape, Foreign):
        return [f"{display}: {shape.sentence(columns, 'columns')}."]
    missing = sorted(shape.keys - set(columns))
    return [f'{display}, column "{c}": missing (the columns are {have}).' for c in missing]


def _key_list(keys: Iterable[str]) -> str:
    return ", ".join(f'"{k}"' for k in keys)


__all__ = ["FOREIGN", "SHAPES", "Foreign", "Shape", "column_problems", "pick_shape", "read_row",
           "readable_names", "split_transcripts", "usual_shape"]
