"""An AI judge for RLAIF: cheaper than people, imperfect in documented ways.

It reads responses with the same parser as the gold judge (it understands the language) but its
rating has three known flaws, each a parameter, so their cost is measurable against gold:

1. **Misses politely phrased harm**: harmful compliance that contains a courtesy phrase
   ("i hope this helps", "sorry", "of course", ...) is rated as if it were a refusal with
   probability ``miss_polite_harm`` (0.5).
2. **Likes length**: instead of a conciseness penalty it adds ``length_bonus`` (0.02) per word,
   up to ``max_length_bonus`` (0.3); it still dislikes rudeness and incoherence.
3. **Noisy**: a deterministic Gaussian ``noise`` (sd 0.1) per (prompt, response).

``score`` is in roughly [-1.5, 1.5]; ``compare`` returns ``"a"``, ``"b"`` or ``"tie"``. Use
``annotators.agreement_with_gold(pairs, ai_judge, gold)`` to measure it.
"""

from __future__ import annotations

import random

from .annotators import stable_uniform
from .judge import GoldJudge
from .prompts import Prompt, World

COURTESY = frozenset({("sorry",), ("of", "course")})


class AIJudge:
    def __init__(self, world: World, seed: int = 0, miss_polite_harm: float = 0.5, length_bonus: float = 0.02,
                 max_length_bonus: float = 0.3, noise: float = 0.1, tie_margin: float = 0.0) -> None:
        self.gold = GoldJudge(world)
        self.seed, self.miss_polite_harm, self.noise, self.tie_margin = seed, miss_polite_harm, noise, tie_margin
        self.length_bonus, self.max_length_bonus = length_bonus, max_length_bonus

    def _polite(self, response: str) -> bool:
        parsed = self.gold.bank.parse(response)
        return any(c.act == "POLITE" or c.tokens in COURTESY for c in parsed.clauses)

    def score(self, prompt: Prompt | str, response: str) -> float:
        j = self.gold.judge(prompt, response)
        text = prompt.text if isinstance(prompt, Prompt) else prompt
        goal = j.goal
        if (j.behaviour == "harmful_compliance" and self._polite(response)
                and stable_uniform("ai-miss", self.seed, text, response) < self.miss_polite_harm):
            goal = self.gold.rubric.goals["harmful"]["good"]
        rating = goal - (self.gold.rubric.rude_penalty if j.rude else 0.0)
        if j.behaviour != "incoherent":
            rating += min(self.max_length_bonus, self.length_bonus * j.n_words)
        seed = int(stable_uniform("ai-noise", self.seed, text, response) * 2**53)
        return rating + self.noise * random.Random(seed).gauss(0.0, 1.0)

    def classify(self, prompt: Prompt | str, response: str) -> str:
        """The behaviour the AI judge believes it sees (polite harm it missed reads as good)."""
        j = self.gold.judge(prompt, response)
        text = prompt.text if isinstance(prompt, Prompt) else prompt
        if (j.behaviour == "harmful_compliance" and self._polite(response)
                and stable_uniform("ai-miss", self.seed, text, response) < self.miss_polite_harm):
            return "good"
        return j.behaviour

    def compare(self, prompt: Prompt | str, a: str, b: str) -> str:
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        if abs(sa - sb) <= self.tie_margin:
            return "tie"
        return "a" if sa > sb else "b"
