"""Reward sources for online RL: a weighted list of reward models, Python functions and LM judges, one score per
response.

See :mod:`rlhfkit.rewards.sources` (the interface), :mod:`rlhfkit.rewards.verifiable` (exact-answer rewards) and
:mod:`rlhfkit.rewards.judge` (an LM judge's probability of "Yes").
"""

from rlhfkit.rewards.sources import (
    RewardFunctionError,
    RewardSourceConfig,
    RewardSources,
    load_reward_function,
)

__all__ = ["RewardFunctionError", "RewardSourceConfig", "RewardSources", "load_reward_function"]
