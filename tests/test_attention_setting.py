"""``model.attn_implementation`` reaches every model each stage builds (SFT, reward, DPO; PPO is covered in
tests/test_ppo_step.py), and a kernel that cannot run is refused before any training."""

from __future__ import annotations

import pytest

from rlhfkit.engine.stage_config import ModelConfig
from rlhfkit.models.load import ModelLoadError, load_tokenizer
from rlhfkit.trainers.dpo import DPOConfig, load_models
from rlhfkit.trainers.reward import RewardConfig, build_reward_model
from rlhfkit.trainers.sft import SFTConfig, build_policy

try:
    from stage_helpers import cli, colour_rows, model_dir, write_jsonl
except ImportError:  # tests/ imported as a package
    from tests.stage_helpers import cli, colour_rows, model_dir, write_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("attention"))


def kernel(model) -> str:
    return model.config._attn_implementation


@pytest.mark.parametrize("attention, expected", [(None, "sdpa"), ("eager", "eager")])
def test_sft_reward_and_dpo_models_use_the_configured_kernel(base, attention, expected):
    model_cfg = ModelConfig(path=str(base), attn_implementation=attention)
    assert kernel(build_policy(model_cfg, SFTConfig().lora, seed=0)) == expected
    reward, _ = build_reward_model(RewardConfig(model=model_cfg), load_tokenizer(base))
    assert kernel(reward) == expected
    policy, reference = load_models(DPOConfig(model=model_cfg, reference=str(base)))
    assert kernel(policy) == expected and kernel(reference) == expected


def test_a_kernel_that_cannot_run_is_one_sentence_before_training(base, tmp_path, capsys):
    with pytest.raises(ModelLoadError, match="model.attn_implementation='no_such_kernel' cannot be used"):
        build_policy(ModelConfig(path=str(base), attn_implementation="no_such_kernel"), SFTConfig().lora, seed=0)
    demos = write_jsonl(tmp_path / "demos.jsonl", colour_rows(4))
    out = tmp_path / "run"
    code = cli(["sft", f"model.path={base}", f"data.train_file={demos}", f"train.output_dir={out}",
                "train.progress_bar=false", "model.attn_implementation=no_such_kernel"])
    assert code != 0
    assert "model.attn_implementation='no_such_kernel' cannot be used" in capsys.readouterr().err
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))
