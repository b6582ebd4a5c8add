"""The built-in world's verifiable reward: is the answer to a helpful prompt (arithmetic, almanac lookup) right?

``rlhfkit.rewards.world:correct_answer`` finds each prompt in the world (:meth:`World.find`) and checks the
response against that prompt's ``answer`` with :func:`rlhfkit.rewards.verifiable.is_correct` — the check a real
task with known answers would also have. Every other prompt (harmful, benign, unanswerable, sycophancy, or not a
world prompt) gets None: no opinion, left to the other reward sources. This is *not* the gold judge, which grades
style, refusals, sycophancy and coherence and stays evaluation-only.
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


def correct_answer(prompts: Sequence[Any], completions: Sequence[str], world_seed: Sequence[Any] | None = None,
                   **_columns: Any) -> list[float | None]:
    """1.0 / 0.0 for a right / wrong answer to a helpful world prompt, None for any other prompt. The world is
    that of seed 0, or of a row's ``world_seed`` column."""
    from rlhfkit.worlds.prompts import World

    seeds = list(world_seed) if world_seed is not None else [None] * len(prompts)
    out: list[float | None] = []
    for prompt, completion, seed in zip(prompts, completions, seeds):
        found = World.build(int(seed) if seed is not None else 0).find(_text(prompt))
        if found is None or found.family != "helpful" or not found.answer:
            out.append(None)
        else:
            out.append(float(is_correct(completion, found.answer)))
    return out
