"""PPO's four models: policy (trained), reference (frozen), reward model (frozen), value model (trained).

The two trained models live in one :class:`ActorCritic` module, so the shared loop gives them one optimizer
(two learning rates through parameter groups), one gradient clip, one checkpoint and — under DDP — one
gradient synchronisation; its ``forward`` returns the per-token log-probs, entropies and values PPO needs
from one call. The value model is either a separate scalar-head model initialised from the reward model
(InstructGPT, Ouyang et al. 2022 §3.5; the default — or from the policy when the reward model reads another
tokenizer) or a linear head on the policy's trunk (lm-human-preferences). With LoRA the reference is the
policy with its adapters disabled — no second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfkit.config import ConfigError
from rlhfkit.data.templates import adopt_template
from rlhfkit.models.dropout import disable_dropout
from rlhfkit.models.forward import unwrap_model
from rlhfkit.models.heads import PolicyWithValueHead, token_values
from rlhfkit.models.load import is_adapter_folder, load_causal_lm, load_tokenizer, set_attention
from rlhfkit.models.lora import adapters_disabled, apply_lora, save_policy
from rlhfkit.models.policy import (
    policy_value_outputs,
    query_response_logprobs,
    response_logprobs,
    response_logprobs_and_entropy,
    values_for_actions,
)
from rlhfkit.models.reward import load_reward_model, save_scalar_model
from rlhfkit.rollout.score import RewardModelScorer, Scorer, same_vocabulary
from rlhfkit.trainers.ppo_config import PPOConfig


def _full_sequence(query_ids, query_mask, response_ids, response_mask):
    """(B, P + T) ids, attention mask, and the response mask in sequence coordinates."""
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask.long(), response_mask.long()], dim=1)
    response_in_sequence = torch.cat([torch.zeros_like(query_mask.long()), response_mask.long()], dim=1)
    return ids, mask, response_in_sequence


class ActorCritic(nn.Module):
    """The policy and the value model, trained together. ``value_model=None``: ``policy`` is a
    :class:`PolicyWithValueHead` and one forward gives both."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    @property
    def language_model(self) -> nn.Module:
        """The causal LM (plain or PEFT) that generates: the policy without its value head."""
        return self.policy.policy if self.value_model is None else self.policy

    def forward(self, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, temperature: float, with_entropy: bool = False):
        """``(logprobs, entropy or None, values)``, each (B, T) and action-aligned (see ``models/policy.py``):
        ``logprobs[:, t] = log π_T(a_t | s_t)`` with logits ÷ ``temperature``; ``values[:, t] = V(s_t)``,
        the value of the state in which token t was chosen. Zero off the response."""
        ids, mask, response_in_sequence = _full_sequence(query_ids, query_mask, response_ids, response_mask)
        width = query_ids.shape[1]  # P: the response starts here
        if self.value_model is None:
            logprobs, entropy, values = policy_value_outputs(self.policy, ids, mask, response_in_sequence,
                                                             temperature)
        else:
            if with_entropy:
                logprobs, entropy = response_logprobs_and_entropy(self.policy, ids, mask, response_in_sequence,
                                                                  temperature)
            else:
                logprobs = response_logprobs(self.policy, ids, mask, response_in_sequence, temperature)
                entropy = None
            state_values = token_values(self.value_model, ids, mask)  # (B, P + T): V(x_{≤t})
            values = values_for_actions(state_values, response_in_sequence)
        entropy = entropy[:, width:] if (with_entropy and entropy is not None) else None
        return logprobs[:, width:], entropy, values[:, width:]

    def values(self, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
               response_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) action-aligned ``V(s_t)`` of a separate value model alone (no policy forward); zero off the
        response. With a value head use :meth:`value_readout` during sampling instead."""
        if self.value_model is None:
            raise ValueError("values() needs a separate value model; a value head reads the policy's trunk")
        ids, mask, response_in_sequence = _full_sequence(query_ids, query_mask, response_ids, response_mask)
        state_values = token_values(self.value_model, ids, mask)  # (B, P + T): V(x_{≤t})
        return values_for_actions(state_values, response_in_sequence)[:, query_ids.shape[1]:]

    def value_readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on final hidden states: (b, H) -> (b,) float32 (``value_model.kind=head`` only)."""
        return self.policy.value_head(hidden).squeeze(-1).float()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        unwrap_model(self.language_model).gradient_checkpointing_enable(**kwargs)
        if self.value_model is not None:
            unwrap_model(self.value_model).gradient_checkpointing_enable(**kwargs)

    def value_parameters(self) -> list[nn.Parameter]:
        value = self.value_model if self.value_model is not None else self.policy.value_head
        return [p for p in value.parameters() if p.requires_grad]


