"""The Python API: one function per stage, doing exactly what its ``rlhfkit`` command does.

    import rlhfkit
    result = rlhfkit.sft("configs/sft.yaml", train_dataset=ds, model={"path": "runs/base"})
    result.final_dir   # a standard Hugging Face folder

Each stage takes its config as a config object, a dict, a YAML path or nothing (the defaults), plus keyword
settings on top (:func:`rlhfkit.config.build_config`: sections as dicts, dotted keys allowed), and its data
as ``train_dataset=`` / ``eval_dataset=`` — a ``datasets.Dataset``, a list of dicts, or any path
``data.train_file`` accepts — instead of the recipe's files. Rows are checked exactly as the command checks
them (docs/data-formats.md). The command line (``rlhfkit.cli``) parses its arguments and calls the same stage
functions. This module imports nothing heavy: torch is imported when a stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage returns: where its model is and how the run ended."""

    final_dir: Path
    """The trained model: a standard Hugging Face folder (a PEFT adapter folder with unmerged LoRA)."""
    status: str
    """``completed``, or ``already_complete`` when the output folder held the finished run."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last logged step's metrics (names: docs/metrics.md); every step is in ``output_dir/metrics.jsonl``."""
    details: Any = None
    """The stage's own result (e.g. the reward model's normalisation ``gain``/``bias``, the loop summary)."""


def sft(config: Any = None, *, train_dataset: Any = None, eval_dataset: Any = None, **settings: Any) -> StageResult:
    """Supervised fine-tuning (``rlhfkit sft``); rows: ``sft`` kind (prompt/response, messages, TRL
    prompt-completion)."""
    from rlhfkit.config import build_config
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    result = train_sft(build_config(SFTConfig, config, **settings), train_dataset=train_dataset,
                       eval_dataset=eval_dataset)
    return StageResult(result.final_dir, result.status, result.metrics, result)


def reward(config: Any = None, *, train_dataset: Any = None, eval_dataset: Any = None,
           **settings: Any) -> StageResult:
    """A Bradley–Terry reward model (``rlhfkit reward``); rows: preferences or rankings."""
    from rlhfkit.config import build_config
    from rlhfkit.trainers.reward import RewardConfig, train_reward

    result = train_reward(build_config(RewardConfig, config, **settings), train_dataset=train_dataset,
                          eval_dataset=eval_dataset)
    return StageResult(result.final_dir, result.status, result.metrics, result)


def dpo(config: Any = None, *, train_dataset: Any = None, eval_dataset: Any = None, **settings: Any) -> StageResult:
    """DPO and its variants (``rlhfkit dpo``; ``loss=``); rows: preferences (or rankings, ``data_kind``)."""
    from rlhfkit.config import build_config
    from rlhfkit.trainers.dpo import DPOConfig, train

    summary = train(build_config(DPOConfig, config, **settings), train_dataset=train_dataset,
                    eval_dataset=eval_dataset)
    return StageResult(Path(summary.output_dir) / "final", summary.status, summary.last_metrics, summary)


def ppo(config: Any = None, *, train_dataset: Any = None, eval_dataset: Any = None, **settings: Any) -> StageResult:
    """PPO against a reward model (``rlhfkit ppo``); rows: prompts."""
    from rlhfkit.config import build_config
    from rlhfkit.trainers.ppo import train
    from rlhfkit.trainers.ppo_config import PPOConfig

    summary = train(build_config(PPOConfig, config, **settings), train_dataset=train_dataset,
                    eval_dataset=eval_dataset)
    return StageResult(Path(summary.output_dir) / "final", summary.status, summary.last_metrics, summary)
