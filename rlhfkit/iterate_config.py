"""The config of ``rlhfkit iterate`` (``configs/iterate.yaml``): rounds, sampling, labelling, the stages.

``method: ppo`` (reward model + PPO each round) or ``method: dpo`` (on-policy DPO rounds:
``configs/iterate_dpo.yaml``). The stages are configured by ``reward:``, ``ppo:`` and ``dpo:`` sections written
exactly like ``configs/reward.yaml``, ``configs/ppo.yaml`` and ``configs/dpo.yaml`` (every key of
:class:`~rlhfkit.trainers.reward.RewardConfig` / :class:`~rlhfkit.trainers.ppo_config.PPOConfig` /
:class:`~rlhfkit.trainers.dpo_config.DPOConfig`), except the keys iterate sets itself for each round
(:data:`OWNED_KEYS`: the model and data paths and the output folder). They are checked when the config is
loaded, so a typo fails before round 1, naming the key (``reward.train.lrr``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import ConfigError, _build, save_config, to_dict, validate_tree

OWNED_KEYS = {
    "reward": ("model.path", "data.train_file", "data.eval_file", "train.output_dir", "train.seed",
               "normalize.reference_file"),
    "ppo": ("model.path", "reference.path", "reward_model.path", "value_model.path", "data.train_file",
            "train.output_dir", "train.seed"),
    "dpo": ("model.path", "reference", "data.train_file", "data.eval_file", "train.output_dir", "train.seed"),
}
"""Keys of the stage sections that iterate fills in for each round (a recipe may not set them)."""

# Keys a re-run may change without invalidating finished rounds: how many rounds, and how the run is operated.
SAFE_TO_CHANGE_ON_RESUME = ("rounds", "threads", "labels.source", "labels.host", "labels.port",
                            "labels.poll_seconds")


@dataclass
class SamplingSection:
    prompts_per_round: int = 1000
    """World train prompts drawn each round (family-balanced, a fresh draw per round); two responses each."""
    max_new_tokens: int = 48
    temperature: float = 1.0
    """Sampling temperature of the pairs (1 = the policy itself)."""
    batch_size: int = 64
    """Rows per generation batch (the samples depend on it; keep it fixed across re-runs)."""


@dataclass
class LabelSection:
    source: Literal["simulated", "people", "judge"] = "simulated"
    """``simulated``: the world's simulated annotators label over HTTP; ``people``: serve the app and wait;
    ``judge``: ``labels.judge`` labels over HTTP as one annotator (RLAIF; needs overlap 1)."""
    judge: str = "ai"
    """With ``source: judge``: gold, ai, reward:DIR or lm:DIR (``rlhfkit.judges.make_judge``)."""
    annotators: int = 4
    """Simulated annotators (threads, each a user of the app); at least ``overlap``."""
    overlap: int = 2
    """Different annotators per pair."""
    min_votes: int = 2
    """Export: a pair needs this many votes and a strict majority for a winner to become a preference."""
    eval_fraction: float = 0.1
    """Export: share of prompts (by hash) held out as the reward model's eval pairs."""
    tau: float | None = None
    """Annotator noise τ; null: calibrated on round 1's pairs (20–30 % disagreement, docs/world.md §5)."""
    length_bias: float = 0.0
    """Simulated annotators' utility per word (a taste for long answers); 0 = none."""
    tie_margin: float = 0.05
    """Utilities this close are a tie for the simulated annotators."""
    both_bad_below: float | None = None
    """Simulated annotators answer "both bad" when both utilities are below this; null = never."""
    host: str = "127.0.0.1"
    """Where the app listens (people mode; the simulated annotators always use loopback)."""
    port: int = 8000
    """People mode's port (the simulated annotators use a free port)."""
    poll_seconds: float = 10.0
    """People mode: how often progress is checked and printed."""

    def validate(self) -> None:
        if self.overlap < 1 or self.min_votes < 1 or self.annotators < 1:
            raise ConfigError("labels.overlap, labels.min_votes and labels.annotators must be at least 1")
        if self.min_votes > self.overlap:
            raise ConfigError(f"labels.min_votes ({self.min_votes}) exceeds labels.overlap ({self.overlap}): "
                              "no pair could ever be exported")
        if self.source == "judge" and self.overlap != 1:
            raise ConfigError(f"labels.overlap must be 1 with labels.source=judge (one deterministic judge; more "
                              f"votes from it add nothing), got {self.overlap}")
        if self.source == "simulated" and self.annotators < self.overlap:
            raise ConfigError(f"labels.annotators ({self.annotators}) must be at least labels.overlap "
                              f"({self.overlap}): each pair needs that many different annotators")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"labels.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.tau is not None and not self.tau > 0:
            raise ConfigError(f"labels.tau must be positive or null, got {self.tau}")
        if not self.poll_seconds > 0:
            raise ConfigError(f"labels.poll_seconds must be positive, got {self.poll_seconds}")


