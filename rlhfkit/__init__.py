"""rlhfkit: the whole RLHF recipe on any Hugging Face causal LM, as a library and a command line.

    import rlhfkit
    sft = rlhfkit.sft("configs/sft.yaml", train_dataset=ds, model={"path": "my-base-model"})
    rm = rlhfkit.reward("configs/reward.yaml", train_dataset=prefs, model={"path": str(sft.final_dir)})

Stages (``sft``, ``reward``, ``dpo``, ``ppo``) and their configs (``SFTConfig``, ``RewardConfig``,
``DPOConfig``, ``PPOConfig``: ``.from_yaml``, ``.from_dict``, ``.build``) are loaded on first use, so
``import rlhfkit`` stays instant and imports no torch; see docs/python-api.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    "sft": "rlhfkit.api",
    "reward": "rlhfkit.api",
    "dpo": "rlhfkit.api",
    "ppo": "rlhfkit.api",
    "StageResult": "rlhfkit.api",
    "SFTConfig": "rlhfkit.trainers.sft",
    "RewardConfig": "rlhfkit.trainers.reward",
    "DPOConfig": "rlhfkit.trainers.dpo",
    "PPOConfig": "rlhfkit.trainers.ppo_config",
    "build_config": "rlhfkit.config",
    "load_config": "rlhfkit.config",
    "ConfigError": "rlhfkit.config",
    "UserError": "rlhfkit.errors",
    "load_rows": "rlhfkit.data.formats",
    "DataValidationError": "rlhfkit.data.formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
