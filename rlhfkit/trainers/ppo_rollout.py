"""PPO's rollout collection — stages 2–4 of :meth:`rlhfkit.trainers.ppo.PPOTrainer.step`: generate a response
per prompt, score it, and run every model once over it (logprobs, ref_logprobs, values), ``rollout.chunk_size``
prompts at a time, into one :class:`~rlhfkit.rollout.experience.Rollout`; then the rollout's metrics.

The update that learns from the rollout (rewards, advantages, PPO epochs) is in :mod:`rlhfkit.trainers.ppo`.
Every detail's source: ``docs/implementation-details.md`` (rows 2–4).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import torch

from rlhfkit.config import ConfigError
from rlhfkit.engine import fsdp
from rlhfkit.engine.loop import TrainLoop
from rlhfkit.envs.episodes import run_episodes
from rlhfkit.ops import explained_variance, masked_mean, masked_sum
from rlhfkit.rewards.sources import RewardSources, source_metrics
from rlhfkit.rollout.experience import Rollout
from rlhfkit.rollout.generate import generate
from rlhfkit.rollout.score import ends_with_eos
from rlhfkit.trainers.ppo_config import PPOConfig
from rlhfkit.trainers.ppo_models import PPOModels


class RolloutCollector:
    """Samples and scores rollouts with the run's models, through the loop's (prepared) module and autocast
    (``__init__`` only stores its collaborators)."""

    def __init__(self, cfg: PPOConfig, models: PPOModels, loop: TrainLoop) -> None:
        self.cfg, self.models, self.loop = cfg, models, loop

    @torch.no_grad()
    def collect(self, batch: list, prompts: list, generator: torch.Generator,
                fields: list | None = None) -> tuple[Rollout, dict]:
        """Generate → score → forward once, ``rollout.chunk_size`` prompts at a time; one :class:`Rollout`.

        In the run's precision: with ``train.mixed_precision=bf16`` sampling and every forward run under the
        same autocast as the updates (the loop's prepared module has it built in). Under FSDP2 the policy and
        value model are held whole meanwhile (``fsdp.gathered``): each process samples until its own rows end,
        with no collective inside a forward."""
        size = self.cfg.rollout.chunk_size or len(batch)
        parts, extras = [], defaultdict(list)
        for start in range(0, len(batch), size):
            with self.loop.accelerator.autocast(), self.sampling_weights():
                rows = batch[start : start + size]
                rollout, chunk_extras = self.collect_chunk(
                    rows, prompts[start : start + size], generator,
                    [fields[e.index] for e in rows] if fields else None)
            parts.append(rollout)
            for key, value in chunk_extras.items():
                extras[key].append(value)
        return Rollout.cat(parts).validate(), {k: torch.cat(v) for k, v in extras.items()}

    @property
    def synced_sampling(self) -> bool:
        """Sampling with FSDP2-sharded weights (``rollout.fsdp_sampling=sharded``): every process decodes in step."""
        cfg = self.cfg
        if not (cfg.rollout.fsdp_sampling == "sharded" and self.loop.sharded):
            return False
        if not cfg.advantage.critic_free and cfg.rollout.old_logprobs == "sampling":
            raise ConfigError("rollout.fsdp_sampling=sharded reads the values in the actor-critic's own forward only "
                              "(the value model's weights are gathered there); set rollout.old_logprobs=forward or "
                              "rollout.fsdp_sampling=gathered")
        return True

    def sampling_weights(self):
        """Under FSDP2 with ``rollout.fsdp_sampling=gathered``: the trained models held whole for the rollout."""
        if self.cfg.rollout.fsdp_sampling == "sharded":
            return contextlib.nullcontext()
        return fsdp.gathered(self.loop.model)

    def collect_chunk(self, batch: list, prompts: list, generator: torch.Generator,
                      fields: list | None = None) -> tuple[Rollout, dict]:
        """One chunk: sample; log-probs, entropies and values (from the sampling pass, or one forward through
        the loop's module); reference log-probs and scores of the frozen models, in length-sorted groups."""
        cfg, models, actor_critic = self.cfg, self.models, self.models.actor_critic
        temperature = cfg.rollout.temperature
        critic = not cfg.advantage.critic_free
        environment = getattr(models, "environment", None)
        # A value head reads the sampling pass's hidden states — single-turn only: an episode's turns are
        # separate calls, so with a head its log-probs and values come from one forward over the whole episode.
        head = critic and actor_critic.value_model is None
        from_sampling = cfg.rollout.old_logprobs == "sampling" and not (head and environment is not None)
        readout = actor_critic.value_readout if head and from_sampling else None
        if environment is not None:  # multi-turn episodes: model and environment tokens (rlhfkit.envs)
            generation = run_episodes(
                actor_critic.language_model, models.tokenizer, [e.prompt_ids for e in batch], environment,
                max_new_tokens=cfg.rollout.max_new_tokens, max_turns=cfg.rollout.max_turns, temperature=temperature,
                top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, eos_token_id=models.eos_token_ids,
                pad_token_id=models.tokenizer.pad_token_id, generator=generator)
        else:
            generation = generate(  # left-padded prompts, right-padded responses
                actor_critic.language_model, [e.prompt_ids for e in batch], max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                eos_token_id=models.eos_token_ids, pad_token_id=models.tokenizer.pad_token_id, generator=generator,
                return_logprobs=from_sampling, readout=readout, synced=self.synced_sampling)
        ids = (generation.prompt_ids, generation.prompt_mask, generation.response_ids, generation.response_mask)
        env_mask = getattr(generation, "env_mask", None)
        rollout = Rollout(*ids, logprobs=generation.logprobs if from_sampling else None, env_mask=env_mask)
        group = cfg.ppo.micro_batch_size or cfg.ppo.minibatch_size  # rows per forward of the frozen models
        if not from_sampling:
            # through the loop's (prepared) module: the same numerics as the updates, so the ratio starts at 1
            logprobs, entropy, values = self.loop.model(*ids, temperature, with_entropy=True)
        else:
            logprobs, entropy = generation.logprobs, generation.entropy
            values = generation.readouts if readout is not None else in_length_groups(
                rollout, group, lambda _rows, part: actor_critic.values(*part_ids(part))) if critic else None
        ref_logprobs = None if getattr(models, "no_reference", False) else in_length_groups(
            rollout, group, lambda _rows, part: models.reference_logprobs(*part_ids(part), temperature))
        rollout = rollout.replace(logprobs=logprobs, values=values, ref_logprobs=ref_logprobs)
        # one scorer call per chunk: scorers batch internally, and a scorer may count its calls as steps
        per_source = {}
        if isinstance(models.scorer, RewardSources):  # weighted sources; row columns reach reward functions
            score, per_source = models.scorer.score(prompts, rollout, fields)
            per_source = {f"reward/{name}": values for name, values in per_source.items()}
        else:
            score = models.scorer(prompts, rollout)
        score = score.to(self.loop.device).float()  # (B,)
        ended = ends_with_eos(rollout, models.eos_token_ids)
        penalty = cfg.ppo.missing_eos_penalty  # Huang et al. 2024: a response with no EOS gets a fixed score
        scores = score if penalty is None else torch.where(ended, score, torch.full_like(score, penalty))
        entropy = masked_sum(entropy, rollout.action_mask, dim=1)  # (B,) nats per sequence, the model's tokens
        if env_mask is not None:  # per-episode counts for the tools/ and episode/ metrics
            per_source.update({"episode/turns": generation.turns, "tools/calls": generation.tool_calls,
                               "tools/errors": generation.tool_errors})
        return rollout.replace(scores=scores), {"rm_scores": score, "ended_with_eos": ended, "entropy": entropy,
                                                **per_source}



def part_ids(part: Rollout) -> tuple[torch.Tensor, ...]:
    return part.query_ids, part.query_mask, part.response_ids, part.response_mask


def in_length_groups(rollout: Rollout, size: int, fn) -> torch.Tensor:
    """``fn(rows, part)`` on the rows of ``rollout`` in length-sorted groups of ``size`` with their padding
    trimmed (:meth:`Rollout.length_groups`; ``rows`` their indices), the (b,) or (b, T_part) results put back
    in row order: (B,), or (B, T) zero-padded. For models whose numbers need not match the updates' bit for bit
    (frozen ones; a value model's old values)."""
    out = None
    for rows, part in rollout.length_groups(size):
        result = fn(rows, part)
        if out is None:
            shape = (len(rollout),) if result.dim() == 1 else tuple(rollout.response_ids.shape)
            out = result.new_zeros(shape)
        index = rows.to(result.device)
        if result.dim() == 1:
            out[index] = result
        else:
            out[index, : result.shape[1]] = result
    return out


def rollout_metrics(rollout: Rollout, extras: dict[str, torch.Tensor], beta: float) -> dict[str, Any]:
    """The ``objective/``, ``ppo/val|returns/`` and ``response/`` metrics of one rollout (docs/metrics.md (PPO))."""
    mask = rollout.action_mask  # the model's tokens: an episode's environment tokens carry no KL
    lengths = rollout.response_lengths.float()  # (B,)
    metrics = {}
    if "tools/calls" in extras:  # multi-turn episodes (rollout.environment)
        metrics.update({"tools/calls_per_episode": extras["tools/calls"].float().mean(),
                        "tools/errors_per_episode": extras["tools/errors"].float().mean(),
                        "episode/turns": extras["episode/turns"].float().mean()})
    if rollout.ref_logprobs is not None:  # critic-free with β = 0 loads no reference: no KL to report
        kl_k1 = masked_sum(rollout.logprobs - rollout.ref_logprobs, mask, dim=1)  # (B,) nats per sequence
        metrics |= {"objective/kl": kl_k1.mean(), "objective/kl_penalty": rollout.kl.sum(dim=1).mean()}
    if rollout.values is not None:  # GAE's critic
        metrics.update({"ppo/val/var_explained": explained_variance(rollout.values, rollout.returns, mask),
                        "ppo/val/mean": masked_mean(rollout.values, mask),
                        "ppo/returns/mean": masked_mean(rollout.returns, mask)})
    per_source = {key[len("reward/"):]: value for key, value in extras.items() if key.startswith("reward/")}
    return {
        **metrics,
        **source_metrics(per_source),
        "objective/score": rollout.scores.mean(),
        "objective/rm_score": extras["rm_scores"].mean(),
        "objective/kl_coef": beta,
        "objective/entropy": extras["entropy"].mean(),
        "objective/entropy_per_token": extras["entropy"].sum() / mask.sum(),
        "objective/rlhf_reward": rollout.rewards.sum(dim=1).mean(),  # score − β·Σ_t kl_t
        "response/length_mean": lengths.mean(),
        "response/eos_rate": extras["ended_with_eos"].float().mean(),
    }
