"""PPO with a per-token KL penalty against the frozen reference (Ziegler et al. 2019; Ouyang et al. 2022).

One step of :meth:`PPOTrainer.step`, as the algorithm reads:

 1. draw prompts     the shared loop hands this process its share of the step's prompts (order, resume position)
 2. generate         sample a response per prompt: logits ÷ temperature, top-p, up to max_new_tokens, stop at EOS
 3. score            the frozen reward model's normalised score; optionally a fixed penalty for a missing EOS
 4. forward once     logprobs (policy), ref_logprobs (reference), values (value model): once per rollout —
                     the policy's from the sampling pass itself with ``rollout.old_logprobs=sampling``; the
                     frozen models' in length-sorted groups with their padding trimmed
 5. rewards          −β·KL_t at every response token, plus the score at the last one
 6. GAE              advantages and returns with (γ, λ)
 7. whiten           advantages to mean 0, std 1 over the rollout's response tokens
 8. PPO epochs       clipped policy loss + vf_coef · clipped value loss over shuffled minibatches
 9. KL controller    β ← update(β, measured KL)
10. report           metrics, a few samples with their score and KL, the run doctor's warnings

Stages 2–4 (the rollout's collection) and the rollout's metrics are in :mod:`rlhfkit.trainers.ppo_rollout`;
this module holds the update that learns from the rollout and the run around it.

With ``advantage.estimator`` grpo, dr_grpo, rloo or reinforce_pp the same step runs critic-free: each prompt
answered ``rollout.n`` times, no value model, steps 5–8 from :mod:`rlhfkit.trainers.critic_free`.

``rlhfkit ppo --config configs/ppo.yaml key=value …`` runs :func:`main`; :func:`train` is the library entry point
(``scorer=`` replaces the reward model with any :class:`~rlhfkit.rollout.score.Scorer`). The metrics are
documented in ``docs/metrics.md (PPO)``, each detail's source in ``docs/implementation-details.md``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from rlhfkit.config import load_config
from rlhfkit.data import encode_prompt, format_encode_report, load_rows
from rlhfkit.data.order import derive_seed
from rlhfkit.data.templates import adopt_template
from rlhfkit.engine import fsdp
from rlhfkit.engine.determinism import seed_everything
from rlhfkit.engine.loop import RunSummary, TrainLoop
from rlhfkit.engine.metrics_log import say
from rlhfkit.engine.run_doctor import diagnose
from rlhfkit.engine.runtime import set_threads
from rlhfkit.engine.stage_config import data_sources, source_name
from rlhfkit.envs.environment import tool_schemas
from rlhfkit.losses import gae, per_token_rewards, ppo_policy_loss, ppo_value_loss
from rlhfkit.models.load import load_tokenizer
from rlhfkit.ops import masked_mean, masked_sum, whiten_over_processes
from rlhfkit.rollout.experience import NonFiniteRollout, Rollout
from rlhfkit.rollout.score import Scorer, response_texts
from rlhfkit.trainers import critic_free
from rlhfkit.trainers.kl_control import AdaptiveKLController, FixedKLController
from rlhfkit.trainers.ppo_config import SAFE_TO_CHANGE_ON_RESUME, KLConfig, PPOConfig
from rlhfkit.trainers.ppo_models import PPOModels, param_groups, save_trained
from rlhfkit.trainers.ppo_ptx import demonstration_nll, load_ptx
from rlhfkit.trainers.ppo_rollout import RolloutCollector, part_ids, rollout_metrics

KL_CONTROLLERS = {
    "fixed": lambda kl: FixedKLController(kl.init_coef),
    "adaptive": lambda kl: AdaptiveKLController(kl.init_coef, kl.target, kl.horizon),
}


def make_kl_controller(kl: KLConfig):
    if kl.controller not in KL_CONTROLLERS:
        raise ValueError(f"unknown kl.controller {kl.controller!r}; valid: {', '.join(KL_CONTROLLERS)}")
    return KL_CONTROLLERS[kl.controller](kl)


class SamplingRNG:
    """The generators PPO draws from — responses (on the model's device) and minibatch order (CPU); saved in
    every checkpoint, so a resumed run samples exactly what the uninterrupted run would have."""

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.sampling = torch.Generator(device=device).manual_seed(seed)
        self.shuffle = torch.Generator().manual_seed(derive_seed(seed, "minibatches"))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sampling": self.sampling.get_state(), "shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sampling.set_state(state["sampling"])
        self.shuffle.set_state(state["shuffle"])


class PPOTrainer:
    """One PPO step at a time on a running :class:`TrainLoop` (``__init__`` only stores its collaborators)."""

    def __init__(self, cfg: PPOConfig, models: PPOModels, loop: TrainLoop, kl_controller, rng: SamplingRNG,
                 prompts: list[Any], eval_set: tuple[list, list] | None = None,
                 fields: tuple[list, list] | None = None) -> None:
        self.cfg, self.models, self.loop = cfg, models, loop
        self.fields = fields or ([], [])  # each train / eval row's other columns, for reward functions
        self.kl_controller, self.rng = kl_controller, rng
        self.prompts = prompts  # the rows' prompts (text or messages), by dataset index
        self.eval_set = eval_set
        self.history: list[dict[str, float]] = []  # for the run doctor
        self.warned_at: dict[str, int] = {}
        self.last_rollout: Rollout | None = None  # the latest step's rollout, every field filled (for inspection)
        self.ptx = load_ptx(cfg, models.tokenizer)  # PPO-ptx demonstrations, or None
        self.collector = RolloutCollector(cfg, models, loop)  # stages 2–4

    def step(self, batch: list, number: int) -> dict[str, float]:
        """One PPO iteration on this process's ``batch`` of encoded prompts; returns the step's metrics."""
        cfg = self.cfg
        # 1. Draw prompts: this process's share of the step, in the loop's (resumable) data order.
        # (the critic-free group estimators: rollout.n consecutive copies of each prompt, one group each)
        batch = [example for example in batch for _ in range(cfg.rollout.n)]
        prompts = [self.prompts[example.index] for example in batch]
        # 2.–4. Generate, score, then logprobs / ref_logprobs / values — each once per rollout.
        try:
            rollout, extras = self.collect(batch, prompts, self.rng.sampling, self.fields[0])
        except NonFiniteRollout as err:  # sampled from diverged weights: stop like a non-finite loss does
            self.loop.stop_nonfinite(str(err))
        mask = rollout.action_mask  # the model's tokens (an episode's environment tokens are context only)
        gaps = rollout.env_mask is not None
        beta = self.kl_controller.value
        if cfg.advantage.critic_free:  # 5.–7. as critic_free.py says: group/batch baseline, no values
            return self.critic_free_step(rollout, extras, prompts, beta, number)
        # 5. Per-token rewards: −β·KL_t at every token, the score added at the last (Ziegler et al. 2019, Eq. 2).
        shaped = per_token_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, beta,
                                   cfg.kl.estimator, gaps=gaps)
        # 6. GAE: the episode ends at the last response token (bootstrap value 0 after it).
        advantages, returns = gae(shaped.rewards, rollout.values, mask, cfg.ppo.gamma, cfg.ppo.lam, gaps=gaps)
        # 7. Whiten advantages over the whole rollout — every process's rows (lm-human-preferences); returns
        # stay unwhitened.
        if cfg.ppo.whiten_advantages:
            advantages = whiten_over_processes(advantages, mask, self.sum_over_processes)
        rollout = rollout.replace(kl=shaped.kl, rewards=shaped.rewards, advantages=advantages,
                                  returns=returns).validate()
        # 8. PPO epochs over shuffled minibatches: clipped policy loss + vf_coef · clipped value loss.
        update_stats = self.ppo_epochs(rollout, number)
        self.last_rollout = rollout
        metrics = self.across_processes({**rollout_metrics(rollout, extras, beta), **update_stats})
        # 9. KL controller: β moves towards the target KL (adaptive) or stays (fixed).
        self.kl_controller.update(metrics["objective/kl"], len(rollout) * self.loop.num_processes)
        # 10. Report: samples with their score and KL, the run doctor.
        self.report(number, rollout, prompts, metrics)
        return metrics

    def critic_free_step(self, rollout: Rollout, extras: dict, prompts: list, beta: float,
                         number: int) -> dict[str, float]:
        """Steps 5–10 for the critic-free estimators: advantages from the rewards of each prompt's group (or the
        batch), then the same epochs, KL controller and report as PPO."""
        advantages, shaped = critic_free.advantages_and_rewards(rollout, self.cfg, beta, self.sum_over_processes)
        keep = critic_free.kept_rows(rollout, self.cfg)  # advantage.filter_zero_std_groups: 0 = dropped
        rollout = rollout.replace(kl=shaped.kl, rewards=shaped.rewards, advantages=advantages, keep=keep).validate()
        update_stats = self.ppo_epochs(rollout, number)
        self.last_rollout = rollout
        local = {**rollout_metrics(rollout, extras, beta), **critic_free.critic_free_metrics(rollout, self.cfg.rollout.n),
                 **update_stats}
        metrics = self.across_processes(local)
        if keep is not None:  # the step's total over every process (the same number on each)
            dropped = self.sum_over_processes(torch.tensor([float((keep == 0).sum())], dtype=torch.float64))
            metrics["objective/dropped_rows"] = float(dropped[0])
        self.kl_controller.update(metrics.get("objective/kl", 0.0), len(rollout) * self.loop.num_processes)
        self.report(number, rollout, prompts, metrics)
        return metrics

    def collect(self, batch: list, prompts: list, generator: torch.Generator,
                fields: list | None = None) -> tuple[Rollout, dict]:
        """Stages 2–4, generate → score → forward once: :meth:`RolloutCollector.collect` (``ppo_rollout.py``)."""
        return self.collector.collect(batch, prompts, generator, fields)

    def ppo_epochs(self, rollout: Rollout, number: int = 1) -> dict[str, float]:
        """``ppo.epochs`` passes over ``rollout`` in shuffled minibatches; the mean (max for ratio) statistics.
        ``number`` (the step, from 1) numbers the updates, which picks the PPO-ptx demonstrations."""
        sums: dict[str, float] = defaultdict(float)
        ratio_max, updates, position = 0.0, 0, 0
        per_step = self.cfg.ppo.epochs * -(-len(rollout) // self.cfg.ppo.minibatch_size)
        for _epoch in range(self.cfg.ppo.epochs):
            for minibatch in rollout.minibatches(self.cfg.ppo.minibatch_size, generator=self.rng.shuffle):
                stats = self.update(minibatch, (number - 1) * per_step + position)
                position += 1
                if stats is None:  # no row of the global minibatch kept: no update (advantage.filter_…)
                    continue
                ratio_max = max(ratio_max, stats.pop("ppo/ratio/max"))
                for key, value in stats.items():
                    sums[key] += value
                updates += 1
        return {**{k: v / max(updates, 1) for k, v in sums.items()}, "ppo/ratio/max": ratio_max}

    def update(self, minibatch: Rollout, number: int = 0) -> dict[str, float] | None:
        """One optimizer step: token-mean of ``policy loss + vf_coef · value loss`` over the minibatch,
        accumulated over micro-batches of ``ppo.micro_batch_size`` rows (each weighted by its tokens);
        with PPO-ptx, plus ``ptx.coef ·`` the NLL of update ``number``'s demonstrations."""
        loop, p, temperature = self.loop, self.cfg.ppo, self.cfg.rollout.temperature
        if self.cfg.advantage.critic_free:
            return self.critic_free_update(minibatch, number)
        local_tokens = float(minibatch.action_mask.sum())
        n_tokens = self.global_divisor(local_tokens)  # the token mean over every process's minibatch
        size = p.micro_batch_size or len(minibatch)
        parts = [minibatch.index_select(range(i, min(i + size, len(minibatch))))
                 for i in range(0, len(minibatch), size)]
        stats: dict[str, float] = defaultdict(float)
        for i, part in enumerate(parts):
            mask = part.action_mask  # losses over the model's tokens; the forward reads every response token
            with loop.no_sync(i < len(parts) - 1 or self.ptx is not None):
                logprobs, _, values = loop.model(part.query_ids, part.query_mask, part.response_ids,
                                                 part.response_mask, temperature)
                policy = ppo_policy_loss(logprobs, part.logprobs, part.advantages, mask, p.clip_range,
                                         p.clip_range)  # PPO's symmetric range
                value = ppo_value_loss(values, part.values, part.returns, mask, p.value_clip_range)
                loss = (masked_sum(policy.losses, mask) + p.vf_coef * masked_sum(value.losses, mask)) / n_tokens
                loop.backward(loss)
            share = float(mask.sum()) / local_tokens  # this process's statistics: its own token mean
            for key, tensor in (("ppo/policy/loss", masked_mean(policy.losses, mask)),
                                ("ppo/val/loss", masked_mean(value.losses, mask)),
                                ("ppo/policy/clipfrac", policy.clipfrac), ("ppo/policy/approxkl", policy.approxkl),
                                ("ppo/policy/clipfrac_low", policy.clipfrac_low),
                                ("ppo/policy/clipfrac_high", policy.clipfrac_high),
                                ("ppo/val/clipfrac", value.clipfrac), ("ppo/ratio/mean", policy.ratio_mean)):
                stats[key] += share * float(tensor.detach())
            stats["ppo/ratio/max"] = max(stats["ppo/ratio/max"], float(policy.ratio_max))
        if self.ptx is not None:
            stats["ppo/ptx/nll"] = self.ptx_backward(number)
        loop.optimizer_step()
        return stats

    def critic_free_update(self, minibatch: Rollout, number: int = 0) -> dict[str, float] | None:
        """One optimizer step of a critic-free estimator: the clipped surrogate (+ β·k3 with ``kl.penalty: loss``)
        aggregated as ``advantage.loss_aggregation`` says, exactly over its micro-batches. None, and no step
        (on every process alike), when ``advantage.filter_zero_std_groups`` dropped every row of the global
        minibatch: an optimizer step on no data would still move the weights (Adam's momentum, weight decay)."""
        from rlhfkit.policy_losses import loss_normaliser

        loop, cfg = self.loop, self.cfg
        mask = critic_free.loss_mask(minibatch)  # without a dropped row's tokens
        # tokens (token_mean) or responses (sequence_mean) of every process's minibatch, as PPO's token mean
        normaliser = self.global_divisor(loss_normaliser(mask, cfg.advantage.loss_aggregation))
        if normaliser == 0:
            return None
        size = cfg.ppo.micro_batch_size or len(minibatch)
        parts = [minibatch.index_select(range(i, min(i + size, len(minibatch))))
                 for i in range(0, len(minibatch), size)]
        stats: dict[str, float] = defaultdict(float)
        n_tokens = max(float(mask.sum()), 1.0)  # this process's statistics: over its kept tokens
        for i, part in enumerate(parts):
            with loop.no_sync(i < len(parts) - 1 or self.ptx is not None):
                logprobs, _, _ = loop.model(*part_ids(part), cfg.rollout.temperature)
                loss, part_stats = critic_free.policy_loss_sum(logprobs, part, cfg, self.kl_controller.value)
                loop.backward(loss / normaliser)
            share = float(critic_free.loss_mask(part).sum()) / n_tokens
            stats["ppo/ratio/max"] = max(stats["ppo/ratio/max"], float(part_stats.pop("ppo/ratio/max")))
            for key, tensor in part_stats.items():
                stats[key] += share * float(tensor)
        if self.ptx is not None:
            stats["ppo/ptx/nll"] = self.ptx_backward(number)
        loop.optimizer_step()
        return stats

    def ptx_backward(self, number: int) -> float:
        """Backward of ``ptx.coef · NLL`` on update ``number``'s demonstrations (the update's last, synchronising
        backward); returns the NLL."""
        ids = [t.to(self.loop.device) for t in self.ptx.batch(number)]
        logprobs, _, values = self.loop.model(*ids, 1.0)  # temperature 1: a language-modelling loss
        nll = demonstration_nll(logprobs, ids[3])
        # 0 · values: every parameter takes part in this backward, as DDP's gradient synchronisation expects
        self.loop.backward(self.cfg.ptx.coef * nll + (0.0 * values.sum() if values is not None else 0.0))
        return float(nll.detach())

    def global_divisor(self, local: float) -> float:
        """What each process divides its loss sum by so that the update is the mean over the *global* minibatch:
        ``local`` (this process's token or response count) summed over the processes, ÷ the process count
        because DDP averages the processes' gradients. Divided by its own count instead, each process would
        weight its rows by how many tokens it happened to hold, and 2 processes would not train like 1."""
        total = float(self.sum_over_processes(torch.tensor([local], dtype=torch.float64))[0])
        return total / self.loop.num_processes

    def sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small tensor over the processes (float64 on the way); identity with one."""
        if self.loop.num_processes == 1:
            return values
        total = self.loop.accelerator.reduce(values.to(self.loop.device, torch.float64), reduction="sum")
        return total.to(values.device, values.dtype)

    def across_processes(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Mean over processes (max for ``…/max``); identity with one process."""
        values = {k: float(v) for k, v in metrics.items()}
        if self.loop.num_processes == 1:
            return values
        keys = sorted(values)
        local = torch.tensor([[values[k] for k in keys]], dtype=torch.float64, device=self.loop.device)
        table = self.loop.accelerator.gather(local)  # (processes, metrics)
        return {k: float(table[:, i].max() if k.endswith("/max") else table[:, i].mean())
                for i, k in enumerate(keys)}

    def report(self, number: int, rollout: Rollout, prompts: list, metrics: dict[str, float]) -> None:
        """Print samples at log steps; run the doctor on the history, printing each kind of warning
        at most once per 20 steps and recording it as an event in ``metrics.jsonl``."""
        loop = self.loop
        self.history.append({"step": number, **metrics})
        if not loop.is_main_process:
            return
        shown = min(self.cfg.rollout.print_samples, len(rollout))
        if shown and number % self.cfg.train.log_every == 0:
            texts = response_texts(self.models.tokenizer, rollout.index_select(range(shown)), self.models.eos_token_ids)
            ref = rollout.ref_logprobs if rollout.ref_logprobs is not None else rollout.logprobs
            kl = masked_sum(rollout.logprobs - ref, rollout.action_mask, dim=1)
            for i, text in enumerate(texts):
                prompt = prompts[i] if isinstance(prompts[i], str) else prompts[i][-1].content
                say(f"[step {number} sample {i}] score {float(rollout.scores[i]):+.3f} KL {float(kl[i]):.3f} | "
                    f"{prompt[-80:]!r} → {text[:160]!r}")
        for warning in diagnose(self.history):
            if number - self.warned_at.get(warning.kind, -10**9) >= 20:
                self.warned_at[warning.kind] = number
                say(f"run doctor: {warning}")
                loop.metrics.event("doctor", number, kind=warning.kind, message=warning.message, fix=warning.fix)

    def evaluate(self, _model: Any = None) -> dict[str, float]:
        """Held-out prompts, sampled with a fixed seed: score, KL, length, EOS rate (``eval/…``)."""
        batch, prompts = self.eval_set
        generator = torch.Generator(device=self.loop.device).manual_seed(derive_seed(self.cfg.train.seed, "eval"))
        rollout, extras = self.collect(batch, prompts, generator, self.fields[1])
        kl = (masked_sum(rollout.logprobs - rollout.ref_logprobs, rollout.action_mask, dim=1)
              if rollout.ref_logprobs is not None else torch.zeros(1))
        return {"eval/score": float(extras["rm_scores"].mean()), "eval/kl": float(kl.mean()),
                "eval/length_mean": float(rollout.response_lengths.float().mean()),
                "eval/eos_rate": float(extras["ended_with_eos"].float().mean())}


