"""What the training loop hands to a stage, returns, and raises: :class:`Step`, :class:`UpdateResult`,
:class:`RunSummary`, :class:`NonFiniteError`, :class:`TrainingOOMError`.

Kept apart from ``loop.py`` so the loop's pieces (``loop_update.py``, ``loop_resume.py``) can use them without
importing the loop; ``rlhfkit.engine.loop`` re-exports all five (``docs/training-loop.md`` documents them there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.errors import RunStopped

__all__ = ["NonFiniteError", "RunSummary", "Step", "TrainingOOMError", "UpdateResult"]


class NonFiniteError(RunStopped):
    """A non-finite loss or gradient norm stopped the run (no optimizer step, no checkpoint after it)."""


class TrainingOOMError(RunStopped):
    """The run ran out of memory; the message says which setting to lower and what was saved."""


@dataclass
class Step:
    """One step handed to the stage: this process's share of one global batch."""

    number: int  # 1-based number of this step
    total: int  # steps in the whole run
    epoch: int  # 0-based epoch the examples come from
    indices: list[list[int]]  # dataset indices of each micro-batch of this process
    micro_batches: list[Any]  # the collated micro-batches, same order (grad_accum_steps of them, fewer at an epoch's end)
    num_examples: int  # examples of the global batch over all processes (before any padding)

    @property
    def batch(self) -> Any:
        """The only micro-batch (stages that do not accumulate, e.g. PPO with grad_accum_steps=1)."""
        if len(self.micro_batches) != 1:
            raise ValueError(f"step {self.number} has {len(self.micro_batches)} micro-batches; use micro_batches")
        return self.micro_batches[0]


@dataclass
class UpdateResult:
    grad_norm: float  # global L2 norm of the gradients before clipping
    skipped: bool  # True when the guard skipped this optimizer step
    lr: float  # learning rate of the step


@dataclass
class RunSummary:
    status: str  # "completed", "already_complete" or "error"
    step: int  # steps completed
    total_steps: int
    output_dir: Path
    checkpoint: Path | None  # the latest complete checkpoint
    last_metrics: dict[str, Any] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)