@dataclass
class EvalSection:
    prompts_per_family: int = 100
    """World eval prompts per family (100 = the whole fixed eval set of 500)."""
    samples: int = 2
    """Samples per prompt and policy."""
    max_new_tokens: int = 48
    batch_size: int = 64
    seed: int = 0
    against_sft: bool = True
    """Also evaluate the round's policy against the SFT policy (whenever the previous policy is not SFT itself)."""


@dataclass
class IterateConfig:
    output_dir: str = "runs/iterate"
    """The run folder: feedback.db, round-N/ folders, rounds.json. A re-run resumes from it."""
    rounds: int = 2
    """Rounds to have finished; raise it and re-run to add rounds."""
    seed: int = 0
    """Seeds the prompt draws and sampling; round r's stages train with seed + r."""
    world_seed: int = 0
    """Seed of the built-in world (prompts, gold judge, simulated annotators)."""
    sft_path: str = "runs/sft/final"
    """The SFT policy: round 1 starts from it (unless ``start_path``), every reward model is trained from it, and
    every round is also evaluated against it."""
    start_path: str | None = None
    """The policy round 1 samples from and trains from; null = ``sft_path``. E.g. an offline DPO policy, for
    on-policy DPO rounds on top of it."""
    method: Literal["ppo", "dpo"] = "ppo"
    """ppo: a reward model on every label so far, then PPO from the current policy. dpo: on-policy DPO — the
    preference loss of the ``dpo:`` section on this round's labels (pairs of the current policy's samples),
    from the current policy with the current policy as π_ref (Xiong et al. 2024, "Iterative preference
    learning from human feedback"; Guo et al. 2024, "Direct language model alignment from online AI
    feedback")."""
    ppo_reference: Literal["round_start", "sft"] = "round_start"
    """π_ref of each round's PPO: the policy the round starts from (a trust region per round), or the SFT policy."""
    threads: int = 0
    """torch intra-op threads; 0 = torch's default."""
    sampling: SamplingSection = field(default_factory=SamplingSection)
    labels: LabelSection = field(default_factory=LabelSection)
    reward: dict[str, Any] = field(default_factory=dict)
    """RewardConfig keys (as in configs/reward.yaml), except :data:`OWNED_KEYS`."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """PPOConfig keys (as in configs/ppo.yaml), except :data:`OWNED_KEYS`."""
    dpo: dict[str, Any] = field(default_factory=dict)
    """method dpo: DPOConfig keys (as in configs/dpo.yaml; ``loss`` picks dpo, rpo, ipo, …), except :data:`OWNED_KEYS`."""
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if not self.sft_path:
            raise ConfigError("sft_path is required (an SFT model folder, e.g. runs/sft/final)")
        positive = {"sampling.prompts_per_round": self.sampling.prompts_per_round,
                    "sampling.max_new_tokens": self.sampling.max_new_tokens,
                    "sampling.batch_size": self.sampling.batch_size,
                    "eval.prompts_per_family": self.eval.prompts_per_family, "eval.samples": self.eval.samples,
                    "eval.max_new_tokens": self.eval.max_new_tokens, "eval.batch_size": self.eval.batch_size}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        if not self.sampling.temperature > 0:
            raise ConfigError(f"sampling.temperature must be > 0, got {self.sampling.temperature}")
        if self.start_path is not None and not self.start_path:
            raise ConfigError("start_path must be a model folder or null (= sft_path)")
        for section in ("reward", "ppo") if self.method == "ppo" else ("dpo",):
            stage_config(self, section, placeholders=True)
        if self.method == "dpo" and stage_config(self, "dpo", placeholders=True).unpaired:
            raise ConfigError("dpo.loss: the rounds label pairs; use a pair loss (dpo, rpo, ipo, cdpo, orpo, simpo)")


def _get_dotted(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def stage_config(cfg: IterateConfig, section: str, paths: dict[str, Any] | None = None, *,
                 placeholders: bool = False):
    """The :class:`RewardConfig` (``section="reward"``), :class:`PPOConfig` (``"ppo"``) or :class:`DPOConfig`
    (``"dpo"``) for one round:
    the recipe's section with ``paths`` (the :data:`OWNED_KEYS` values) filled in, validated. With
    ``placeholders`` the paths are dummies, to check the section's keys before any work."""
    from rlhfkit.trainers.dpo_config import DPOConfig
    from rlhfkit.trainers.ppo_config import PPOConfig
    from rlhfkit.trainers.reward import RewardConfig

    tree = _deep_copy(getattr(cfg, section))
    for key in OWNED_KEYS[section]:
        if _get_dotted(tree, key) is not None:
            raise ConfigError(f"{section}.{key} is set by rlhfkit iterate for each round; remove it from the recipe")
    if placeholders:  # values of the right types, so only the recipe's own keys can fail
        paths = {"model.path": "<set by iterate>", "data.train_file": "<set by iterate>",
                 "reward_model.path": "<set by iterate>", "train.output_dir": "<set by iterate>"}
        paths = {k: v for k, v in paths.items() if k in OWNED_KEYS[section]}
    for key, value in (paths or {}).items():
        _set_dotted(tree, key, value)
    cls = {"reward": RewardConfig, "ppo": PPOConfig, "dpo": DPOConfig}[section]
    try:
        built = _build(cls, tree)
        validate_tree(built)
    except ConfigError as exc:
        raise ConfigError(_in_section(section, str(exc))) from None
    return built


