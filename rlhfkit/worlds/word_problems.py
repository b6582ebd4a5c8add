"""Synthetic arithmetic word problems with exact answers, for RL with a verifiable reward on a real chat model.

Four kinds, one template each, small numbers (a 135M-parameter chat model can do the sums when it shows them)::

    add        Sam has 7 apples. Sam buys 5 more. How many apples does Sam have now?             7 + 5
    subtract   Sam had 12 apples and gave 5 to a friend. How many apples does Sam have left?    12 - 5
    multiply   Sam has 3 bags with 4 apples in each bag. How many apples does Sam have in total?   3 * 4
    two_step   Sam has 7 apples, buys 5 more and then gives away 4. How many apples ...?      7 + 5 - 4

**Held-out split.** A problem's *key* is its kind and numbers; a key belongs to ``eval`` when a hash of it
falls in the lowest ``eval_share``, else to ``train`` — so no evaluation problem's sum is ever trained on
(names and objects, which change nothing about the sum, are drawn freely; a key may recur with other names,
as the kinds have few keys — 154 for ``multiply``). Every function is a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ("Sam", "Anna", "Tom", "Lily", "Ben", "Maya", "Leo", "Zoe", "Omar", "Ines", "Kofi", "Mei")
OBJECTS = ("apples", "marbles", "books", "stickers", "cookies", "pencils", "shells", "cards")
INSTRUCTION = "Give the final answer as a number."
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Kind:
    template: str
    answer: Callable[[int, int, int], int]
    numbers: Callable[[random.Random], tuple[int, int, int]]


def _add(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 30), rng.randint(2, 30), 0


def _subtract(rng: random.Random) -> tuple[int, int, int]:
    a = rng.randint(5, 40)
    return a, rng.randint(1, a - 1), 0


def _multiply(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 12), rng.randint(2, 15), 0


def _two_step(rng: random.Random) -> tuple[int, int, int]:
    a, b = rng.randint(2, 20), rng.randint(2, 15)
    return a, b, rng.randint(1, a + b - 1)


KINDS: dict[str, Kind] = {
    "add": Kind("{n} has {a} {o}. {n} buys {b} more. How many {o} does {n} have now?",
                lambda a, b, c: a + b, _add),
    "subtract": Kind("{n} had {a} {o} and gave {b} to a friend. How many {o} does {n} have left?",
                     lambda a, b, c: a - b, _subtract),
    "multiply": Kind("{n} has {a} bags with {b} {o} in each bag. How many {o} does {n} have in total?",
                     lambda a, b, c: a * b, _multiply),
    "two_step": Kind("{n} has {a} {o}, buys {b} more and then gives away {c}. How many {o} does {n} have now?",
                     lambda a, b, c: a + b - c, _two_step),
}


def split_of(kind: str, numbers: tuple[int, int, int], eval_share: float = 0.25) -> str:
    """``eval`` or ``train``: the split of the problem key ``(kind, numbers)``, fixed by a hash of the key."""
    digest = hashlib.sha256(f"word-problem/{kind}/{'/'.join(map(str, numbers))}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "little") / 2**64 < eval_share else "train"


def word_problems(split: str, count: int, seed: int = 0, eval_share: float = 0.25,
                  instruction: str = INSTRUCTION) -> list[dict]:
    """``count`` problems of ``split`` (distinct texts) as prompt rows: ``{"prompt": [{"role": "user", "content"}],
    "answer": "12", "kind": "add"}`` — a conversational prompt (the model's chat template applies) whose
    ``answer`` column reaches the reward function (:func:`rlhfkit.rewards.verifiable.exact_answer`). Kinds
    rotate, so each is a quarter of the rows. Raises ValueError when the split has fewer distinct texts."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"word-problems/{seed}/{split}")
    kinds = list(KINDS)
    rows, seen, tries = [], set(), 0
    while len(rows) < count:
        tries += 1
        if tries > 200 * count + 1000:
            raise ValueError(f"only {len(rows)} distinct {split} word problem texts found; ask for fewer")
        kind = kinds[len(rows) % len(kinds)]
        numbers = KINDS[kind].numbers(rng)
        if split_of(kind, numbers, eval_share) != split:
            continue
        a, b, c = numbers
        text = KINDS[kind].template.format(n=rng.choice(NAMES), o=rng.choice(OBJECTS), a=a, b=b, c=c)
        if text in seen:
            continue
        seen.add(text)
        content = f"{text} {instruction}".strip()
        rows.append({"prompt": [{"role": "user", "content": content}],
                     "answer": str(KINDS[kind].answer(a, b, c)), "kind": kind})
    return rows
