"""The critic-free side of the online trainer (GRPO, Dr. GRPO, RLOO, REINFORCE++): the models it loads, the
advantages of a rollout, the policy loss of a micro-batch and the extra metrics — used by
:class:`rlhfkit.trainers.ppo.PPOTrainer` when ``advantage.estimator`` is not ``gae``.

Differences from PPO, each from its paper (``docs/implementation-details.md``, "critic-free"):

- no value model: the baseline is the other responses to the same prompt (``rollout.n`` per prompt) or the batch;
- the KL penalty is either folded into the rewards (``kl.penalty: reward``) or a k3 loss term (``loss``); with
  β = 0 and the fixed controller no reference model is loaded at all;
- the loss is aggregated per token over the minibatch or per sequence (``advantage.loss_aggregation``), with an
  asymmetric clip range (``advantage.clip_range_low/high``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfkit.advantages import equal_reward_group_fraction, get_advantage_estimator, informative_rows
from rlhfkit.data.templates import adopt_template
from rlhfkit.envs.environment import load_environment
from rlhfkit.losses import per_token_rewards, ppo_policy_loss
from rlhfkit.models.dropout import disable_dropout
from rlhfkit.models.forward import unwrap_model
from rlhfkit.models.load import is_adapter_folder, load_causal_lm, load_tokenizer
from rlhfkit.models.lora import apply_lora, save_policy
from rlhfkit.models.policy import query_response_logprobs
from rlhfkit.models.reward import load_reward_model
from rlhfkit.ops import identity
from rlhfkit.policy_losses import aggregate_loss, k3_kl_loss
from rlhfkit.rewards.judge import LMJudgeReward
from rlhfkit.rewards.sources import RewardSources, load_reward_function
from rlhfkit.rollout.experience import Rollout
from rlhfkit.rollout.score import RewardModelScorer, Scorer
from rlhfkit.trainers.ppo_config import PPOConfig
from rlhfkit.trainers.ppo_models import PPOModels, _frozen, eos_token_ids, reward_model_scorer


class PolicyOnly(nn.Module):
    """The trained module without a critic: ``forward`` has :class:`~rlhfkit.trainers.ppo_models.ActorCritic`'s
    signature and returns ``(logprobs, entropy or None, None)``."""

    value_model = None

    def __init__(self, policy: nn.Module, share_prompts: bool = False) -> None:
        super().__init__()
        self.policy = policy
        # A prompt repeated among the rows (the group) forwarded once, its keys and values serving each response;
        # the two forwards run for every batch (`always`), so the rollout's log-probs (64 rows, each prompt 4
        # times) and an update's (a few rows, a prompt once or twice) are the same computation per row, as with
        # the full forward: with rollout.old_logprobs=forward the first ratio stays exactly 1.
        self.share_prompts = share_prompts

    @property
    def language_model(self) -> nn.Module:
        return self.policy

    def forward(self, query_ids, query_mask, response_ids, response_mask, temperature: float,
                with_entropy: bool = False):
        out = query_response_logprobs(self.policy, query_ids, query_mask, response_ids, response_mask, temperature,
                                      with_entropy, share=self.share_prompts, always=True)
        return (*out, None) if with_entropy else (out, None, None)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        unwrap_model(self.policy).gradient_checkpointing_enable(**kwargs)

    def value_parameters(self) -> list[nn.Parameter]:
        return []


@dataclass
class OnlineModels(PPOModels):
    """:class:`PPOModels` plus: ``no_reference`` (β = 0: no π_ref loaded, no reference log-probs computed) and
    ``environment`` (``rollout.environment`` loaded: responses are multi-turn episodes; None = single-turn)."""

    no_reference: bool = False
    environment: Any = None

    def to(self, device: torch.device) -> OnlineModels:
        super().to(device)
        for _name, _weight, kind, source in getattr(self.scorer, "sources", []):
            model = getattr(source, "model", None)
            if kind in ("scorer", "judge") and isinstance(model, nn.Module):
                model.to(device)
        return self


def needs_reference(cfg: PPOConfig) -> bool:
    """π_ref is needed unless the penalty is off for good (β = 0 with the fixed controller)."""
    return not (cfg.advantage.critic_free and cfg.kl.init_coef == 0 and cfg.kl.controller == "fixed")


def reward_sources(cfg: PPOConfig, tokenizer, eos_ids: list[int]) -> RewardSources:
    """The ``rewards`` list as one scorer (functions imported, reward models and judges loaded and frozen)."""
    sources, specs = [], []
    for source in cfg.rewards:
        if source.function:
            sources.append((source.display_name, source.weight, "function", load_reward_function(source.function)))
            specs.append(source.function)
        elif source.judge:  # rows per forward as for the other frozen models
            judge = LMJudgeReward.from_spec(source.judge, dtype=cfg.model.dtype,
                                            batch_size=cfg.ppo.micro_batch_size or cfg.ppo.minibatch_size)
            sources.append((source.display_name, source.weight, "judge", judge))
            specs.append(source.judge)
        else:
            model, reward_tok = load_reward_model(source.reward_model, cfg.model.dtype,
                                                  attn_implementation=cfg.model.attn_implementation)
            scorer = RewardModelScorer(_frozen(model), reward_tok, tokenizer, retokenize=cfg.reward_model.retokenize,
                                       template=cfg.reward_model.template, policy_template=cfg.data.template,
                                       batch_size=cfg.rollout.chunk_size, eos_token_id=eos_ids)
            sources.append((source.display_name, source.weight, "scorer", scorer))
            specs.append(source.reward_model)
    return RewardSources(sources, tokenizer, template=cfg.data.template, eos_token_id=eos_ids, specs=specs)


def online_environment(cfg: PPOConfig) -> Any:
    """``rollout.environment`` loaded (None when unset): load it once and give the same object to the prompts
    (its tools, ``ppo.encode_prompts``) and to :func:`build_online_models` (its episodes)."""
    return load_environment(cfg.rollout.environment) if cfg.rollout.environment else None


def build_online_models(cfg: PPOConfig, scorer: Scorer | None = None, environment: Any = None) -> OnlineModels:
    """PPO's models for ``gae``; for the critic-free estimators the policy alone (no value model), π_ref only
    when the KL penalty can be non-zero. ``rewards`` (if listed) become the scorer unless ``scorer`` is given.
    ``environment``: :func:`online_environment`'s, already loaded; None loads it here."""
    from rlhfkit.trainers.ppo_models import build_ppo_models

    if environment is None:
        environment = online_environment(cfg)
    if not cfg.advantage.critic_free:
        if scorer is None and cfg.rewards:
            tokenizer = load_tokenizer(cfg.model.path)
            scorer = reward_sources(cfg, tokenizer, eos_token_ids(tokenizer, _generation_config_holder(cfg)))
        return OnlineModels(**vars(build_ppo_models(cfg, scorer)), environment=environment)
    dtype, attention = cfg.model.dtype, cfg.model.attn_implementation
    tokenizer = adopt_template(load_tokenizer(cfg.model.path), cfg.data.template)  # saved with the policy
    policy = load_causal_lm(cfg.model.path, dtype, merge_adapter=True, attn_implementation=attention)
    eos_ids = eos_token_ids(tokenizer, policy)
    reference = None
    with_reference = needs_reference(cfg)
    if with_reference and not (cfg.lora.enabled and not cfg.reference.path):
        reference = _frozen(load_causal_lm(cfg.reference.path or cfg.model.path, dtype, merge_adapter=True,
                                           attn_implementation=attention))
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora.settings())
    disable_dropout(policy)  # after LoRA: its adapters bring lora_dropout (the first ratio must be exactly 1)
    if scorer is None and cfg.rewards:
        scorer = reward_sources(cfg, tokenizer, eos_ids)
    if scorer is None:
        scorer = reward_model_scorer(cfg, tokenizer, eos_ids)
    return OnlineModels(PolicyOnly(policy, share_prompts=True), reference, scorer, tokenizer, eos_ids,
                        no_reference=not with_reference, environment=environment)


