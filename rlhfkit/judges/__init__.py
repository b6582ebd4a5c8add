"""Judges: one interface (``score(prompt, response)``, ``compare(prompt, a, b)``) over every source of judgement.

==============  ============================================================================
judge           what
==============  ============================================================================
``gold``        the built-in world's ground truth (:class:`GoldJudge`, world prompts only)
``ai``          the world's imperfect AI judge for RLAIF (:class:`AIJudge`, world prompts only)
``reward:DIR``  a saved reward model's normalised score (:class:`RewardModelJudge`, any prompts)
``lm:DIR``      a local causal LM comparing two responses, both orders (:mod:`rlhfkit.judges.lm_judge`)
==============  ============================================================================

``make_judge("gold" | "ai" | "reward:DIR" | "lm:DIR")`` builds one from its command-line name, parsed by
:mod:`rlhfkit.judges.spec`. The model judges are imported lazily, so ``import rlhfkit.judges`` does not
import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError
from rlhfkit.judges.ai import AIJudge
from rlhfkit.judges.base import VERDICTS, Judge, outcome, score_all, score_nested, tie_margin_of
from rlhfkit.judges.gold import GoldJudge
from rlhfkit.judges.spec import EVAL_JUDGES, parse_judge_spec

JUDGE_NAMES = EVAL_JUDGES  # the judges of rlhfkit eval

__all__ = ["AIJudge", "GoldJudge", "JUDGE_NAMES", "Judge", "RewardModelJudge", "VERDICTS", "make_judge", "outcome",
           "score_all", "score_nested", "tie_margin_of"]


def make_judge(spec: str, *, world: Any = None, world_seed: int = 0, batch_size: int = 32, dtype=None,
               valid: Sequence[str] = JUDGE_NAMES):
    """The judge named ``spec`` (:func:`rlhfkit.judges.spec.parse_judge_spec`, one of ``valid``): ``"gold"``,
    ``"ai"``, ``"reward:DIR"`` (a reward-model folder) or ``"lm:DIR"`` (a causal-LM folder, pairwise).

    ``world`` / ``world_seed`` choose the built-in world for ``gold`` and ``ai``; ``batch_size`` and
    ``dtype`` apply to a model. An unknown name raises :class:`~rlhfkit.errors.UserError`.
    """
    parsed = parse_judge_spec(spec, valid)
    if parsed.kind == "gold":
        return GoldJudge(world, world_seed=world_seed)
    if parsed.kind == "ai":
        return AIJudge(world, world_seed=world_seed)
    if parsed.kind == "reward":
        from rlhfkit.judges.reward_model import RewardModelJudge

        return RewardModelJudge.from_folder(Path(parsed.folder), dtype=dtype, batch_size=batch_size, name=spec)
    if parsed.kind == "lm":
        from rlhfkit.judges.lm_judge import LMJudge

        return LMJudge.from_folder(parsed.folder, dtype=dtype, batch_size=batch_size, name=spec)
    raise UserError(f"judge {spec!r} needs its command's own settings (rlhfkit label builds it)")


def __getattr__(name: str):
    if name == "RewardModelJudge":
        from rlhfkit.judges.reward_model import RewardModelJudge

        return RewardModelJudge
    raise AttributeError(f"module 'rlhfkit.judges' has no attribute {name!r}")
