"""Half-precision weights are never trained in place: full fine-tuning with ``model.dtype=bfloat16`` is refused
before any work, naming the fix (float32 weights under bf16 autocast, or LoRA) — which does move the weights at
DPO's default lr 1e-6, where in-place bf16 AdamW leaves most of them exactly where they were (issue 17)."""

from __future__ import annotations

import pytest
import torch

try:
    from test_dpo_common import cli_args, make_data, model_dir
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import cli_args, make_data, model_dir

from rlhfkit.config import ConfigError, load_config
from rlhfkit.trainers.dpo import DPOConfig
from rlhfkit.trainers.ppo_config import PPOConfig
from rlhfkit.trainers.reward import RewardConfig
from rlhfkit.trainers.sft import SFTConfig

STAGES = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig, "ppo": PPOConfig}


def stage_args(stage: str, *extra: str) -> list[str]:
    args = ["model.path=m", "data.train_file=t.jsonl", "data.max_length=64", "data.max_prompt_length=32", *extra]
    return [*args, "reward_model.path=r", "rollout.max_new_tokens=16", "ppo.minibatch_size=4"] if stage == "ppo" else args


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("stage", STAGES)
def test_half_precision_full_fine_tuning_is_refused_naming_the_fix(stage, dtype):
    with pytest.raises(ConfigError, match=rf"model.dtype={dtype} with full fine-tuning.*train.mixed_precision=bf16"):
        load_config(STAGES[stage], None, stage_args(stage, f"model.dtype={dtype}"))


@pytest.mark.parametrize("stage", STAGES)
def test_half_precision_base_with_lora_and_float32_with_autocast_are_accepted(stage):
    load_config(STAGES[stage], None, stage_args(stage, "model.dtype=bfloat16", "lora.enabled=true"))
    load_config(STAGES[stage], None, stage_args(stage, "train.mixed_precision=bf16"))


def test_the_cli_refuses_before_any_work(tmp_path, capsys):
    from rlhfkit.cli import main as cli

    make_data(tmp_path, n_train=8, n_eval=0)
    assert cli(cli_args(tmp_path, "run", "model.dtype=bfloat16")) == 2
    assert "model.dtype=bfloat16 with full fine-tuning" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def moved_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return changed / sum(t.numel() for t in before.values())


def adamw_steps(model: torch.nn.Module, lr: float, steps: int = 10) -> float:
    """Fraction of the weights that moved after ``steps`` AdamW steps on a language-modelling loss, the
    forward under bf16 autocast (as ``train.mixed_precision=bf16`` runs it)."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = torch.randint(3, 290, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return moved_fraction(before, model.state_dict())


def test_float32_master_weights_move_at_lr_1e6_where_bf16_weights_do_not(tmp_path):
    """Why the refusal: the same 10 AdamW steps at lr 1e-6 move (nearly) every float32 weight, but leave most
    bf16 weights exactly as they were — an update below half a bf16 spacing (2^-9 of the weight) rounds away."""
    from rlhfkit.models.load import load_causal_lm

    torch.manual_seed(0)
    master = adamw_steps(load_causal_lm(model_dir(tmp_path)), lr=1e-6)
    half = adamw_steps(load_causal_lm(model_dir(tmp_path), dtype="bfloat16"), lr=1e-6)
    assert master > 0.9
    assert half < 0.2


def test_the_recommended_setting_trains_dpo_at_its_default_lr(tmp_path):
    """model.dtype=float32 with train.mixed_precision=bf16 through the CLI: DPO at lr 1e-6 moves the weights."""
    from safetensors.torch import load_file

    from rlhfkit.cli import main as cli

    make_data(tmp_path, n_train=16, n_eval=0)
    args = [a for a in cli_args(tmp_path, "run", "train.mixed_precision=bf16", "train.max_steps=10")
            if not a.startswith(("train.lr", "data.eval_file"))]
    assert cli(args) == 0
    before = load_file(next(model_dir(tmp_path).glob("*.safetensors")))
    after = load_file(next((tmp_path / "run" / "final").glob("*.safetensors")))
    assert moved_fraction(before, {k: after[k] for k in before}) > 0.9