def _in_section(section: str, message: str) -> str:
    """A stage config's error, its key named from the top of the iterate recipe (``reward.train.lr: ...``)."""
    if message.startswith("unknown key "):
        return f"unknown key {section}.{message[len('unknown key '):]}"
    head = message.split(":", 1)[0]
    if head and " " not in head:  # "train.lr: expected a number" names a key
        return f"{section}.{message}"
    return f"{section}: {message}"


def _deep_copy(tree: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def changed_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (as :func:`rlhfkit.config.to_dict` gives)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def check_resume_safe(cfg: IterateConfig, saved_file: Path) -> None:
    """Save the config on a run's first start; on a re-run refuse a change that would mix two runs in one
    folder (anything but :data:`SAFE_TO_CHANGE_ON_RESUME`), naming the changed keys."""
    import yaml

    current = to_dict(cfg)
    if saved_file.exists():
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
        changed = [k for k in changed_keys(saved, current) if k not in SAFE_TO_CHANGE_ON_RESUME]
        if changed:
            raise ConfigError(f"{cfg.output_dir} holds a run made with another config ({', '.join(changed[:5])} "
                              f"changed); use a new output_dir, or change only {', '.join(SAFE_TO_CHANGE_ON_RESUME)}")
    save_config(cfg, saved_file)
