"""``rlhfkit demo`` settings: one typed tree, loaded like every recipe (``configs/demo.yaml``, ``key=value``).

The stage sections ``sft``, ``reward``, ``ppo`` and ``dpo`` hold keys of the stage's own config
(:class:`~rlhfkit.trainers.sft.SFTConfig`, …) merged over :data:`STAGE_DEFAULTS`; the demo then sets the
paths (model folders, data files, output folder) and the seed itself. Each stage's resolved recipe is
written to ``<out>/recipes/<stage>.yaml`` and validated before any work starts, so a wrong key fails at
once, and any stage can be re-run alone with ``rlhfkit <stage> --config <out>/recipes/<stage>.yaml``.

The stage hyper-parameters follow the measurements in WORLD_NOTES.md (SFT 150 steps × 32 at lr 3e-4 on
the fixed demonstration spec; DPO + NLL (RPO), one epoch over 24000 prompts' pairs; reward model from SFT,
two epochs, chosen on held-out labels). They are the recipe, not tuned to make the later stages look better.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import ConfigError
from rlhfkit.evaluate.hacking import MonitorConfig
from rlhfkit.worlds.build import WorldBuildConfig

STAGES = ("sft", "reward", "ppo", "dpo")

# The default preset's stage recipes (keys of each stage's config; paths and seeds are set by the demo).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {
        "data": {"max_length": 128, "max_prompt_length": 64},
        "train": {"lr": 3.0e-4, "lr_schedule": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.0,
                  "per_device_batch_size": 32, "max_steps": 150, "save_every": 50, "log_every": 10},
    },
    "reward": {
        "data": {"max_length": 128, "max_prompt_length": 64, "identical": "drop"},
        "pair_weighting": "prompt",
        "normalize": {"mode": "mean"},
        "train": {"lr": 3.0e-4, "lr_schedule": "cosine", "warmup_ratio": 0.05, "per_device_batch_size": 16,
                  "grad_accum_steps": 2, "num_epochs": 2, "eval_every": 50, "save_every": 50, "log_every": 10},
    },
    "ppo": {
        "data": {"max_prompt_length": 64, "max_length": 128},
        "value_model": {"kind": "separate"},
        "train": {"lr": 5.0e-5, "lr_schedule": "constant", "per_device_batch_size": 64, "max_steps": 100,
                  "save_every": 25, "log_every": 10},
        "rollout": {"max_new_tokens": 48, "temperature": 1.0, "top_p": 1.0, "print_samples": 1},
        "ppo": {"epochs": 4, "minibatch_size": 16, "clip_range": 0.2, "value_clip_range": 0.2, "vf_coef": 0.1,
                "gamma": 1.0, "lam": 0.95, "whiten_advantages": True, "missing_eos_penalty": -1.0},
        "kl": {"controller": "fixed", "init_coef": 0.1, "estimator": "k1"},
    },
    "dpo": {
        "data": {"max_length": 128, "max_prompt_length": 64, "identical": "drop"},
        "loss": "rpo", "rpo_alpha": 1.0, "beta": 0.1, "reference_mode": "precompute",
        "train": {"lr": 1.0e-4, "lr_schedule": "cosine", "warmup_ratio": 0.05, "per_device_batch_size": 32,
                  "num_epochs": 1, "save_every": 50, "log_every": 10},
    },
}


@dataclass
class DataSection:
    pair_prompts: int = 24000
    """Train prompts (family- then kind-uniform) whose two SFT samples become one comparison pair each."""
    max_new_tokens: int = 48
    """Length limit of every sampled response (pairs, best-of-N, evaluation)."""
    batch_size: int = 64
    """Rows per generation batch (samples depend on it; keep it fixed across runs)."""
    rl_prompts: int = 3000
    """PPO's prompts: train prompts drawn like the pairs' (disjoint from the monitor's)."""
    monitor_prompts: int = 100
    """Held-out train prompts for the reward-hacking monitor: never trained on by any stage."""
    heldout_fraction: float = 0.1
    """Share of the pair prompts whose pairs are held out to measure the reward model against gold."""

    def validate(self) -> None:
        if min(self.pair_prompts, self.rl_prompts, self.monitor_prompts) < 5:
            raise ConfigError("data.pair_prompts, data.rl_prompts and data.monitor_prompts must be at least 5")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("data.max_new_tokens and data.batch_size must be at least 1")
        if not 0 < self.heldout_fraction < 0.5:
            raise ConfigError(f"data.heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")


@dataclass
class AnnotatorSection:
    seed: int = 1
    """Seed of the annotator who labels the pairs; a second annotator (seed + 1) measures disagreement."""
    target_low: float = 0.20
    target_high: float = 0.30
    """τ is calibrated so two annotators disagree on this share of the non-identical pairs of distinct utility."""
    tie_margin: float = 0.05
    """Utilities this close are a tie (dropped from the preference data)."""
    length_bias: float = 0.0
    """Optional systematic bias: utility added per word (a taste for long answers)."""

    def validate(self) -> None:
        if not 0 < self.target_low < self.target_high < 1:
            raise ConfigError("annotators.target_low < annotators.target_high must both lie in (0, 1)")


@dataclass
class BestOfNSection:
    n: int = 8
    """Samples from SFT per output; the reward model keeps the best (KL = log N − (N−1)/N)."""

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"best_of_n.n must be at least 1, got {self.n}")