def read_prompt_rows(source: Any, cfg: PPOConfig, split: str = "train") -> list:
    """Every ``{"prompt"}`` row of ``source`` (a path or in-memory rows), validated — before any model loads."""
    return load_rows(source, "prompt", empty=cfg.data.empty, columns=cfg.data.columns,
                     transcripts=cfg.data.template != "raw", name=source_name(source, split)).rows


def encode_prompts(rows: list, cfg: PPOConfig, tokenizer, name: str, environment: Any = None) -> tuple[list, list]:
    """``(encoded prompts, the rows' prompts)``; with an ``environment`` (``critic_free.online_environment``) the
    chat template lists its tools (``tools=``, docs/tools.md §2), so the policy reads which tools exist."""
    encoded, report = encode_prompt(tokenizer, rows, max_prompt_length=cfg.data.max_prompt_length,
                                    template=cfg.data.template, tools=tool_schemas(environment))
    if report.n_truncated_prompt:
        say(format_encode_report(report, name))
    return encoded, [row.prompt for row in rows]


def load_prompts(source: Any, cfg: PPOConfig, tokenizer, split: str = "train",
                 environment: Any = None) -> tuple[list, list]:
    """``(encoded prompts, the rows' prompts)`` of ``{"prompt"}`` rows (a path or in-memory rows); ``environment``
    as in :func:`encode_prompts`."""
    return encode_prompts(read_prompt_rows(source, cfg, split), cfg, tokenizer, source_name(source, split),
                          environment)


