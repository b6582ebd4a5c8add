"""The built-in world's AI judge (RLAIF) behind the :class:`~rlhfkit.judges.base.Judge` interface.

A thin wrapper around :class:`rlhfkit.worlds.AIJudge`, which is imperfect on purpose (docs/world.md §6:
it misses half of politely phrased harm, likes length, is noisy). Like the gold judge it reads only the
world's prompts. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhfkit.worlds import AIJudge as WorldAIJudge
from rlhfkit.worlds import Prompt, World


class AIJudge:
    """The AI judge's rating (about [-1.5, 1.5]); ``kwargs`` go to :class:`rlhfkit.worlds.AIJudge`."""

    name = "ai"

    def __init__(self, world: World | None = None, *, world_seed: int = 0, **kwargs) -> None:
        self.world = world if world is not None else World.build(world_seed)
        self.inner = WorldAIJudge(self.world, **kwargs)

    @property
    def tie_margin(self) -> float:
        return self.inner.tie_margin

    def score(self, prompt: Prompt | str, response: str) -> float:
        return self.inner.score(prompt, response)

    def score_batch(self, prompts: Sequence[Prompt | str], responses: Sequence[str]) -> list[float]:
        return [self.inner.score(p, r) for p, r in zip(prompts, responses)]

    def compare(self, prompt: Prompt | str, a: str, b: str) -> str:
        return self.inner.compare(prompt, a, b)

    def classify(self, prompt: Prompt | str, response: str) -> str:
        """The behaviour the AI judge believes it sees (polite harm it missed reads as ``good``)."""
        return self.inner.classify(prompt, response)

    def knows(self, prompt: object) -> bool:
        return isinstance(prompt, Prompt) or (isinstance(prompt, str) and self.world.find(prompt) is not None)
