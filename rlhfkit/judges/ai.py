"""The built-in world's AI judge (RLAIF) behind the :class:`~rlhfkit.judges.base.Judge` interface.

A thin wrapper around :class:`rlhfkit.worlds.AIJudge`, which is imperfect on purpose (docs/world.md §6:
it misses half of politely phrased harm, likes length, is noisy). Like the gold judge it reads only the
world's prompts. Torch-free.
"""

from __future__ import annotations

from rlhfkit.judges.world_judge import WorldJudgeWrapper
from rlhfkit.worlds import AIJudge as WorldAIJudge
from rlhfkit.worlds import World


class AIJudge(WorldJudgeWrapper):
    """The AI judge's rating (about [-1.5, 1.5]); ``kwargs`` go to :class:`rlhfkit.worlds.AIJudge`."""

    name = "ai"

    def __init__(self, world: World | None = None, *, world_seed: int = 0, **kwargs) -> None:
        self.world = world if world is not None else World.build(world_seed)
        self.inner = WorldAIJudge(self.world, **kwargs)

    @property
    def tie_margin(self) -> float:
        return self.inner.tie_margin