def train(cfg: PPOConfig, *, scorer: Scorer | None = None, monitor: Any = None, train_dataset: Any = None,
          eval_dataset: Any = None) -> RunSummary:
    """Run (or resume) PPO as configured; write checkpoints, ``metrics.jsonl``, then ``final/`` (the policy)
    and ``value_model/`` in ``train.output_dir``. Returns the loop's summary.

    ``monitor`` (e.g. :class:`rlhfkit.evaluate.hacking.HackingMonitor`) is called after every step as
    ``monitor(step, total, policy, tokenizer) -> check | None``; its ``hacking/*`` metrics are logged, its
    state is checkpointed, and a check with ``stop`` ends the run there (a re-run finds it complete).
    ``train_dataset`` / ``eval_dataset`` (a ``datasets.Dataset`` or a list of ``{"prompt"}`` dicts) replace
    ``data.train_file`` / ``data.eval_file``."""
    set_threads(cfg.train.threads)  # before any work: encoding and reference passes use them too
    sources = data_sources(cfg.data, train_dataset, eval_dataset)
    rows = {split: read_prompt_rows(source, cfg, split) for split, source in sources.items()}  # before any model
    seed_everything(cfg.train.seed)
    # loaded once, before the prompts: the chat template lists its tools, and the same object plays the episodes
    environment = critic_free.online_environment(cfg)
    # every prompt row validated and encoded before any model is loaded (the tokenizer alone is cheap)
    tokenizer = adopt_template(load_tokenizer(cfg.model.path), cfg.data.template)
    prompts, prompt_rows = encode_prompts(rows["train"], cfg, tokenizer, source_name(sources["train"], "train"),
                                          environment)
    fields = tuple([getattr(row, "fields", {}) for row in rows.get(split, [])] for split in ("train", "eval"))
    eval_set = (encode_prompts(rows["eval"], cfg, tokenizer, source_name(sources["eval"], "eval"), environment)
                if "eval" in rows else None)
    models = critic_free.build_online_models(cfg, scorer, environment=environment)
    kl_controller = make_kl_controller(cfg.kl)
    actor_critic = models.actor_critic
    groups = param_groups(actor_critic, cfg.train.lr, cfg.value_model.lr, cfg.train.weight_decay)
    # the process layout, known before the loop builds its Accelerator on the same (shared) state; CPU processes
    # (ACCELERATE_USE_CPU=1, which the Accelerator reads) must be declared here already, or each would run alone
    process = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    rng = SamplingRNG(derive_seed(cfg.train.seed, "sampling", process.process_index), process.device)
    trainer: PPOTrainer | None = None
    stage_state = {"kl_controller": kl_controller, "sampling_rng": rng}
    if monitor is not None:
        stage_state["hacking_monitor"] = monitor
    loop = TrainLoop(cfg.train, actor_critic, run_config=cfg, param_groups=groups,
                     stage_state=stage_state, fsdp_units=(actor_critic.language_model,),  # it samples alone
                     eval_fn=(lambda _model: trainer.evaluate()) if eval_set else None,
                     safe_to_change=SAFE_TO_CHANGE_ON_RESUME)
    trainer = PPOTrainer(cfg, models, loop, kl_controller, rng, prompt_rows, eval_set, fields)
    with loop:
        models.to(loop.device)
        for step in loop.steps(prompts, list):
            metrics = trainer.step(step.batch, step.number)
            if monitor is not None:
                reason = run_monitor(monitor, loop, models, step, metrics)
                if reason is not None:
                    loop.request_stop(reason)
            loop.finish_step(metrics)
    summary = loop.summary
    out = Path(cfg.train.output_dir)
    outputs = [out / "final"] + ([out / "value_model"] if actor_critic.value_model is not None else [])
    finished = summary.status == "completed" or (summary.status == "already_complete"
                                                  and not all(p.exists() for p in outputs))
    if finished and loop.sharded:  # the weights gathered from the shards, on every process (a collective)
        models.actor_critic = loop.final_model()
    if loop.is_main_process and finished:
        save = critic_free.save_policy_only if cfg.advantage.critic_free else save_trained
        saved = save(models, cfg, out)
        name = cfg.advantage.estimator if cfg.advantage.critic_free else "ppo"
        say(f"{name}: saved " + ", ".join(f"the {what} in {path}" for what, path in saved.items()))
    loop.retire_checkpoints()  # only now that final/ is complete
    return summary


def run_monitor(monitor: Any, loop: TrainLoop, models: PPOModels, step: Any, metrics: dict) -> str | None:
    """One reward-hacking check (on the main process, without touching the training RNG); adds its
    ``hacking/*`` metrics and returns a stop reason when it asks to stop, the same on every process."""
    from rlhfkit.engine.loop_support import preserved_rng

    reason = None
    with fsdp.gathered(loop.model):  # the main process alone samples: no collective in its forwards
        if loop.is_main_process:
            with preserved_rng():
                check = monitor(step.number, step.total, models.actor_critic.language_model, models.tokenizer)
            if check is not None:
                metrics.update(check.metrics())
                if check.stop:
                    reason = (f"the reward-hacking monitor confirmed a divergence (best independent-judge "
                              f"score at step {check.best_step})")
    if loop.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        reason = broadcast_object_list([reason])[0]
    return reason


def main(args) -> int:
    from rlhfkit.api import ppo

    ppo(load_config(PPOConfig, args.config, getattr(args, "overrides", []) or []))
    return 0