class _generation_config_holder:  # noqa: N801 — stands in for a model: eos_token_ids reads generation_config
    """The policy folder's generation config (its EOS ids) without loading the weights."""

    def __init__(self, cfg: PPOConfig) -> None:
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(cfg.model.path)
        except (OSError, ValueError):  # no generation_config.json: the model's config holds its EOS, as on load
            from transformers import AutoConfig

            try:
                self.generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(cfg.model.path))
            except (OSError, ValueError):  # an adapter folder: the tokenizer's EOS (PPO's loader reads the base's)
                self.generation_config = None


def advantages_and_rewards(rollout: Rollout, cfg: PPOConfig, beta: float,
                           sum_over_processes: Callable[[torch.Tensor], torch.Tensor] = identity
                           ) -> tuple[torch.Tensor, Any]:
    """``(advantages (B, T), PerTokenRewards)`` of a rollout whose rows come in groups of ``rollout.n``: the
    per-token rewards carry −β·KL only with ``kl.penalty: reward``. ``sum_over_processes`` (the trainer's
    all-reduce) lets a batch-wide statistic, REINFORCE++'s whitening, span every process's rows. Over the model's
    tokens only (``rollout.action_mask``): an episode's environment tokens get no KL, reward or advantage."""
    mask = rollout.action_mask
    ref = rollout.ref_logprobs if rollout.ref_logprobs is not None else rollout.logprobs
    in_reward = beta if cfg.kl.penalty == "reward" else 0.0
    shaped = per_token_rewards(rollout.scores, rollout.logprobs, ref, mask, in_reward, cfg.kl.estimator,
                               gaps=rollout.env_mask is not None)
    estimator = get_advantage_estimator(cfg.advantage.estimator)
    return estimator(shaped.rewards, mask, cfg.rollout.n, cfg.ppo.gamma,
                     sum_over_processes=sum_over_processes), shaped