@dataclass
class EvalSection:
    samples: int = 2
    """Samples per eval prompt and policy, temperature 1."""
    limit: int | None = None
    """First N eval prompts per family (null: all 100 per family). For quick runs only, never for figures."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of every interval."""
    examples_per_family: int = 2
    """Eval prompts per family shown side by side in the report."""

    def validate(self) -> None:
        if self.samples < 1 or self.n_bootstrap < 10 or self.examples_per_family < 0:
            raise ConfigError("eval.samples >= 1, eval.n_bootstrap >= 10, eval.examples_per_family >= 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit must be at least 1 or null, got {self.limit}")


@dataclass
class LargerSection:
    enabled: bool = False
    """InstructGPT in miniature (``--preset instructgpt``): also pretrain a larger base model on the same corpus
    (same seed, tokenizer and epochs), fine-tune it with the same SFT recipe, and judge every small policy
    against that larger SFT-only model."""
    size: str = "large"
    """Its size (rlhfkit.models.tiny.SIZES); ``large`` is ~10.9M parameters, 9x the world's default."""
    lr: float = 2.0e-3
    """Its pretraining peak learning rate: the world's 3e-3 scaled by sqrt(128 / 288), the width ratio
    (a wider model takes smaller steps; not tuned)."""

    def world(self, small: WorldBuildConfig) -> WorldBuildConfig:
        """The larger model's build settings: the small world's, with this size and learning rate."""
        return dataclasses.replace(small, size=self.size, lr=self.lr)

    def validate(self) -> None:
        from rlhfkit.models.tiny import SIZES

        if self.size not in SIZES:
            raise ConfigError(f"larger.size: unknown size {self.size!r}; valid: {', '.join(SIZES)}")
        if not self.lr > 0:
            raise ConfigError(f"larger.lr must be > 0, got {self.lr}")


@dataclass
class HackingSection(MonitorConfig):
    enabled: bool = True
    """Run the reward-hacking monitor during PPO (held-out prompts, gold judge as the independent judge)."""


@dataclass
class DemoConfig:
    seed: int = 0
    """Seeds every stage (training, sampling, labelling, evaluation), each from its own stream."""
    out: str = "runs/demo"
    """The run folder (``--out``): one sub-folder per stage, the report at its top."""
    threads: int = 0
    """torch intra-op threads for the whole run; 0 leaves torch's default."""
    world: WorldBuildConfig = field(default_factory=WorldBuildConfig)
    """The built-in world's tokenizer and base model (cached in ``world.cache_dir`` and reused)."""
    data: DataSection = field(default_factory=DataSection)
    annotators: AnnotatorSection = field(default_factory=AnnotatorSection)
    sft: dict = field(default_factory=dict)
    """SFTConfig keys over STAGE_DEFAULTS["sft"]."""
    reward: dict = field(default_factory=dict)
    """RewardConfig keys over STAGE_DEFAULTS["reward"]."""
    ppo: dict = field(default_factory=dict)
    """PPOConfig keys over STAGE_DEFAULTS["ppo"]."""
    dpo: dict = field(default_factory=dict)
    """DPOConfig keys over STAGE_DEFAULTS["dpo"]."""
    best_of_n: BestOfNSection = field(default_factory=BestOfNSection)
    hacking: HackingSection = field(default_factory=HackingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    larger: LargerSection = field(default_factory=LargerSection)

    def validate(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if not self.out:
            raise ConfigError("out must not be empty")


def merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, recursively for nested mappings (copies; neither input changes)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_recipe(cfg: DemoConfig, stage: str, fixed: dict) -> dict:
    """The stage's recipe: :data:`STAGE_DEFAULTS`, then the config's section, then ``fixed`` (paths, seed)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    return merge(merge(STAGE_DEFAULTS[stage], getattr(cfg, stage)), fixed)
