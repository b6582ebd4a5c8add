"""Row checks: turn one decoded JSON object into a typed row, recording every problem as one sentence.

Standard library only. Each problem has a category: ``"error"`` (always fatal), ``"empty"`` (empty or
whitespace-only text) or ``"identical"`` (a pair or ranking without signal); :func:`load_rows` maps the
last two through its ``empty=`` / ``identical=`` policies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rlhfkit.data.rows import (
    ROLES,
    Message,
    PreferenceRow,
    Prompt,
    PromptRow,
    RankingRow,
    Response,
    Row,
    SFTRow,
)

KINDS = ("sft", "preference", "ranking", "prompt")
POLICIES = ("error", "warn", "drop")
# The keys of each kind's own shape; rlhfkit.data.shapes.SHAPES lists every shape a kind reads (and so which
# keys are ignored and counted: "id", "meta", "source", …).
KNOWN_KEYS = {
    "sft": frozenset({"prompt", "response", "messages"}),
    "preference": frozenset({"prompt", "chosen", "rejected"}),
    "ranking": frozenset({"prompt", "responses", "ranking"}),
    "prompt": frozenset({"prompt"}),
}
_PROMPT_OR_MESSAGES = "a string or a list of messages"


class RowChecker:
    """Collects the problems of one row, each as ``(category, sentence)``.

    ``aliases`` maps a field name the parser reads to the name the source used (``data.columns`` renamed
    it), so a sentence names the column the user wrote: ``field "question"``, not ``field "prompt"``.
    """

    def __init__(self, where: str, aliases: Mapping[str, str] | None = None):
        self.where = where
        self.aliases = dict(aliases or {})
        self.issues: list[tuple[str, str]] = []

    def add(self, field: str | None, text: str, category: str = "error") -> None:
        if field:
            head = re.match(r"[^.\[]*", field).group(0)
            field = self.aliases.get(head, head) + field[len(head):]
        location = f'{self.where}, field "{field}"' if field else self.where
        self.issues.append((category, f"{location}: {text}."))

    @property
    def n_errors(self) -> int:
        return sum(1 for category, _ in self.issues if category == "error")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, with an article: 'a string', 'null', 'an object'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


MISSING = object()


def get_field(checker: RowChecker, obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    keys = ", ".join(f'"{k}"' for k in obj) or "none"
    checker.add(key, f"missing (the row has keys {keys})")
    return MISSING


def check_text(checker: RowChecker, value: Any, field: str) -> str | None:
    """A non-empty string; empty or whitespace-only text is an ``"empty"`` problem (row still built)."""
    if not isinstance(value, str):
        checker.add(field, f"expected a string, got {json_type(value)}")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows "\ud800" escapes that are not Unicode text
        checker.add(
            field, f"contains an unpaired surrogate ({value[exc.start]!a}), which is not valid Unicode"
        )
        return None
    if not value:
        checker.add(field, "empty text", "empty")
    elif not value.strip():
        checker.add(field, "whitespace-only text", "empty")
    return value


def check_messages(checker: RowChecker, value: list[Any], field: str) -> list[Message] | None:
    """A non-empty list of ``{"role", "content"}`` objects with known roles; extra keys are ignored."""
    if not value:
        checker.add(field, "empty list of messages")
        return None
    before = checker.n_errors
    messages = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            checker.add(where, f'expected a message object {{"role", "content"}}, got {json_type(item)}')
            continue
        role = item.get("role", MISSING)
        if role is MISSING:
            checker.add(f"{where}.role", "missing")
        elif not isinstance(role, str):
            checker.add(f"{where}.role", f"expected a string, got {json_type(role)}")
        elif role not in ROLES:
            checker.add(f"{where}.role", f'unknown role "{role}" (valid: {", ".join(ROLES)})')
        content = item.get("content", MISSING)
        if content is MISSING:
            checker.add(f"{where}.content", "missing")
            continue
        text = check_text(checker, content, f"{where}.content")
        if isinstance(role, str) and text is not None:
            messages.append(Message(role=role, content=text))
    return messages if checker.n_errors == before else None


def check_prompt(checker: RowChecker, value: Any, field: str = "prompt") -> Prompt | None:
    """Text, or the conversation so far (which must not end with the assistant's turn)."""
    if value is MISSING:
        return None
    if isinstance(value, str):
        return check_text(checker, value, field)
    if isinstance(value, list):
        messages = check_messages(checker, value, field)
        if messages and messages[-1].role == "assistant":
            checker.add(
                f"{field}[{len(messages) - 1}].role",
                "the prompt ends with the assistant's turn; it must end with a user or system turn",
            )
            return None
        return messages
    checker.add(field, f"expected {_PROMPT_OR_MESSAGES}, got {json_type(value)}")
    return None


def check_response(checker: RowChecker, value: Any, field: str) -> Response | None:
    """Text, or assistant turn(s) as messages: the first and the last must be the assistant's."""
    if value is MISSING:
        return None
    if isinstance(value, str):
        return check_text(checker, value, field)
    if isinstance(value, list):
        messages = check_messages(checker, value, field)
        if messages is None:
            return None
        for index in (0, len(messages) - 1):
            if messages[index].role != "assistant":
                checker.add(
                    f"{field}[{index}].role",
                    "a response's first and last messages must be the assistant's, "
                    f'got "{messages[index].role}"',
                )
                return None
        return messages
    checker.add(field, f"expected {_PROMPT_OR_MESSAGES}, got {json_type(value)}")
    return None


def response_key(response: Response) -> tuple[tuple[str, str], ...]:
    """A comparison key: two responses with equal keys carry no preference signal.

    Surrounding whitespace is ignored; a string equals the single assistant message with its text.
    """
    if isinstance(response, str):
        return (("assistant", response.strip()),)
    return tuple((m.role, m.content.strip()) for m in response)


def parse_prompt_response(checker: RowChecker, obj: Mapping[str, Any], response_key: str = "response") -> SFTRow | None:
    """``{"prompt", response_key}``: ours (``response``) or TRL's prompt-completion (``completion``)."""
    prompt = check_prompt(checker, get_field(checker, obj, "prompt"))
    response = check_response(checker, get_field(checker, obj, response_key), response_key)
    return SFTRow(prompt, response, checker.where) if prompt is not None and response is not None else None


def _parse_sft(checker: RowChecker, obj: Mapping[str, Any]) -> SFTRow | None:
    if "messages" not in obj:
        return parse_prompt_response(checker, obj)
    if "prompt" in obj or "response" in obj:
        checker.add("messages", 'given together with "prompt"/"response"; use one form or the other')
    value = obj["messages"]
    if not isinstance(value, list):
        checker.add("messages", f"expected a list of messages, got {json_type(value)}")
        return None
    messages = check_messages(checker, value, "messages")
    if messages is None:
        return None
    last = len(messages) - 1
    if messages[-1].role != "assistant":
        checker.add(
            f"messages[{last}].role",
            f'the last message must be the assistant\'s reply to learn, got "{messages[-1].role}"',
        )
        return None
    if last == 0:
        checker.add("messages", "needs at least one message before the assistant's reply")
        return None
    return SFTRow(messages[:-1], messages[-1].content, checker.where)


def _parse_preference(checker: RowChecker, obj: Mapping[str, Any]) -> PreferenceRow | None:
    prompt = check_prompt(checker, get_field(checker, obj, "prompt"))
    chosen = check_response(checker, get_field(checker, obj, "chosen"), "chosen")
    rejected = check_response(checker, get_field(checker, obj, "rejected"), "rejected")
    return make_preference(checker, prompt, chosen, rejected)


def make_preference(checker: RowChecker, prompt: Prompt | None, chosen: Response | None,
                    rejected: Response | None) -> PreferenceRow | None:
    """The row of checked parts (None where a part failed), with the identical-pair check."""
    if prompt is None or chosen is None or rejected is None:
        return None
    if response_key(chosen) == response_key(rejected):
        checker.add("rejected", 'identical to "chosen" (the pair carries no preference signal)', "identical")
    return PreferenceRow(prompt, chosen, rejected, checker.where)


def _check_ranking(checker: RowChecker, value: Any, n_responses: int | None) -> list[int] | None:
    if value is MISSING:
        return None
    if not isinstance(value, list):
        checker.add("ranking", f"expected a list of response indices (best first), got {json_type(value)}")
        return None
    bad = [i for i, v in enumerate(value) if isinstance(v, bool) or not isinstance(v, int)]
    for i in bad:
        checker.add(f"ranking[{i}]", f"expected an integer response index, got {json_type(value[i])}")
    if bad or n_responses is None:
        return None
    if sorted(value) != list(range(n_responses)):
        checker.add(
            "ranking",
            f"{value} is not a permutation of the response indices 0..{n_responses - 1} "
            "(each index exactly once, best first)",
        )
        return None
    return list(value)


def _parse_ranking(checker: RowChecker, obj: Mapping[str, Any]) -> RankingRow | None:
    prompt = check_prompt(checker, get_field(checker, obj, "prompt"))
    value = get_field(checker, obj, "responses")
    responses: list[Response | None] | None = None
    if value is not MISSING and not isinstance(value, list):
        checker.add("responses", f"expected a list of responses, got {json_type(value)}")
    elif value is not MISSING:
        if len(value) < 2:
            checker.add("responses", f"expected at least 2 responses to rank, got {len(value)}")
        responses = [check_response(checker, v, f"responses[{i}]") for i, v in enumerate(value)]
    ranking = _check_ranking(checker, get_field(checker, obj, "ranking"), len(responses) if responses else None)
    if prompt is None or responses is None or ranking is None or len(responses) < 2 or None in responses:
        return None
    keys = [response_key(r) for r in responses]
    same = [f"{i} and {j}" for i in range(len(keys)) for j in range(i + 1, len(keys)) if keys[i] == keys[j]]
    if same:
        checker.add(
            "responses", f"responses {', '.join(same)} are identical (no preference signal)", "identical"
        )
    return RankingRow(prompt, list(responses), ranking, checker.where)


def _parse_prompt(checker: RowChecker, obj: Mapping[str, Any]) -> PromptRow | None:
    prompt = check_prompt(checker, get_field(checker, obj, "prompt"))
    # the row's other columns (e.g. a verifiable ``answer``) reach reward functions as keyword arguments
    fields = {key: value for key, value in obj.items() if key != "prompt"}
    return PromptRow(prompt, checker.where, fields) if prompt is not None else None


# Our own row shape of each kind; rlhfkit.data.shapes adds the ecosystem's shapes beside them.
PARSERS = {
    "sft": _parse_sft,
    "preference": _parse_preference,
    "ranking": _parse_ranking,
    "prompt": _parse_prompt,
}


def parse_row(checker: RowChecker, obj: Any, kind: str) -> Row | None:
    """The typed row of ``obj`` in our own shape of ``kind``, or None when it has an ``"error"`` problem (all recorded in ``checker``).

    A row with only ``"empty"`` / ``"identical"`` problems is still returned: the caller's policy
    decides whether to keep it.
    """
    if not isinstance(obj, Mapping):
        checker.add(None, f"expected a JSON object, got {json_type(obj)}")
        return None
    row = PARSERS[kind](checker, obj)
    return row if checker.n_errors == 0 else None
