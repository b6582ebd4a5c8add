"""Kill-and-resume through a real subprocess: a PPO run killed with SIGKILL and started again with the same command
ends exactly like a run never stopped — weights, value model, β of the adaptive controller, prompt order, samples."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
from safetensors.torch import load_file

from rlhfkit.engine.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(root: Path, output_dir: Path) -> Path:
    recipe = {
        "model": {"path": str(save_policy_folder(root))},
        "reward_model": {"path": str(save_reward_folder(root))},
        "data": {"train_file": str(save_prompts(root, 20)), "max_prompt_length": 32, "max_length": 64},
        "train": {"output_dir": str(output_dir), "per_device_batch_size": 8, "max_steps": 8, "save_every": 2,
                  "lr": 1e-3, "progress_bar": False},  # 20 prompts, 8 per step: resumes cross epochs
        "rollout": {"max_new_tokens": 8, "temperature": 0.9},
        "ppo": {"minibatch_size": 4, "epochs": 2, "missing_eos_penalty": -1.0},
        "kl": {"controller": "adaptive", "init_coef": 0.2, "target": 0.05, "horizon": 40},
    }
    path = root / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "rlhfkit.cli", "ppo", "--config", str(recipe)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(recipe: Path) -> None:
    done = subprocess.run(command(recipe), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def run_and_kill_after_checkpoint(recipe: Path, output_dir: Path, step: int) -> None:
    process = subprocess.Popen(command(recipe), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (output_dir / f"checkpoint-{step}" / "manifest.json").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def step_rows(output_dir: Path) -> list[dict]:
    return [r for r in read_metrics(output_dir / "metrics.jsonl") if "event" not in r]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(write_recipe(tmp_path, straight))
    recipe = write_recipe(tmp_path, killed)
    run_and_kill_after_checkpoint(recipe, killed, step=2)
    assert not (killed / "final").exists() and not (killed / "checkpoint-8").exists()  # really interrupted
    run(recipe)  # the same command again
    resumes = [r for r in read_metrics(killed / "metrics.jsonl") if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 2

    a, b = step_rows(straight), step_rows(killed)
    assert [r["step"] for r in b] == list(range(1, 9))
    for key in ("objective/score", "objective/kl", "objective/kl_coef", "response/length_mean", "ppo/policy/loss",
                "ppo/val/loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert len({r["objective/kl_coef"] for r in a}) == 8  # β moved at every step: its state was restored
    for folder, name in (("final", "model.safetensors"), ("value_model", "model.safetensors")):
        wa, wb = load_file(str(straight / folder / name)), load_file(str(killed / folder / name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), folder
