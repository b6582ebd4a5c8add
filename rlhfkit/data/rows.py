"""The typed rows every loader returns (standard library only); see ``formats.py`` for the formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat turn. ``role`` is one of ``ROLES``."""

    role: str
    content: str


# A prompt is plain text (wrapped as one user turn by the chat template) or the conversation so far.
Prompt = str | list[Message]
# A response is plain text (one assistant turn) or the assistant turn(s) as messages.
Response = str | list[Message]


@dataclass(frozen=True)
class SFTRow:
    """A demonstration: ``response`` is the text the model learns to produce after ``prompt``.

    From the ``messages`` form, ``prompt`` is every message but the last and ``response`` the last
    (assistant) message's content: earlier assistant turns are context, not targets.
    """

    prompt: Prompt
    response: Response
    origin: str = field(default="", compare=False)  # where the row came from: "data/sft.jsonl line 3"


@dataclass(frozen=True)
class PreferenceRow:
    """A comparison: ``chosen`` is preferred over ``rejected`` as a reply to ``prompt``."""

    prompt: Prompt
    chosen: Response
    rejected: Response
    origin: str = field(default="", compare=False)


@dataclass(frozen=True)
class RankingRow:
    """K ≥ 2 responses to one prompt; ``ranking`` lists their indices from best to worst."""

    prompt: Prompt
    responses: list[Response]
    ranking: list[int]
    origin: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptRow:
    """A prompt for RL rollouts or evaluation."""

    prompt: Prompt
    origin: str = field(default="", compare=False)
    fields: dict[str, Any] = field(default_factory=dict, compare=False)
    """The row's other columns (``answer``, ``family``, …), for reward functions (``rlhfkit.rewards``)."""


Row = SFTRow | PreferenceRow | RankingRow | PromptRow


def message_to_dict(message: Message) -> dict[str, str]:
    return {"role": message.role, "content": message.content}


def _value_to_json(value: Any) -> Any:
    if isinstance(value, list):
        return [message_to_dict(v) if isinstance(v, Message) else _value_to_json(v) for v in value]
    return value


def row_to_dict(row: Row) -> dict[str, Any]:
    """The JSON object of ``row`` (without ``origin``): ``load_rows`` reads it back to an equal row.

    An SFT row from the ``messages`` form is written in the ``prompt``/``response`` form.
    """
    if isinstance(row, SFTRow):
        return {"prompt": _value_to_json(row.prompt), "response": _value_to_json(row.response)}
    if isinstance(row, PreferenceRow):
        return {
            "prompt": _value_to_json(row.prompt),
            "chosen": _value_to_json(row.chosen),
            "rejected": _value_to_json(row.rejected),
        }
    if isinstance(row, RankingRow):
        return {
            "prompt": _value_to_json(row.prompt),
            "responses": _value_to_json(row.responses),
            "ranking": list(row.ranking),
        }
    if isinstance(row, PromptRow):
        return {"prompt": _value_to_json(row.prompt)}
    raise TypeError(f"row_to_dict: not a row: {type(row).__name__}")
