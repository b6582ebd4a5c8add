"""A small chat dataset from the built-in world, in the conversational formats users bring (``messages`` lists).

    rlhfkit world chat-data --out data/chat -n 64

writes ``sft.jsonl`` (``{"messages": [user, assistant]}``, the gold judge's best answer of the world's
behaviours), ``prefs.jsonl`` (``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``, two
behaviours the gold judge orders) and ``prompts.jsonl`` (``{"prompt": [user]}`` for PPO), each from ``n``
train prompts. It is the data of the real-model recipe in the README and of the real-model tests: any chat
model (e.g. SmolLM2 imported from GGUF) can be fine-tuned on it, and the gold judge can grade the result.
"""

from __future__ import annotations

import random

from . import behaviours as bh
from .judge import GoldJudge
from .prompts import World
from .responses import generate_response

CHAT_FILES = ("sft.jsonl", "prefs.jsonl", "prompts.jsonl")


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def chat_rows(n: int, seed: int = 0) -> dict[str, list[dict]]:
    """``{"sft.jsonl": rows, "prefs.jsonl": rows, "prompts.jsonl": rows}``, ``n`` rows each, seeded."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    world = World.build(seed)
    judge = GoldJudge(world)
    rng = random.Random(f"chat-data-{seed}")
    sft, prefs, prompts = [], [], []
    for prompt in world.sample_prompts(4 * n, seed=f"chat-data-{seed}"):
        if len(sft) == n:
            break
        responses = {generate_response(prompt, b, rng) for b in bh.FAMILY_BEHAVIOURS[prompt.family]}
        ranked = sorted(responses, key=lambda r: (-judge.score(prompt, r), r))
        if len(ranked) < 2 or judge.score(prompt, ranked[0]) == judge.score(prompt, ranked[-1]):
            continue  # no pair the gold judge can order
        sft.append({"messages": _user(prompt.text) + _assistant(ranked[0])})
        prefs.append({"prompt": _user(prompt.text), "chosen": _assistant(ranked[0]),
                      "rejected": _assistant(rng.choice(ranked[1:]))})
        prompts.append({"prompt": _user(prompt.text)})
    return dict(zip(CHAT_FILES, (sft, prefs, prompts)))