@dataclass
class PPOModels:
    """What the PPO step needs besides the config."""

    actor_critic: ActorCritic  # trained (policy + value model)
    reference: nn.Module | None  # frozen π_ref; None = the policy with adapters disabled (LoRA)
    scorer: Scorer  # the frozen reward model (or any scorer)
    tokenizer: Any  # the policy's
    eos_token_ids: list[int]  # ids that end a response
    value_tokenizer: Any = None  # saved beside a separate value model (it may carry a dedicated pad token)

    @torch.no_grad()
    def reference_logprobs(self, query_ids, query_mask, response_ids, response_mask, temperature: float):
        """(B, T) ``log π_ref(a_t | s_t)`` with the same logits ÷ temperature as the policy's log-probs; a prompt
        repeated in the batch (GRPO's group) is forwarded once (:func:`query_response_logprobs`)."""
        ids = (query_ids, query_mask, response_ids, response_mask)
        with torch.no_grad():
            if self.reference is not None:
                return query_response_logprobs(self.reference, *ids, temperature)
            policy = self.actor_critic.language_model
            with adapters_disabled(policy):
                return query_response_logprobs(policy, *ids, temperature)

    def to(self, device: torch.device) -> PPOModels:
        """Move the frozen models (the loop moves the trained ones)."""
        if self.reference is not None:
            self.reference.to(device)
        model = getattr(self.scorer, "model", None)
        if isinstance(model, nn.Module):
            model.to(device)
        return self


def _frozen(model: nn.Module) -> nn.Module:
    disable_dropout(model)
    model.requires_grad_(False)
    return model.eval()


def eos_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config (e.g. ChatML's ``<|im_end|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    if not ids:
        raise ConfigError("the policy's tokenizer has no EOS token, so responses cannot end")
    return list(dict.fromkeys(int(i) for i in ids))


def build_ppo_models(cfg: PPOConfig, scorer: Scorer | None = None) -> PPOModels:
    """Load the four models of ``cfg`` (``scorer`` replaces the reward model, e.g. a programmatic judge)."""
    dtype, attention = cfg.model.dtype, cfg.model.attn_implementation
    tokenizer = adopt_template(load_tokenizer(cfg.model.path), cfg.data.template)  # saved with the policy
    policy = load_causal_lm(cfg.model.path, dtype, merge_adapter=True, attn_implementation=attention)
    eos_ids = eos_token_ids(tokenizer, policy)
    reference = None
    if not (cfg.lora.enabled and not cfg.reference.path):
        reference = _frozen(load_causal_lm(cfg.reference.path or cfg.model.path, dtype, merge_adapter=True,
                                           attn_implementation=attention))
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora.settings())
    if scorer is None:
        scorer = reward_model_scorer(cfg, tokenizer, eos_ids)
    value_model, value_tok = _build_value_model(cfg, tokenizer)
    if value_model is None:
        policy = PolicyWithValueHead(policy, head_init_std=cfg.value_model.head_init_std, seed=cfg.train.seed)
    actor_critic = ActorCritic(policy, value_model)
    # PPO compares log-probs (and values) of the same tokens across forwards — old vs new, policy vs reference —
    # so the first ratio is exactly 1 only without dropout. After LoRA: its adapters bring lora_dropout.
    disable_dropout(actor_critic)
    return PPOModels(actor_critic, reference, scorer, tokenizer, eos_ids, value_tok)


def reward_model_scorer(cfg: PPOConfig, tokenizer, eos_ids: list[int]) -> RewardModelScorer:
    """``reward_model.path`` loaded frozen, scoring the policy's responses (re-tokenised if its tokenizer
    differs)."""
    reward_model, reward_tok = load_reward_model(cfg.reward_model.path, cfg.model.dtype,
                                                 attn_implementation=cfg.model.attn_implementation)
    return RewardModelScorer(_frozen(reward_model), reward_tok, tokenizer, retokenize=cfg.reward_model.retokenize,
                             template=cfg.reward_model.template, policy_template=cfg.data.template,
                             batch_size=cfg.rollout.chunk_size, eos_token_id=eos_ids)


