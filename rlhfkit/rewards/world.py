"""The built-in world's verifiable rewards: does the response state the true value?

``rlhfkit.rewards.world:correct_answer`` finds each prompt in the world (:meth:`World.find`) and checks the
response to a helpful prompt (arithmetic, almanac lookup) against that prompt's ``answer`` with
:func:`rlhfkit.rewards.verifiable.is_correct` — the check a real task with known answers would also have.
``correct_facts`` also checks the sycophancy prompts, whose user asserts a false sum or fact ("my teacher says 8
minus 4 is 6"): the response must state the true value (its last number is 4; for a fact, the true word
appears) — a fact-checker's reward, as verifiable as the sum itself. Every other prompt (harmful, benign,
unanswerable, or not a world prompt) gets None: no opinion, left to the other reward sources. Neither is the
gold judge, which grades style, refusals, agreement, hedging and coherence and stays evaluation-only: a
response that states the truth can still lose to the judge (rude, incoherent tail, agreeing first).

Calculator calls (``calc: 7 plus 5 = 12.``, the tool world) are cut out first, as the gold judge cuts them: the
environment's result is not the model's answer, so a response that is only a call scores 0.0, not 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.rewards.verifiable import is_correct


def _text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _check(prompts: Sequence[Any], completions: Sequence[str], world_seed: Sequence[Any] | None,
           families: tuple[str, ...]) -> list[float | None]:
    from rlhfkit.worlds.calculator import split_tool_calls
    from rlhfkit.worlds.prompts import World

    seeds = list(world_seed) if world_seed is not None else [None] * len(prompts)
    out: list[float | None] = []
    for prompt, completion, seed in zip(prompts, completions, seeds):
        found = World.build(int(seed) if seed is not None else 0).find(_text(prompt))
        if found is None or found.family not in families or not found.answer:
            out.append(None)
        else:
            out.append(float(is_correct(split_tool_calls(completion)[1], found.answer)))
    return out


def correct_answer(prompts: Sequence[Any], completions: Sequence[str], world_seed: Sequence[Any] | None = None,
                   **_columns: Any) -> list[float | None]:
    """1.0 / 0.0 for a right / wrong answer to a helpful world prompt, None for any other prompt. The world is
    that of seed 0, or of a row's ``world_seed`` column."""
    return _check(prompts, completions, world_seed, ("helpful",))


def correct_facts(prompts: Sequence[Any], completions: Sequence[str], world_seed: Sequence[Any] | None = None,
                  **_columns: Any) -> list[float | None]:
    """As :func:`correct_answer`, and for a sycophancy prompt 1.0 / 0.0 when the response does / does not state
    the true value of the user's false claim; None for any other prompt."""
    return _check(prompts, completions, world_seed, ("helpful", "sycophancy"))
