"""Config sections every training stage shares: the model to start from, the data, LoRA.

A stage config nests these beside ``train: TrainConfig`` (``rlhfkit.trainers.train_config``)::

    model: {path: runs/sft}
    data: {train_file: prefs.jsonl, eval_file: prefs_eval.jsonl, max_length: 256}
    lora: {enabled: true, r: 8}
    train: {output_dir: runs/dpo, lr: 5e-6}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import ConfigError
from rlhfkit.models.lora import LoraSettings


@dataclass
class ModelConfig:
    path: str = ""
    """A local Hugging Face model folder (or a PEFT adapter folder) to start from."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype. float32 on CPU: bf16 matmuls are ~10x slower on most CPUs."""
    attn_implementation: str | None = None
    """Attention kernel of every model the stage loads (policy, reference, reward and value models), as
    transformers names it: ``eager``, ``sdpa``, ``flash_attention_2``, … null: transformers' default (sdpa).
    The saved models do not record it."""

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("model.path is required (a local Hugging Face model folder)")
        if self.attn_implementation is not None and not self.attn_implementation.strip():
            raise ConfigError("model.attn_implementation is empty; name a kernel (e.g. eager, sdpa) or use null")


@dataclass
class DataConfig:
    train_file: str = ""
    """JSON Lines file of training rows (format by stage: see docs/data-formats.md)."""
    eval_file: str | None = None
    """Held-out rows of the same format; evaluated every ``train.eval_every`` steps and at the end."""
    max_length: int = 512
    """Prompt + response tokens kept; the response's end is truncated first (and counted)."""
    max_prompt_length: int | None = 256
    """Prompt tokens kept; the prompt's START is truncated (its end is what the response answers)."""
    template: str | None = None
    """Chat template: null = the tokenizer's own (else the documented default), "raw", or a Jinja string."""
    empty: Literal["error", "warn", "drop"] = "error"
    """What an empty or whitespace-only text does: stop before training, warn (counted), or drop (counted)."""
    identical: Literal["error", "warn", "drop"] = "error"
    """Preference rows whose chosen equals rejected carry no signal (loss ln 2): same choices as ``empty``."""

    def validate(self) -> None:
        if not self.train_file:
            raise ConfigError("data.train_file is required")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be below data.max_length "
                f"({self.max_length}), or no response token would fit"
            )


@dataclass
class LoraConfig(LoraSettings):
    enabled: bool = False
    """Train LoRA adapters (PEFT) instead of all weights; the reference is the model with adapters off."""

    def settings(self) -> LoraSettings:
        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout,
                            target_modules=self.target_modules, bias=self.bias,
                            extra_trainable=list(self.extra_trainable))