def _build_value_model(cfg: PPOConfig, policy_tokenizer) -> tuple[nn.Module | None, Any]:
    """The trained value model: from ``value_model.path``, else from the reward model (InstructGPT §3.5),
    else — when the reward model reads another tokenizer than the policy — from the policy itself."""
    if cfg.value_model.kind == "head":
        return None, None
    path = cfg.value_model.path or cfg.reward_model.path
    if same_vocabulary(policy_tokenizer, load_tokenizer(path)):
        value_model, value_tok = load_reward_model(path, cfg.model.dtype,
                                                   attn_implementation=cfg.model.attn_implementation)
    elif cfg.value_model.path:
        raise ConfigError(f"the value model (value_model.path: {path}) uses another tokenizer than the policy, "
                          "but it must read the policy's tokens; set value_model.kind=head, or leave "
                          "value_model.path empty to start it from the policy")
    else:
        value_model, value_tok = _value_model_from_policy(cfg, policy_tokenizer)
    # Otherwise the reward model's own weights and score offset (what value_model_from_reward_model gives):
    # the initial values are on the scale of the scores they must predict.
    if cfg.lora.enabled:  # adapters plus a trainable score head (PEFT task SEQ_CLS)
        return apply_lora(value_model, cfg.lora.settings()), value_tok
    return value_model.requires_grad_(True).train(), value_tok


def _value_model_from_policy(cfg: PPOConfig, policy_tokenizer) -> tuple[nn.Module, Any]:
    """A scalar-head model on the policy's trunk (the SFT weights), head from ``value_model.head_init_std``
    (default 0: every initial value is 0, the mean score of a centred reward model on reference responses;
    lm-human-preferences' value-head init). Used when the reward model reads another tokenizer, so its weights
    cannot read the policy's token ids."""
    from rlhfkit.data.order import derive_seed
    from rlhfkit.engine.metrics_log import say
    from rlhfkit.models.reward import reward_model_from_causal_lm

    say(f"ppo: the reward model ({cfg.reward_model.path}) uses another tokenizer than the policy; the value "
        f"model starts from the policy ({cfg.model.path}), its head from value_model.head_init_std")
    model, value_tok = reward_model_from_causal_lm(cfg.model.path, policy_tokenizer,
                                                   head_init_std=cfg.value_model.head_init_std,
                                                   seed=derive_seed(cfg.train.seed, "value_head", bits=32),
                                                   dtype=cfg.model.dtype)
    set_attention(model, cfg.model.attn_implementation)
    return model, value_tok


def param_groups(actor_critic: ActorCritic, policy_lr: float, value_lr: float | None,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: policy and value parameters (each with its lr), matrices decayed, biases/norms not."""
    value_params = {id(p) for p in actor_critic.value_parameters()}
    trainable = [p for p in actor_critic.parameters() if p.requires_grad]
    groups = []
    for is_value, lr in ((False, policy_lr), (True, value_lr or policy_lr)):
        params = [p for p in trainable if (id(p) in value_params) == is_value]
        groups.append({"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def save_trained(models: PPOModels, cfg: PPOConfig, out_dir: Path) -> dict[str, Path]:
    """Write ``final/`` (the policy: a standard folder, or with LoRA a PEFT adapter folder over ``model.path``)
    and ``value_model/`` (merged), each whole or not at all. A value head is saved as
    ``value_head.safetensors`` inside ``final/``, which plain transformers ignores."""
    from rlhfkit.engine.checkpoint import save_folder_atomically

    actor_critic = models.actor_critic
    as_adapter = cfg.lora.enabled and not is_adapter_folder(cfg.model.path)
    base = str(Path(cfg.model.path).resolve()) if as_adapter else None

    def write_policy(folder: Path) -> None:
        options = {"merge": not as_adapter, "tokenizer": models.tokenizer, "base_model_path": base}
        if actor_critic.value_model is None:  # PolicyWithValueHead: the policy plus its head's file
            actor_critic.policy.save_pretrained(folder, **options)
        else:
            save_policy(actor_critic.policy, folder, **options)

    saved = {"policy": save_folder_atomically(out_dir / "final", write_policy)}
    if actor_critic.value_model is not None:
        saved["value_model"] = save_folder_atomically(
            out_dir / "value_model",
            lambda folder: save_scalar_model(actor_critic.value_model, models.value_tokenizer, folder))
    return saved
