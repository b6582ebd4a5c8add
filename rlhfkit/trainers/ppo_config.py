"""The PPO stage's config: four models, the prompts, sampling, PPO's hyper-parameters and the KL penalty.

A recipe (``configs/ppo.yaml``) reads::

    model: {path: runs/sft}                 # the policy starts from the SFT model …
    reference: {path: ""}                   # … which is also the frozen reference (or: adapters disabled)
    reward_model: {path: runs/reward}       # frozen; its normalised score is the reward
    value_model: {kind: separate}           # initialised from the reward model (InstructGPT)
    data: {train_file: prompts.jsonl, max_prompt_length: 128, max_length: 192}
    train: {output_dir: runs/ppo, lr: 1.0e-5, per_device_batch_size: 64, max_steps: 200}
    rollout: {max_new_tokens: 64, temperature: 0.7}
    ppo: {epochs: 4, minibatch_size: 16, clip_range: 0.2}
    kl: {controller: adaptive, init_coef: 0.15, target: 6.0}

*A step* is one rollout: ``train.per_device_batch_size`` prompts per process are drawn (the shared loop owns
the data order and its resume position), answered, scored, and then trained on for ``ppo.epochs`` passes of
minibatches — several optimizer steps per step. Defaults follow lm-human-preferences (Ziegler et al. 2019)
and "The N Implementation Details of RLHF with PPO" (Huang et al. 2024); ``docs/implementation-details.md``
maps each to the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfkit.config import ConfigError, Recipe
from rlhfkit.engine.stage_config import DataConfig, LoraConfig, ModelConfig, check_trained_dtype
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.rewards.sources import RewardSourceConfig
from rlhfkit.trainers.online_config import AdvantageConfig


@dataclass
class ReferenceConfig:
    path: str = ""
    """The frozen reference π_ref of the KL penalty. Empty: the policy's starting point (``model.path``), kept as
    a frozen copy — or, with ``lora.enabled``, the policy itself with its adapters disabled (no second copy)."""


@dataclass
class RewardModelConfig:
    path: str = ""
    """A reward-model folder (``rlhfkit reward`` output): frozen; its normalised score is PPO's reward."""
    retokenize: Literal["auto", "always", "never"] = "auto"
    """How the reward model reads a response. ``never``: the policy's token ids as they are (the vocabularies
    must agree). ``always``: decode the response to text and re-encode prompt + response with the reward
    tokenizer and ``template``. ``auto``: ids when every policy token has the same id in the reward tokenizer,
    text otherwise."""
    template: str | None = None
    """Chat template for re-encoding: null = the reward tokenizer's own, "raw", or a Jinja string."""


@dataclass
class ValueModelConfig:
    kind: Literal["separate", "head"] = "separate"
    """``separate``: a value model of its own, a scalar-head model initialised from the reward model
    (InstructGPT, Ouyang et al. 2022 §3.5) — or, when the reward model reads another tokenizer than the policy
    and ``path`` is empty, from the policy with a new head (``head_init_std``). ``head``: a linear value head on the policy's trunk
    (lm-human-preferences), one forward for both, less memory, but value gradients move the policy's trunk."""
    path: str = ""
    """With ``separate``: the scalar-head folder to start from; empty = ``reward_model.path``."""
    lr: float | None = None
    """Learning rate of the value model's (or head's) parameters; null = ``train.lr``."""
    head_init_std: float = 0.0
    """With ``head`` (or a separate value model started from the policy): std of the head's initial weights
    (0, as lm-human-preferences' value head)."""


