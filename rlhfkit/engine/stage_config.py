"""Config sections every training stage shares: the model to start from, the data, LoRA.

A stage config nests these beside ``train: TrainConfig`` (``rlhfkit.engine.train_config``)::

    model: {path: runs/sft}
    data: {train_file: prefs.jsonl, eval_file: prefs_eval.jsonl, max_length: 256}
    lora: {enabled: true, r: 8}
    train: {output_dir: runs/dpo, lr: 5e-6}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfkit.config import ConfigError
from rlhfkit.models.lora import LoraSettings


@dataclass
class ModelConfig:
    path: str = ""
    """A local Hugging Face model folder (or a PEFT adapter folder) to start from."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype. float32 on CPU: bf16 matmuls are ~10x slower on most CPUs. Half precision only with
    LoRA (frozen base, float32 adapters): full fine-tuning wants float32 weights and
    ``train.mixed_precision=bf16`` (see :func:`check_trained_dtype`)."""
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
    """Training rows: a JSON Lines, JSON, Parquet or CSV file, a ``datasets`` folder (``save_to_disk``) or a
    ``datasets`` name loadable offline; ``SOURCE[split]`` picks a split. Row shapes by stage (ours, TRL's,
    HH transcripts): docs/data-formats.md. In Python, ``train_dataset=`` (a ``datasets.Dataset`` or a list
    of dicts) replaces it."""
    eval_file: str | None = None
    """Held-out rows of the same kind; evaluated every ``train.eval_every`` steps and at the end."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename the data's columns to the names rlhfkit reads, e.g. ``{question: prompt, answer: response}``;
    problems still name the data's own column."""
    max_length: int = 512
    """Prompt + response tokens kept; the response's end is truncated first (and counted)."""
    max_prompt_length: int | None = 256
    """Prompt tokens kept; the prompt's START is truncated (its end is what the response answers)."""
    template: str | None = None
    """Chat template: null = the tokenizer's own (else the documented default), "raw", or a Jinja string. With
    ``rollout.environment`` (online RL) it also receives the environment's tools as ``tools=``; "raw" ignores them."""
    empty: Literal["error", "warn", "drop"] = "error"
    """What an empty or whitespace-only text does: stop before training, warn (counted), or drop (counted)."""
    identical: Literal["error", "warn", "drop"] = "error"
    """Preference rows whose chosen equals rejected carry no signal (loss ln 2): same choices as ``empty``."""

    def validate(self) -> None:
        for source, target in self.columns.items():
            if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
                raise ConfigError(f"data.columns: expected column names (strings), got {source!r}: {target!r}")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be below data.max_length "
                f"({self.max_length}), or no response token would fit"
            )


def data_sources(data: DataConfig, train_dataset=None, eval_dataset=None) -> dict[str, object]:
    """``{"train": …, "eval": …}``: what each split reads — the Python objects passed to a stage, else the
    configured files (a split without either is absent). Raises ConfigError when there is no training data."""
    sources = {"train": train_dataset if train_dataset is not None else data.train_file or None,
               "eval": eval_dataset if eval_dataset is not None else data.eval_file}
    if sources["train"] is None:
        raise ConfigError("data.train_file is required (in Python: or pass train_dataset=)")
    return {split: source for split, source in sources.items() if source is not None}


def source_name(source: object, split: str) -> str:
    """How problems, logs and reports name a split's source: the path, or the Python argument that passed
    the rows (``train_dataset``, ``eval_dataset``)."""
    return source if isinstance(source, str) else f"{split}_dataset"


@dataclass
class LoraConfig(LoraSettings):
    enabled: bool = False
    """Train LoRA adapters (PEFT) instead of all weights; the reference is the model with adapters off."""

    def settings(self) -> LoraSettings:
        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout,
                            target_modules=self.target_modules, bias=self.bias,
                            extra_trainable=list(self.extra_trainable))


def check_trained_dtype(model: ModelConfig, lora: LoraSettings | None = None) -> None:
    """Refuse half-precision weights for full fine-tuning, before any model is loaded.

    AdamW would update bfloat16 weights in place, with no float32 master copy, and a step below half the
    spacing of bf16 numbers near a weight (2^-8 of it) rounds to no change: at lr 1e-6 (DPO's default)
    1.9 % of the weights of a tiny Llama ever moved in 10 steps, at 1e-5 15 % (issue 17). float32 weights
    under bf16 autocast are the float32 master weights the peers keep (DeepSpeed's bf16 optimizer, FSDP's
    mixed precision, transformers' ``bf16=True``), with the matrix products in bf16.
    """
    if model.dtype == "float32" or (lora is not None and getattr(lora, "enabled", False)):
        return
    raise ConfigError(
        f"model.dtype={model.dtype} with full fine-tuning would update {model.dtype} weights without a "
        "float32 master copy, and small updates round to nothing (at lr 1e-6 under 2 % of the weights move); "
        "set model.dtype=float32 with train.mixed_precision=bf16 (float32 weights, bf16 compute), or "
        "lora.enabled=true (a frozen half-precision base with float32 adapters)")
