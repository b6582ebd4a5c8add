"""The built-in world: a fictional almanac, five prompt families, a gold judge, simulated
annotators, an AI judge, corpora and the evaluation protocol. Pure Python (no torch).

    from rlhfkit.worlds import World, GoldJudge
    world = World.build(seed=0)
    judge = GoldJudge(world)
    judge.score("what is 17 plus 3?", "the answer is 20.")   # 1.0

See docs/world.md for the rubric, the SFT spec and the protocol keys, and §9 for the calculator tool
(``calculator.py``; ``rlhfkit.worlds.calculator:environment`` is its tool environment).
"""

from .ai_judge import AIJudge
from .annotators import (
    THUMBS_THRESHOLD,
    Calibration,
    SimulatedAnnotator,
    agreement_with_gold,
    calibrate_tau,
    disagreement,
    label_pairs,
)
from .behaviours import BEHAVIOURS, FAMILIES, FAMILY_BEHAVIOURS, STYLES
from .calculator import calc, split_tool_calls
from .corpus import (
    SFT_SPEC,
    SFT_SPEC_TOOLS,
    TOOL_CORPUS_CONFIG,
    BaseCorpus,
    CorpusConfig,
    SFTSpec,
    ToolMix,
    build_base_corpus,
    build_sft_demonstrations,
)
from .judge import GoldJudge, Judgement, Rubric
from .prompts import Prompt, World, WorldConfig
from .protocol import compare_policies, paired_bootstrap_ci, policy_stats
from .responses import generate_response

__all__ = [
    "AIJudge", "BEHAVIOURS", "BaseCorpus", "Calibration", "CorpusConfig", "FAMILIES", "FAMILY_BEHAVIOURS",
    "GoldJudge", "Judgement", "THUMBS_THRESHOLD", "Prompt", "Rubric", "SFTSpec", "SFT_SPEC", "SFT_SPEC_TOOLS", "STYLES",
    "SimulatedAnnotator", "TOOL_CORPUS_CONFIG", "ToolMix", "calc", "split_tool_calls",
    "World", "WorldConfig", "agreement_with_gold", "build_base_corpus", "build_sft_demonstrations",
    "calibrate_tau", "compare_policies", "disagreement", "generate_response", "label_pairs",
    "paired_bootstrap_ci", "policy_stats",
]
