"""``rlhfkit grpo`` and ``rlhfkit rloo``: the online trainer (:mod:`rlhfkit.trainers.ppo`) with a critic-free
advantage estimator. The same recipe keys as ``rlhfkit ppo``; the command only fills ``advantage.estimator``
(``grpo`` or ``rloo``) when neither the recipe nor an override sets it. Recipes: ``configs/grpo.yaml``,
``configs/rloo.yaml``, ``configs/grpo_lora.yaml``.
"""

from __future__ import annotations

from rlhfkit.config import _read_yaml, load_config


def estimator_overrides(command: str, recipe: str | None, overrides: list[str]) -> list[str]:
    """``overrides`` with ``advantage.estimator=<command>`` first, unless the recipe or an override names one."""
    from_recipe = recipe is not None and "estimator" in ((_read_yaml(recipe) or {}).get("advantage") or {})
    if from_recipe or any(item.split("=", 1)[0].strip() == "advantage.estimator" for item in overrides):
        return list(overrides)
    return [f"advantage.estimator={command}", *overrides]


def main(args) -> int:
    from rlhfkit.api import ppo
    from rlhfkit.trainers.ppo_config import PPOConfig

    overrides = estimator_overrides(args.command, args.config, list(getattr(args, "overrides", []) or []))
    ppo(load_config(PPOConfig, args.config, overrides))
    return 0
