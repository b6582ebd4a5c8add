"""Judges: one interface (``score(prompt, response)``, ``compare(prompt, a, b)``) over every source of judgement.

==============  ============================================================================
judge           what
==============  ============================================================================
``gold``        the built-in world's ground truth (:class:`GoldJudge`, world prompts only)
``ai``          the world's imperfect AI judge for RLAIF (:class:`AIJudge`, world prompts only)
``reward:DIR``  a saved reward model's normalised score (:class:`RewardModelJudge`, any prompts)
==============  ============================================================================

``make_judge("gold" | "ai" | "reward:DIR")`` builds one from its command-line name. ``RewardModelJudge``
is imported lazily, so ``import rlhfkit.judges`` does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError
from rlhfkit.judges.ai import AIJudge
from rlhfkit.judges.base import VERDICTS, Judge, outcome, score_all, score_nested, tie_margin_of
from rlhfkit.judges.gold import GoldJudge

JUDGE_NAMES = ("gold", "ai", "reward:DIR")

__all__ = ["AIJudge", "GoldJudge", "JUDGE_NAMES", "Judge", "RewardModelJudge", "VERDICTS", "make_judge", "outcome",
           "score_all", "score_nested", "tie_margin_of"]


def make_judge(spec: str, *, world: Any = None, world_seed: int = 0, batch_size: int = 32, dtype=None):
    """The judge named ``spec``: ``"gold"``, ``"ai"`` or ``"reward:DIR"`` (a reward-model folder).

    ``world`` / ``world_seed`` choose the built-in world for ``gold`` and ``ai``; ``batch_size`` and
    ``dtype`` apply to a reward model. An unknown name raises :class:`~rlhfkit.errors.UserError`.
    """
    if spec == "gold":
        return GoldJudge(world, world_seed=world_seed)
    if spec == "ai":
        return AIJudge(world, world_seed=world_seed)
    if spec.startswith("reward:"):
        folder = spec[len("reward:") :]
        if not folder:
            raise UserError("--judge reward:DIR needs the reward-model folder after 'reward:'.")
        from rlhfkit.judges.reward_model import RewardModelJudge

        return RewardModelJudge.from_folder(Path(folder), dtype=dtype, batch_size=batch_size, name=spec)
    raise UserError(f"unknown judge {spec!r}; valid: {', '.join(JUDGE_NAMES)}.")


def __getattr__(name: str):
    if name == "RewardModelJudge":
        from rlhfkit.judges.reward_model import RewardModelJudge

        return RewardModelJudge
    raise AttributeError(f"module 'rlhfkit.judges' has no attribute {name!r}")