@dataclass
class RolloutConfig:
    max_new_tokens: int = 64
    """Longest response; a response cut here has no EOS (see ``ppo.missing_eos_penalty``)."""
    temperature: float = 0.7
    """Sampling temperature; the log-probs PPO trains on use the same logits ÷ temperature (lm-human-preferences)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off). Below 1 the sampled distribution is not the π_T whose log-probs PPO
    uses, so the importance ratio is biased; keep 1 unless you know you want it."""
    top_k: int = 0
    """Top-k sampling (0 = off); the same caveat as ``top_p``."""
    chunk_size: int | None = None
    """Prompts generated, scored and forwarded at once (the memory knob of the rollout); null = the whole step."""
    old_logprobs: Literal["forward", "sampling"] = "forward"
    """Where the rollout's log-probs (log π_old) come from. ``forward``: one policy forward after sampling, in
    the numerics of the PPO updates, so the first minibatch's ratio is exactly 1. ``sampling``: the sampling
    pass's own logits — and with ``value_model.kind=head`` its hidden states for the values — one policy forward
    fewer per rollout; equal to ``forward`` up to float rounding (~1e-6) in float32 only, so refused with
    ``train.mixed_precision=bf16`` or a half-precision ``model.dtype``: there bf16 rounds the one-token sampling
    steps and the full-sequence forward differently (up to 0.2–0.5 nats apart, first ratios 0.6–1.7)."""
    n: int = 1
    """Responses sampled per prompt (the group of ``advantage.estimator`` grpo/dr_grpo/rloo, >= 2 for them); a
    step holds ``train.per_device_batch_size · n`` rollouts."""
    print_samples: int = 2
    """Samples printed with their score and KL at each log step (``train.log_every``); 0 = none."""
    fsdp_sampling: Literal["gathered", "sharded"] = "gathered"
    """Under FSDP2 only (docs/scale-out.md): ``gathered`` holds the policy and value model whole on every process
    for the rollout (fast: no collective per token; needs the whole policy in each device's memory);
    ``sharded`` samples with the weights sharded, gathering each layer for every token, every process
    forwarding until all have finished (for a policy too large to hold whole; with a critic it needs
    ``old_logprobs=forward``). Measured on 2 CPU processes: ``sharded`` 7.0× slower
    (benchmarks/bench_fsdp_sampling.py); keep ``gathered`` unless the whole policy does not fit."""
    environment: str | None = None
    """Multi-turn episodes with tools (docs/tools.md): ``module:factory`` or ``path.py:factory``, ``factory()``
    returning an environment (e.g. ``rlhfkit.envs.ToolEnvironment``). Each response becomes an episode of model
    turns and observations; ``max_new_tokens`` then counts the model's tokens of the whole episode. Losses, KL,
    values, GAE and advantages run over the model's tokens only. Its tools (``schemas()``) are passed to the chat
    template as ``tools=`` when the prompts are encoded (``data.template: raw`` prompts are used as written).
    null = one response per prompt."""
    max_turns: int = 4
    """With ``environment``: the most model turns per episode (a turn after which no observation comes)."""


@dataclass
class PPOSettings:
    epochs: int = 4
    """Passes over each rollout (lm-human-preferences: 4)."""
    minibatch_size: int = 16
    """Rollouts per optimizer step; each epoch shuffles the rollout into minibatches of this size."""
    micro_batch_size: int | None = None
    """Rollouts per forward/backward inside a minibatch (gradients accumulated, token-weighted: the same
    update as one pass); null = the whole minibatch."""
    clip_range: float = 0.2
    """ε of the clipped surrogate: the ratio π_θ/π_old is clipped to [1 − ε, 1 + ε]."""
    value_clip_range: float = 0.2
    """ε_v of the clipped value loss: new values are kept within ±ε_v of the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss in ``policy loss + vf_coef · value loss`` (lm-human-preferences: 0.1)."""
    gamma: float = 1.0
    """Discount γ of GAE; 1 = undiscounted, the episode is one response."""
    lam: float = 0.95
    """λ of GAE: 1 = Monte-Carlo returns, 0 = one-step TD."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the rollout's response tokens before the PPO epochs."""
    missing_eos_penalty: float | None = None
    """If set, a response without EOS (cut at ``rollout.max_new_tokens``) gets this score instead of the
    reward model's (e.g. −1; Huang et al. 2024, "EOS trick"); null = score it as it is."""


@dataclass
class KLConfig:
    controller: Literal["fixed", "adaptive"] = "fixed"
    """``fixed`` β, or ``adaptive``: β steered so the KL per sequence approaches ``target`` (Ziegler et al. 2019)."""
    init_coef: float = 0.15
    """β: the coefficient of the per-token KL penalty (the adaptive controller's starting value)."""
    target: float = 6.0
    """Adaptive only: the KL (nats per sequence) the controller aims for."""
    horizon: float = 10000.0
    """Adaptive only: in samples; β's relative change per step is ``clip(KL/target − 1, ±0.2) · batch/horizon``."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimate in the rewards: k1 = log π − log π_ref (lm-human-preferences), k2, k3 (Schulman 2020)."""
    penalty: Literal["reward", "loss"] = "reward"
    """``reward``: −β·KL_t folded into the per-token rewards (PPO, REINFORCE++). ``loss``: β·k3_t added to the
    policy loss instead (GRPO, DeepSeekMath Eq. 4; critic-free estimators only). With ``init_coef: 0`` and the
    fixed controller no reference model is loaded (critic-free estimators)."""


