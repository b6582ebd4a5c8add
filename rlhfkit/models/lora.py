"""LoRA through PEFT; the reference policy as the same model with its adapters disabled.

With LoRA the frozen reference π_ref of PPO and DPO needs no second copy of the model: the base weights
never change, so ``with adapters_disabled(model): …`` *is* π_ref (Hu et al. 2021; the trick TRL and
OpenRLHF use). :func:`save_policy` writes either a merged standard folder or a PEFT adapter folder.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.models.forward import forward_logits, unwrap_model

# Attention projections and MLP of each family (the "all linear layers but the head" recipe of QLoRA,
# Dettmers et al. 2023, which beats attention-only LoRA).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (PEFT ``LoraConfig`` underneath)."""

    r: int = 16
    """Rank of the update ``ΔW = (alpha / r) · B A``."""
    alpha: float = 32.0
    """Scale numerator; the update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the LoRA input (SFT and reward training). PPO, and DPO with ``disable_dropout``, switch it
    off after applying the adapters: they compare log-probs of the same tokens across passes (PPO ratios,
    DPO against the reference), and dropout makes those passes disagree."""
    target_modules: str | list[str] = "auto"
    """Module names to adapt; "auto" = :data:`DEFAULT_TARGET_MODULES` for the architecture (attention + MLP),
    falling back to PEFT's "all-linear"."""
    bias: str = "none"
    """Which biases to train: "none", "all" or "lora_only" (PEFT)."""
    extra_trainable: list[str] = field(default_factory=list)
    """Modules trained in full beside the adapters (PEFT ``modules_to_save``)."""

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"lora.bias must be one of none, all, lora_only; got {self.bias!r}")


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def target_modules_for(model, target_modules: str | list[str] = "auto") -> list[str] | str:
    """Resolve "auto" to the family's attention + MLP projections; anything else is returned as given."""
    if target_modules != "auto":
        return list(target_modules) if not isinstance(target_modules, str) else target_modules
    model_type = unwrap_model(model).config.model_type
    return list(DEFAULT_TARGET_MODULES.get(model_type, [])) or "all-linear"


def _is_sequence_classifier(model) -> bool:
    return type(unwrap_model(model)).__name__.endswith("ForSequenceClassification")


def _uses_conv1d(model, targets) -> bool:
    # GPT-2 stores its projections as transformers' Conv1D (weight transposed): PEFT needs fan_in_fan_out.
    if isinstance(targets, str):
        return False
    return any(type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
               for name, m in unwrap_model(model).named_modules())


def apply_lora(model, settings: LoraSettings):
    """Wrap ``model`` with LoRA adapters (``peft.get_peft_model``); only adapters (and the scalar head of a
    reward/value model, PEFT task SEQ_CLS) are trainable. Returns the ``PeftModel``; the base weights
    are shared, not copied.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if is_peft_model(model):
        raise ValueError("model already has adapters; apply_lora expects a plain transformers model")
    targets = target_modules_for(model, settings.target_modules)
    seq_cls = _is_sequence_classifier(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias=settings.bias,
        fan_in_fan_out=_uses_conv1d(model, targets),
        modules_to_save=list(settings.extra_trainable) or None,
        task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


@contextmanager
def adapters_disabled(model) -> Iterator[object]:
    """Inside the block ``model`` computes its base (reference) outputs; adapters come back after it.

    Works on a ``PeftModel`` or a :class:`rlhfkit.models.heads.PolicyWithValueHead` around one. A model
    without adapters raises: silently using the trained policy as its own reference would make the KL
    penalty zero.
    """
    peft_model = getattr(model, "policy", model) if type(model).__name__ == "PolicyWithValueHead" else model
    if not is_peft_model(peft_model):
        raise ValueError(
            f"{type(peft_model).__name__} has no adapters to disable; keep a frozen copy as the reference"
        )
    with peft_model.disable_adapter():
        yield model


@torch.no_grad()
def reference_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the reference policy = ``model`` with adapters disabled (no grad). (B, T) -> (B, T, V)."""
    with adapters_disabled(model) as reference:
        return forward_logits(reference, input_ids, attention_mask, logits_to_keep)


def save_policy(model, out_dir: str | Path, merge: bool, tokenizer=None,
                base_model_path: str | Path | None = None) -> Path:
    """Save a policy so plain transformers / peft load it without rlhfkit.

    A plain model: ``save_pretrained`` (``merge`` is irrelevant). A ``PeftModel``: ``merge=True`` writes a
    standard folder with ``W + (alpha/r)·BA`` folded in (computed on a deep copy: the live model keeps
    its adapters, at the cost of one extra copy of the weights during the save); ``merge=False`` writes
    the PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) whose
    ``base_model_name_or_path`` is ``base_model_path`` if given, else the folder the base was loaded from.
    The tokenizer, if given, is saved beside either.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not is_peft_model(model):
        model.save_pretrained(out)
    elif merge:
        copy.deepcopy(model).merge_and_unload().save_pretrained(out)
    else:
        model.save_pretrained(out)
        _set_adapter_base(out, model, base_model_path)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out.resolve()


def _set_adapter_base(out: Path, model, base_model_path) -> None:
    config_file = out / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text())
    base = base_model_path or adapter_config.get("base_model_name_or_path") or unwrap_model(model).name_or_path
    if base and Path(base).exists():
        base = str(Path(base).resolve())
    adapter_config["base_model_name_or_path"] = base or None
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True))


def trainable_parameter_count(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
