"""Kill-and-resume of a GRPO run through a real subprocess (as tests/test_ppo_resume.py for PPO): a run killed with
SIGKILL and started again with the same command ends exactly like a run never stopped — weights, prompt order,
the groups' samples and the reward function's scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import test_ppo_resume
import torch
import yaml
from ppo_fixtures import save_policy_folder
from safetensors.torch import load_file
from test_grpo import letter_prompts, reward_module
from test_ppo_resume import run_and_kill_after_checkpoint, step_rows


def write_recipe(root: Path, output_dir: Path, environment: str | None = None) -> Path:
    recipe = {
        "model": {"path": str(save_policy_folder(root))},
        "rewards": [{"name": "letter", "function": f"{reward_module(root)}:has_letter"}],
        "advantage": {"estimator": "grpo", "clip_range_high": 0.28, "loss_aggregation": "sequence_mean"},
        "data": {"train_file": str(letter_prompts(root, 10)), "max_prompt_length": 32, "max_length": 64},
        "train": {"output_dir": str(output_dir), "per_device_batch_size": 4, "max_steps": 6, "save_every": 2,
                  "lr": 1e-3, "progress_bar": False},  # 10 prompts, 4 per step: resumes cross epochs
        "rollout": {"max_new_tokens": 8, "temperature": 0.9, "n": 3},
        "ppo": {"minibatch_size": 6, "epochs": 2},
        "kl": {"penalty": "loss", "init_coef": 0.1},
    }
    if environment:  # multi-turn episodes (tests/test_envs.py's toy environment)
        recipe["rollout"].update(environment=environment, max_turns=3, max_new_tokens=10)
    path = root / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_killed_grpo_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(test_ppo_resume, "command",
                        lambda recipe: [sys.executable, "-m", "rlhfkit.cli", "grpo", "--config", str(recipe)])
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    test_ppo_resume.run(write_recipe(tmp_path, straight))
    recipe = write_recipe(tmp_path, killed)
    run_and_kill_after_checkpoint(recipe, killed, step=2)
    assert not (killed / "final").exists() and not (killed / "checkpoint-6").exists()  # really interrupted
    test_ppo_resume.run(recipe)
    a, b = step_rows(straight), step_rows(killed)
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in ("objective/score", "objective/kl", "reward/letter/mean", "ppo/policy/loss", "response/length_mean",
                "objective/equal_reward_groups"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa, wb = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, killed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_killed_grpo_run_with_an_environment_resumes_to_the_same_episodes(tmp_path, monkeypatch):
    """Episodes draw only from the checkpointed sampling generator and the environment is a function of the
    conversation: the resumed run meets the same observations, tool calls and errors."""
    from test_envs import ENV_MODULE

    module = tmp_path / "toy_env.py"
    module.write_text(ENV_MODULE)
    monkeypatch.setattr(test_ppo_resume, "command",
                        lambda recipe: [sys.executable, "-m", "rlhfkit.cli", "grpo", "--config", str(recipe)])
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    test_ppo_resume.run(write_recipe(tmp_path, straight, f"{module}:environment"))
    recipe = write_recipe(tmp_path, killed, f"{module}:environment")
    run_and_kill_after_checkpoint(recipe, killed, step=2)
    assert not (killed / "final").exists()
    test_ppo_resume.run(recipe)
    a, b = step_rows(straight), step_rows(killed)
    assert [r["step"] for r in b] == list(range(1, 7)) and all(r["tools/calls_per_episode"] > 0 for r in a)
    for key in ("objective/score", "objective/kl", "ppo/policy/loss", "tools/calls_per_episode",
                "tools/errors_per_episode", "episode/turns", "response/length_mean"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa, wb = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, killed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