def kept_rows(rollout: Rollout, cfg: PPOConfig) -> torch.Tensor | None:
    """(B,) 1/0, the rows the update learns from with ``advantage.filter_zero_std_groups`` (None without it):
    0 on the rows of a group whose scores are all equal (DAPO §3.2)."""
    return informative_rows(rollout.scores, cfg.rollout.n) if cfg.advantage.filter_zero_std_groups else None


def policy_loss_sum(logprobs: torch.Tensor, part: Rollout, cfg: PPOConfig, beta: float
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's aggregated (un-normalised) loss — clipped surrogate, plus β·k3 with
    ``kl.penalty: loss`` — and its diagnostics (detached 0-d, means over its valid tokens)."""
    a, mask = cfg.advantage, loss_mask(part)
    low = a.clip_range_low if a.clip_range_low is not None else cfg.ppo.clip_range
    high = a.clip_range_high if a.clip_range_high is not None else cfg.ppo.clip_range
    out = ppo_policy_loss(logprobs, part.logprobs, part.advantages, mask, low, high)
    losses = out.losses
    stats = {"ppo/policy/clipfrac_low": out.clipfrac_low, "ppo/policy/clipfrac_high": out.clipfrac_high,
             "ppo/policy/clipfrac": out.clipfrac, "ppo/policy/approxkl": out.approxkl,
             "ppo/ratio/mean": out.ratio_mean}
    if cfg.kl.penalty == "loss" and beta > 0:
        kl = k3_kl_loss(logprobs, part.ref_logprobs, mask)
        losses = losses + beta * kl
        stats["ppo/policy/kl_loss"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
    stats["ppo/policy/loss"] = (out.losses.detach() * mask).sum() / mask.sum().clamp(min=1)
    return aggregate_loss(losses, mask, a.loss_aggregation), {**stats, "ppo/ratio/max": out.ratio_max}


def loss_mask(part: Rollout) -> torch.Tensor:
    """(B, T): the response tokens the update learns from — the model's own (``action_mask``: not an episode's
    environment tokens), except a dropped row's (``keep`` 0, ``advantage.filter_zero_std_groups``). The forward
    pass still reads the whole response mask."""
    mask = part.action_mask
    if part.keep is None:
        return mask
    return mask * (part.keep > 0).unsqueeze(1).to(mask.dtype)


def critic_free_metrics(rollout: Rollout, n: int) -> dict[str, Any]:
    """``objective/equal_reward_groups`` (share of prompts whose n scores are all equal: no signal) and
    ``response/length_min|max``."""
    lengths = rollout.response_lengths.float()
    metrics = {"response/length_min": lengths.min(), "response/length_max": lengths.max()}
    if rollout.env_mask is not None:  # episodes: the model's own tokens per episode
        metrics["episode/model_tokens_mean"] = rollout.action_mask.sum(dim=1).float().mean()
    if n > 1:
        metrics["objective/equal_reward_groups"] = equal_reward_group_fraction(rollout.scores, n)
    return metrics


def save_policy_only(models: OnlineModels, cfg: PPOConfig, out_dir: Path) -> dict[str, Path]:
    """Write ``final/`` (a standard folder, or with LoRA an adapter folder over ``model.path``) — no value model."""
    from rlhfkit.engine.checkpoint import save_folder_atomically

    as_adapter = cfg.lora.enabled and not is_adapter_folder(cfg.model.path)
    base = str(Path(cfg.model.path).resolve()) if as_adapter else None
    policy = models.actor_critic.policy
    return {"policy": save_folder_atomically(
        out_dir / "final",
        lambda folder: save_policy(policy, folder, merge=not as_adapter, tokenizer=models.tokenizer,
                                   base_model_path=base))}
