"""Reward sources for online RL: a weighted list of reward models and Python functions, one score per response.

See :mod:`rlhfkit.rewards.sources` (the interface) and :mod:`rlhfkit.rewards.verifiable` (exact-answer rewards).
"""

from rlhfkit.rewards.sources import (
    RewardFunctionError,
    RewardSourceConfig,
    RewardSources,
    load_reward_function,
)

__all__ = ["RewardFunctionError", "RewardSourceConfig", "RewardSources", "load_reward_function"]
