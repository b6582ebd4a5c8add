"""Verifiable rewards: the answer is right or wrong (Tülu 3's "RL with verifiable rewards", Lambert et al. 2024).

:func:`exact_answer` reads the prompt row's ``answer`` column — the built-in world's helpful prompts carry it
(arithmetic results and almanac facts, ``rlhfkit.worlds.prompts.Prompt.answer``), and so does any task with
checkable answers. It checks only that answer: it is not the world's gold judge (which grades style, refusals,
sycophancy and coherence, and stays evaluation-only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def is_correct(completion: str, answer: str) -> bool:
    """A numeric ``answer``: the completion's *last* number equals it (the GSM8K convention, so working shown
    before the result is fine). Any other ``answer``: it occurs in the completion as whole words, ignoring case."""
    target = _number(answer.strip())
    if target is not None:
        numbers = _NUMBER.findall(completion)
        return bool(numbers) and _number(numbers[-1]) == target
    pattern = r"(?<!\w)" + re.escape(answer.strip()) + r"(?!\w)"
    return re.search(pattern, completion, flags=re.IGNORECASE) is not None


def exact_answer(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any] | None = None,
                 **_columns: Any) -> list[float | None]:
    """1.0 for a correct answer, 0.0 for a wrong one (:func:`is_correct`), None ("no opinion") for a row with
    no ``answer`` (null or empty) — so prompts without a checkable answer are left to the other sources."""
    answers = list(answer) if answer is not None else [None] * len(completions)
    return [None if a is None or str(a).strip() == "" else float(is_correct(c, str(a)))
            for c, a in zip(completions, answers)]