@dataclass
class PtxConfig:
    """PPO-ptx (InstructGPT, Eq. 2): a language-modelling term on demonstrations mixed into every update."""

    coef: float = 0.0
    """γ: each optimizer update adds ``γ · NLL`` (mean over the demonstrations' response tokens) to the PPO
    loss; 0 turns it off. InstructGPT mixed pretraining text to stop PPO regressing on what SFT could do."""
    data_file: str | None = None
    """``{"prompt", "response"}`` rows — e.g. the SFT demonstrations — encoded like ``data`` (its template
    and lengths); required when ``coef`` > 0."""
    batch_size: int = 8
    """Demonstrations per update, drawn in a seeded order that depends only on the update's number."""


@dataclass
class PPOConfig(Recipe):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy's starting point (usually the SFT model; an adapter folder is merged first)."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """π_ref of the KL penalty (frozen)."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The frozen reward model and how it reads the policy's responses."""
    value_model: ValueModelConfig = field(default_factory=ValueModelConfig)
    """The critic: a separate model (default) or a head on the policy."""
    data: DataConfig = field(default_factory=DataConfig)
    """``train_file``: ``{"prompt"}`` rows; ``eval_file``: prompts evaluated every ``train.eval_every`` steps;
    ``max_prompt_length``: prompts keep their end; ``max_length`` must hold prompt + ``rollout.max_new_tokens``."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA on the policy (and on a separate value model); the reference is then the adapters-off policy."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/ppo", lr=1e-5,
                                                                   per_device_batch_size=64))
    """The shared loop. ``per_device_batch_size`` = prompts per step per process; ``grad_accum_steps`` must be 1."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """How responses are sampled."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """PPO's update: epochs, minibatches, clipping, GAE, the missing-EOS penalty."""
    kl: KLConfig = field(default_factory=KLConfig)
    """The KL penalty's coefficient β and its controller."""
    ptx: PtxConfig = field(default_factory=PtxConfig)
    """Optional PPO-ptx term: NLL of demonstrations added to every update (off by default)."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """The advantage estimator (``gae`` = PPO; ``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp`` critic-free)
    and, for the critic-free ones, the loss aggregation and asymmetric clip range."""
    rewards: list[RewardSourceConfig] = field(default_factory=list)
    """Weighted reward sources (reward-model folders and Python functions, ``rlhfkit.rewards``), replacing
    ``reward_model.path``; empty = the reward model of ``reward_model.path`` alone."""

    def check_environment(self) -> None:
        r = self.rollout
        if ":" not in r.environment.strip(":"):
            raise ConfigError(f"rollout.environment {r.environment!r} must be written module:factory or "
                              "path.py:factory")
        if r.max_turns < 1:
            raise ConfigError(f"rollout.max_turns must be at least 1, got {r.max_turns}")
        if r.fsdp_sampling == "sharded":
            raise ConfigError("rollout.environment samples with the policy held whole: set "
                              "rollout.fsdp_sampling=gathered")

    def validate(self) -> None:
        """Cross-field rules, checked before any model is loaded; each error names its keys."""
        t, r, p, k, v = self.train, self.rollout, self.ppo, self.kl, self.value_model
        check_trained_dtype(self.model, self.lora)
        if not self.reward_model.path and not self.rewards:
            raise ConfigError("reward_model.path or rewards is required (a reward-model folder from "
                              "`rlhfkit reward`, or a list of reward sources)")
        if self.reward_model.path and self.rewards:
            raise ConfigError("give the reward model either as reward_model.path or as a source in rewards "
                              "(- {reward_model: PATH}), not both")
        a, n = self.advantage, self.rollout.n
        if n < 1 or (a.estimator in ("grpo", "dr_grpo", "rloo") and n < 2):
            raise ConfigError(f"rollout.n must be >= 1, and >= 2 for advantage.estimator={a.estimator} "
                              f"(its baseline is the other responses to the same prompt), got {n}")
        if not a.critic_free and self.rewards and v.kind == "separate" and not v.path:
            raise ConfigError("with rewards instead of reward_model.path, PPO's separate value model needs "
                              "value_model.path (a scalar-head folder to start from), or set value_model.kind=head")
        if not a.critic_free and (self.kl.penalty == "loss" or n > 1):
            raise ConfigError("kl.penalty=loss and rollout.n > 1 are for the critic-free estimators "
                              "(advantage.estimator grpo, dr_grpo, rloo or reinforce_pp), not gae")
        if r.environment is not None:
            self.check_environment()
        if t.grad_accum_steps != 1:
            raise ConfigError("train.grad_accum_steps must be 1 for PPO: a step is one rollout of "
                              "train.per_device_batch_size prompts; to save memory lower rollout.chunk_size "
                              "and ppo.micro_batch_size instead")
        if p.minibatch_size < 1 or p.minibatch_size > t.per_device_batch_size * r.n:
            raise ConfigError(f"ppo.minibatch_size ({p.minibatch_size}) must be between 1 and "
                              f"train.per_device_batch_size · rollout.n ({t.per_device_batch_size * r.n}), "
                              "the rollouts per step")
        if p.micro_batch_size is not None and not 1 <= p.micro_batch_size <= p.minibatch_size:
            raise ConfigError(f"ppo.micro_batch_size ({p.micro_batch_size}) must be between 1 and "
                              f"ppo.minibatch_size ({p.minibatch_size}), or null")
        if r.chunk_size is not None and r.chunk_size < 1:
            raise ConfigError(f"rollout.chunk_size must be at least 1 or null, got {r.chunk_size}")
        if p.epochs < 1 or r.max_new_tokens < 1 or r.print_samples < 0:
            raise ConfigError("ppo.epochs and rollout.max_new_tokens must be at least 1, "
                              "rollout.print_samples at least 0")
        if not r.temperature > 0 or not 0 < r.top_p <= 1 or r.top_k < 0:
            raise ConfigError(f"rollout.temperature must be > 0 (got {r.temperature}), rollout.top_p in (0, 1] "
                              f"(got {r.top_p}), rollout.top_k >= 0 (got {r.top_k})")
        longest = (self.data.max_prompt_length or 0) + r.max_new_tokens
        if self.data.max_prompt_length is not None and longest > self.data.max_length:
            raise ConfigError(f"data.max_prompt_length ({self.data.max_prompt_length}) + rollout.max_new_tokens "
                              f"({r.max_new_tokens}) exceeds data.max_length ({self.data.max_length})")
        if not (p.clip_range > 0 and p.value_clip_range > 0 and p.vf_coef >= 0):
            raise ConfigError("ppo.clip_range and ppo.value_clip_range must be > 0, ppo.vf_coef >= 0")
        if self.ptx.coef < 0 or self.ptx.batch_size < 1:
            raise ConfigError(f"ptx.coef must be >= 0 (got {self.ptx.coef}) and ptx.batch_size >= 1 "
                              f"(got {self.ptx.batch_size})")
        if self.ptx.coef > 0 and not self.ptx.data_file:
            raise ConfigError("ptx.coef > 0 needs ptx.data_file ({\"prompt\", \"response\"} demonstrations)")
        if not (0 <= p.gamma <= 1 and 0 <= p.lam <= 1):
            raise ConfigError(f"ppo.gamma ({p.gamma}) and ppo.lam ({p.lam}) must be in [0, 1]")
        if k.init_coef < 0 or (k.controller == "adaptive" and not (k.init_coef > 0 and k.target > 0
                                                                    and k.horizon > 0)):
            raise ConfigError("kl.init_coef must be >= 0; with kl.controller=adaptive, kl.init_coef, "
                              "kl.target and kl.horizon must be > 0")
        if v.kind == "head" and v.path:
            raise ConfigError("value_model.path is for value_model.kind=separate; a value head starts from "
                              f"value_model.head_init_std (got path {v.path!r})")
        if v.lr is not None and not v.lr > 0:
            raise ConfigError(f"value_model.lr must be > 0 or null (= train.lr), got {v.lr}")
        if r.old_logprobs == "sampling" and (t.mixed_precision != "no" or self.model.dtype != "float32"):
            raise ConfigError(
                f"rollout.old_logprobs=sampling needs float32 numerics (train.mixed_precision={t.mixed_precision}, "
                f"model.dtype={self.model.dtype}): in bf16 the sampling pass's log-probs differ from the training "
                "forward's by up to ~0.5 nats, so PPO's first ratio would not be 1; use rollout.old_logprobs=forward")
        if self.data.eval_file is not None and not self.data.eval_file:
            raise ConfigError("data.eval_file is empty; give a prompts file or null")


# Keys that may change on resume: they change what is printed, never the weights' trajectory.
SAFE_TO_CHANGE_ON_RESUME = ("rollout.print_samples",)
