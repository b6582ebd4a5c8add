"""PPOConfig: recipes load, cross-field rules fail up front naming their keys, every field is documented."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from rlhfkit.config import ConfigError, load_config
from rlhfkit.trainers import ppo_config
from rlhfkit.trainers.ppo_config import PPOConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model.path=m", "reward_model.path=r", "data.train_file=p.jsonl"]


def load(*overrides: str) -> PPOConfig:
    return load_config(PPOConfig, None, BASE + list(overrides))


def test_recipes_load_and_differ_in_a_few_keys():
    full = load_config(PPOConfig, ROOT / "configs" / "ppo.yaml")
    lora = load_config(PPOConfig, ROOT / "configs" / "ppo_lora.yaml")
    assert not full.lora.enabled and lora.lora.enabled
    flat = {}
    for name, config in (("full", full), ("lora", lora)):
        flat[name] = {f"{section}.{k}": v for section, values in dataclasses.asdict(config).items()
                      for k, v in (values.items() if isinstance(values, dict) else [("", values)])}
    differing = {k for k in flat["full"] if flat["full"][k] != flat["lora"][k]}
    assert differing == {"lora.enabled", "train.lr", "train.output_dir"}


def test_defaults_follow_lm_human_preferences():
    cfg = load()
    assert (cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.epochs, cfg.ppo.clip_range) == (1.0, 0.95, 4, 0.2)
    assert cfg.value_model.kind == "separate" and cfg.kl.estimator == "k1" and cfg.ppo.whiten_advantages


@pytest.mark.parametrize("overrides, key", [
    (["reward_model.path="], "reward_model.path"),
    (["train.grad_accum_steps=2"], "train.grad_accum_steps"),
    (["ppo.minibatch_size=65"], "ppo.minibatch_size"),
    (["ppo.micro_batch_size=17"], "ppo.micro_batch_size"),
    (["rollout.chunk_size=0"], "rollout.chunk_size"),
    (["rollout.temperature=0"], "rollout.temperature"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["rollout.max_new_tokens=300"], "data.max_length"),
    (["ppo.lam=1.5"], "ppo.lam"),
    (["ppo.clip_range=0"], "ppo.clip_range"),
    (["kl.controller=adaptive", "kl.init_coef=0"], "kl.init_coef"),
    (["kl.init_coef=-1"], "kl.init_coef"),
    (["value_model.kind=head", "value_model.path=v"], "value_model.path"),
    (["value_model.lr=0"], "value_model.lr"),
    (["kl.controller=pid"], "kl.controller"),
    (["kl.estimator=k4"], "kl.estimator"),
    (["ppo.epochs=0"], "ppo.epochs"),
])
def test_cross_field_rules_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(*overrides)


def test_every_field_is_documented():
    source = inspect.getsource(ppo_config)
    for cls in (ppo_config.ReferenceConfig, ppo_config.RewardModelConfig, ppo_config.ValueModelConfig,
                ppo_config.RolloutConfig, ppo_config.PPOSettings, ppo_config.KLConfig, PPOConfig):
        lines = inspect.getsource(cls).split("    def ")[0].splitlines()  # the fields, not the methods
        names = [f.name for f in dataclasses.fields(cls)]
        starts = [next(i for i, l in enumerate(lines) if l.strip().startswith(f"{n}:")) for n in names]
        for name, start, end in zip(names, starts, starts[1:] + [len(lines)]):
            assert any('"""' in line for line in lines[start + 1 : end]), f"{cls.__name__}.{name} has no docstring"
    assert "Huang et al. 2024" in source
