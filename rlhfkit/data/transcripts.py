"""Turn other people's row shapes into ours: HH transcripts into turns, an implicit prompt split off.

Standard library only; pure functions of strings and message lists.

- Anthropic's HH-RLHF stores each conversation as one string, ``"\\n\\nHuman: …\\n\\nAssistant: …"``
  (Bai et al. 2022, the ``hh-rlhf`` dataset); :func:`split_hh_transcript` cuts it into turns.
- TRL's *implicit-prompt* preference rows carry the prompt inside both responses
  (``{"chosen": prompt + a, "rejected": prompt + b}``); :func:`split_common_prefix` recovers it as TRL's
  ``extract_prompt`` does — the longest common start — then, for message lists, moves any assistant turns
  of that start back into the responses, since a prompt must end with the user's (or system's) turn.
"""

from __future__ import annotations

import re
from typing import Any

from rlhfkit.data.rows import Message

# Speaker tags at a line start after a blank line, as in hh-rlhf. The first turn may lack the blank line.
_HH_TAG = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def looks_like_hh(text: Any) -> bool:
    """True for an HH transcript: a string starting (blank lines aside) with ``Human:`` that has an
    ``Assistant:`` turn after a blank line."""
    return isinstance(text, str) and text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def split_hh_transcript(text: str) -> list[Message]:
    """The turns of an HH transcript, in order, each text stripped of surrounding whitespace.

    A final empty ``Assistant:`` (the generation prompt of an HH *prompt*) gives no turn. Consecutive turns
    of one speaker are kept as they are (the validator reports them if a shape forbids them).
    """
    body = text.lstrip()
    tags = list(_HH_TAG.finditer(body))
    turns = []
    for i, tag in enumerate(tags):
        end = tags[i + 1].start() if i + 1 < len(tags) else len(body)
        content = body[tag.end():end].strip()
        if content or i + 1 < len(tags):  # an empty turn inside a transcript is reported by the validator
            turns.append(Message(_HH_ROLES[tag.group(1)], content))
    return turns


def common_prefix_length(a: list | str, b: list | str) -> int:
    """The number of leading items (messages, or characters) ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_common_prefix(chosen: list[Message], rejected: list[Message]) -> tuple[list, list, list]:
    """``(prompt, chosen_rest, rejected_rest)`` of two conversations that share their first turns.

    The prompt is the longest common run of messages, shortened until it ends with a non-assistant turn
    (identical first assistant turns stay in both responses). It may be empty: the caller reports that.
    """
    n = common_prefix_length(chosen, rejected)
    while n > 0 and chosen[n - 1].role == "assistant":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def split_common_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's split of two strings: the common start is the prompt, a space before the first differing
    character goes with the responses (``"Q: 2+2? 4"`` / ``"Q: 2+2? 5"`` → ``"Q: 2+2?"``, ``" 4"``, ``" 5"``)."""
    n = common_prefix_length(chosen, rejected)
    if n == min(len(chosen), len(rejected)):  # one is a prefix of the other: no response left to split
        n = max(0, n - 1)
    if n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]
