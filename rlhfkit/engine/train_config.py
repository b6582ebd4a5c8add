"""The shared training-loop config: one typed dataclass every stage nests (``train:`` in a recipe).

A stage config holds ``train: TrainConfig`` beside its own sections, so a recipe reads::

    train:
      output_dir: runs/sft
      lr: 3.0e-4
      per_device_batch_size: 8
      grad_accum_steps: 2
      num_epochs: 3

and the command line overrides ``train.lr=1e-4``. Loaded with :func:`rlhfkit.config.load_config`.

*Step* means one optimizer step of the supervised stages (SFT, reward, DPO) — one global batch of
``per_device_batch_size × grad_accum_steps × processes`` examples — and one rollout iteration of PPO
(one global batch of prompts, inside which PPO takes several optimizer steps). All ``*_every`` and
``max_steps`` count these steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfkit.config import ConfigError

REPORTERS = ("jsonl", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    # --- where, and reproducibility
    output_dir: str = "runs/train"
    """Folder for checkpoints (``checkpoint-{step}``), ``metrics.jsonl`` and logs; a re-run resumes from it."""
    seed: int = 0
    """Seeds Python, NumPy, torch and the data order, each from its own stream (see ``determinism.py``)."""
    resume: bool = True
    """Continue from the latest complete checkpoint in ``output_dir``. False refuses to start when
    ``output_dir`` already holds checkpoints (two runs never mix in one folder)."""

    # --- optimizer (AdamW)
    lr: float = 5e-5
    """Peak learning rate (after warm-up)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay; applied to matrices only, never to biases or norm weights."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this; null disables clipping (the norm is still measured)."""

    # --- schedule and length
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Shape after warm-up: linear or cosine decay towards 0 at the last step, or constant."""
    warmup_steps: int = 0
    """Steps of linear warm-up from ``lr / warmup_steps`` to ``lr``. Exclusive with ``warmup_ratio``."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of the run's steps (rounded up)."""
    max_steps: int | None = None
    """Stop after this many steps; null means ``num_epochs`` passes over the data."""
    num_epochs: int = 1
    """Passes over the training data when ``max_steps`` is null."""

    # --- batches
    per_device_batch_size: int = 8
    """Examples per micro-batch on each process (the memory knob)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step; the global batch is
    ``per_device_batch_size × grad_accum_steps × processes``."""
    shuffle: bool = True
    """Visit the data in a fresh seeded permutation each epoch (false: dataset order)."""
    drop_last: bool = False
    """Drop each epoch's last, smaller step instead of training on it (false: no sample skipped)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (``model.gradient_checkpointing_enable()``): less memory,
    about a third more compute, same result."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """Autocast to bfloat16 through accelerate (``bf16``), float32 (``no``), or ``auto``: bf16 only where a
    short matmul probe finds it at least 1.25× faster here (``rlhfkit/engine/runtime.py``; rank 0's choice
    for every process, logged with both rates). ``auto`` is resolved once and written into this config (so
    checkpoints record it and a resumed run keeps it). The default stays float32: never the slow choice
    (bf16 can be 30–100× slower on a CPU without native bf16, float32 at most ~2× on one with it), and the
    same numbers on every machine. (fp16's loss scaling makes inf gradients on purpose, which fights the
    non-finite guard, so it is not offered.)"""
    threads: int = 0
    """torch intra-op threads for the whole stage (encoding, reference log-probs, generation, training), set
    before any work; 0 keeps the process's setting (torch's default: one per core). One is often fastest
    for small models on a busy machine. Like the world build's, the demo's and ``iterate``'s ``threads``."""

    # --- non-finite losses
    nonfinite: Literal["stop", "skip"] = "stop"
    """On a non-finite loss or gradient norm: ``stop`` with an error naming the step (default), or ``skip``
    the optimizer step (gradients zeroed, parameters untouched, counted in the log)."""
    max_consecutive_skips: int = 3
    """With ``nonfinite=skip``: stop after this many non-finite optimizer steps in a row."""

    # --- evaluation, logging, checkpoints
    eval_every: int = 0
    """Run the stage's evaluation every N steps (0: only after the last step)."""
    log_every: int = 1
    """Console / TensorBoard / W&B every N steps; ``metrics.jsonl`` always gets every step."""
    save_every: int = 100
    """Write a checkpoint every N steps (0: only after the last step, which is always saved)."""
    save_total_limit: int = 2
    """Complete checkpoints (model + optimizer state) kept during the run; older ones are deleted only after a
    newer one is complete."""
    keep_checkpoints_at_end: bool = False
    """After ``final/`` is written, keep the checkpoints as they are (to train further later). False (default)
    deletes all but the last and that one's optimizer state: a re-run still finds the run complete."""
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    """Metric sinks among jsonl (always on), tensorboard, wandb; a missing package is a note, not an error."""
    wandb_project: str = "rlhfkit"
    run_name: str | None = None
    """Name shown by the progress bar, TensorBoard and W&B (default: the output_dir's name)."""
    progress_bar: bool = True
    """A tqdm bar with loss, learning rate and gradient norm (main process only)."""

    def validate(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 keeps torch's setting), got {self.threads}")
        positive = ("per_device_batch_size", "grad_accum_steps", "num_epochs", "log_every",
                    "save_total_limit", "max_consecutive_skips")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1 or null, got {self.max_steps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("warmup_steps and warmup_ratio are both set; keep one of them")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.adam_eps > 0 or self.weight_decay < 0:
            raise ConfigError("adam_eps must be > 0 and weight_decay >= 0")
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if unknown:
            raise ConfigError(f"report_to: unknown sink {unknown[0]!r}; valid: {', '.join(REPORTERS)}")
        if not self.output_dir:
            raise ConfigError("output_dir must not be empty")


# Keys that may differ between a checkpoint and the resuming run: they change how a run is watched or
# where it lives, never the trajectory of the weights.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "output_dir", "resume", "eval_every", "log_every", "save_every", "save_total_limit", "report_to",
    "keep_checkpoints_at_end", "keep_last_checkpoints",  # the latter: save_total_limit's old name
    "wandb_project", "run_name", "progress_bar", "nonfinite", "max_consecutive_skips",
    # Recomputation replays the same RNG state (torch.utils.checkpoint preserves it): same numbers.
    "gradient_checkpointing",
    # The same arithmetic spread over more or fewer cores (a sum may round differently in its last bit).
    "threads",
})
# Safe when the global batch (their product × processes) is unchanged: the same examples form each step,
# only split differently into micro-batches (equal up to float rounding). This is the out-of-memory fix.
BATCH_SPLIT_KEYS = frozenset({"per_device_batch_size", "grad_accum_steps"})
# Safe only when the learning-rate schedule does not depend on the run length.
RUN_LENGTH_KEYS = frozenset({"max_steps", "num_epochs"})


def resume_conflict(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first TrainConfig key whose change would make a resumed run differ, or None.

    ``saved`` and ``current`` are ``dataclasses.asdict`` of the checkpoint's and the present config.
    Batch-split keys are judged by the caller (it knows the process count).
    """
    length_is_free = current.get("lr_schedule") == "constant" and not current.get("warmup_ratio")
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) == current.get(key) or key in SAFE_TO_CHANGE_ON_RESUME or key in BATCH_SPLIT_KEYS:
            continue
        if key in RUN_LENGTH_KEYS and length_is_free:
            continue
        return key
    return None
