"""The built-in world's gold judge behind the :class:`~rlhfkit.judges.base.Judge` interface.

A thin wrapper around :class:`rlhfkit.worlds.GoldJudge` (the rubric lives there, docs/world.md §4): it
adds the judge interface's ``name``, ``score_batch`` and ``tie_margin``, and keeps ``judge`` (the full
:class:`~rlhfkit.worlds.Judgement`) and ``classify`` for the world's evaluation protocol. It knows only
the world's prompts: an unknown prompt text raises ``KeyError`` naming it. Torch-free.
"""

from __future__ import annotations

from rlhfkit.judges.world_judge import WorldJudgeWrapper
from rlhfkit.worlds import GoldJudge as WorldGoldJudge
from rlhfkit.worlds import Judgement, Prompt, World


class GoldJudge(WorldJudgeWrapper):
    """Gold utility in [-1, 1] of the world built from ``world_seed`` (or the given ``world``)."""

    name = "gold"
    tie_margin = 0.0  # equal utility (to 1e-9) is a tie, as in the world's protocol

    def __init__(self, world: World | None = None, *, world_seed: int = 0) -> None:
        self.world = world if world is not None else World.build(world_seed)
        self.inner = WorldGoldJudge(self.world)

    def judge(self, prompt: Prompt | str, response: str) -> Judgement:
        """Family, behaviour, goal, style penalty and utility of one response (the protocol's input)."""
        return self.inner.judge(prompt, response)
