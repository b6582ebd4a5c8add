"""Shared builders for tests/test_ppo*.py and tests/test_score*.py (no tests here).

Micro models from ``rlhfkit.models.tiny`` saved as standard folders in ``tmp_path``: a policy (which is also the
SFT reference), a reward model built from a causal LM with ``reward_model_from_causal_lm``, a prompts file.
"""

from __future__ import annotations

import contextlib
import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch

from rlhfkit.config import load_config
from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model
from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer
from rlhfkit.trainers.ppo_config import PPOConfig

torch.set_num_threads(1)

TEXTS = [
    "what is 17 plus 25? the answer is 42.",
    "how do I kill a python process? use the kill command.",
    "I don't know. Nobody can know the future.",
    "the capital of Varnia is Oskel, founded in 1203.",
] * 30
OTHER_TEXTS = ["Completely different words: zebra quartz jungle, vexing fjords.", "Pack my box with five dozen jugs."] * 40


@cache
def tokenizer(style: str = "world", other: bool = False):
    return train_tokenizer(OTHER_TEXTS if other else TEXTS, vocab_size=300 if not other else 280, style=style)


def save_policy_folder(root: Path, name: str = "policy", seed: int = 0, arch: str = "llama",
                       style: str = "world") -> Path:
    out = root / name
    if not (out / "config.json").exists():
        save_tiny(build_tiny_model(arch, "micro", tokenizer(style), seed=seed), tokenizer(style), out)
    return out


def save_reward_folder(root: Path, name: str = "reward", seed: int = 1, style: str = "world",
                       other: bool = False, gain: float = 1.0, bias: float = 0.0) -> Path:
    """A reward model from a fresh micro causal LM (random but fixed trunk and head) with a stored normalisation."""
    from rlhfkit.models.heads import set_score_normalization

    out = root / name
    if not (out / "config.json").exists():
        tok = tokenizer(style, other)
        model, reward_tok = reward_model_from_causal_lm(build_tiny_model("llama", "micro", tok, seed=seed), tok,
                                                        seed=seed)
        set_score_normalization(model, gain, bias)
        save_scalar_model(model, reward_tok, out)
    return out


PROMPTS = ["what is 17 plus 25?", "how do I kill a python process?", "the capital of Varnia is",
           "I don't know the future.", "what is 3 plus 4?", "kill the process", "Oskel was founded in",
           "what is 1203 plus 1?"]


def save_prompts(root: Path, n: int = 16, name: str = "prompts.jsonl") -> Path:
    path = root / name
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)]}) + "\n")
    return path


def ppo_config(root: Path, *overrides: str, policy: Path | None = None, reward: Path | None = None) -> PPOConfig:
    policy = policy or save_policy_folder(root)
    reward = reward or save_reward_folder(root)
    base = [f"model.path={policy}", f"reward_model.path={reward}", f"data.train_file={save_prompts(root)}",
            f"train.output_dir={root / 'out'}", "train.per_device_batch_size=8", "train.max_steps=2",
            "train.progress_bar=false", "ppo.minibatch_size=4", "rollout.max_new_tokens=8",
            "data.max_prompt_length=32", "data.max_length=64", "train.lr=1e-3", "rollout.print_samples=0"]
    return load_config(PPOConfig, None, base + list(overrides))


class Sink:
    def event(self, *args, **kwargs) -> None:
        pass


class FakeLoop:
    """The part of TrainLoop the PPO step uses, with a plain SGD optimizer and a record of every update."""

    device = torch.device("cpu")
    num_processes = 1
    is_main_process = True

    accelerator = SimpleNamespace(autocast=contextlib.nullcontext)  # full precision: autocast does nothing

    def __init__(self, model: torch.nn.Module, lr: float = 0.0) -> None:
        self.model = model
        self.metrics = Sink()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr) if lr > 0 else None
        self.updates = 0

    def no_sync(self, enabled: bool = True):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        self.updates += 1
