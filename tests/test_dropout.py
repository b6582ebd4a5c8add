"""``rlhfkit.models.dropout.disable_dropout`` on every architecture the factory builds, dropout modules and float
rates alike, LoRA's included — and PPO's first importance ratio exactly 1 on dropout-bearing models."""

from __future__ import annotations

import pytest
import torch

try:
    from ppo_fixtures import FakeLoop, ppo_config, save_policy_folder, tokenizer
except ImportError:  # tests/ imported as a package
    from tests.ppo_fixtures import FakeLoop, ppo_config, save_policy_folder, tokenizer

from rlhfkit.models.dropout import disable_dropout
from rlhfkit.models.lora import LoraSettings, apply_lora
from rlhfkit.models.tiny import DROPOUT_ARCHS, build_tiny_model

KERNELS = ("eager", "sdpa")


def two_train_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of one batch from two train-mode forwards (each draws fresh dropout masks)."""
    tok = tokenizer()
    ids = torch.tensor([tok("what is 17 plus 25? the answer is 42.")["input_ids"]] * 2)
    model.train()
    outs = [torch.log_softmax(model(input_ids=ids).logits, dim=-1) for _ in range(2)]
    return outs[0], outs[1]


def dropout_model(arch: str, kernel: str, rate: float = 0.1):
    model = build_tiny_model(arch, "micro", tokenizer(), seed=0, dropout=rate)
    model.set_attn_implementation(kernel)
    return model


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_two_train_mode_forwards_agree_exactly_after_disable_dropout(arch, kernel):
    torch.manual_seed(0)
    model = dropout_model(arch, kernel)
    a, b = two_train_forwards(model)
    assert float((a - b).abs().max()) > 1e-3  # the check has power: dropout 0.1 makes the passes disagree
    assert disable_dropout(model) > 0  # it reports what it switched off
    a, b = two_train_forwards(model)
    assert torch.equal(a, b)
    assert disable_dropout(model) == 0  # idempotent


@pytest.mark.parametrize("arch", ("qwen2", "llama", "opt"))
def test_float_attention_rates_alone_are_switched_off(arch):
    """Qwen2 and Llama keep attention dropout as a float read by the attention kernel (no nn.Dropout at all);
    switching only nn.Dropout modules — what PPO did — leaves it on."""
    torch.manual_seed(0)
    model = dropout_model(arch, "eager")
    for module in model.modules():  # the old PPO switch
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    a, b = two_train_forwards(model)
    assert float((a - b).abs().max()) > 1e-3
    disable_dropout(model)
    assert torch.equal(*two_train_forwards(model))
    assert model.config.attention_dropout == 0.0  # architectures that read the config's rate are covered too


@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_lora_dropout_is_switched_off_when_called_after_the_adapters(arch):
    torch.manual_seed(0)
    model = apply_lora(dropout_model(arch, "sdpa", rate=0.0), LoraSettings(r=4, dropout=0.5))
    for name, param in model.named_parameters():  # lora_B starts at 0: make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    a, b = two_train_forwards(model)
    assert float((a - b).abs().max()) > 1e-3
    disable_dropout(model)
    assert torch.equal(*two_train_forwards(model))


@pytest.mark.parametrize("lora", (False, True))
@pytest.mark.parametrize("arch", ("opt", "qwen2"))
def test_ppo_first_minibatch_ratio_is_exactly_one_with_a_dropout_model(tmp_path, arch, lora):
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.trainers.ppo import PPOTrainer, SamplingRNG, load_prompts, make_kl_controller
    from rlhfkit.trainers.ppo_models import build_ppo_models

    policy = tmp_path / f"{arch}-dropout"
    save_tiny(build_tiny_model(arch, "micro", tokenizer(), seed=0, dropout=0.1), tokenizer(), policy)
    save_policy_folder(tmp_path)  # the reward model's fixture needs the same tokenizer only
    extra = ["lora.enabled=true", "lora.dropout=0.3", "lora.r=4"] if lora else []
    cfg = ppo_config(tmp_path, "ppo.epochs=1", *extra, policy=policy)
    models = build_ppo_models(cfg)
    models.actor_critic.train()  # as the shared loop trains it
    loop = FakeLoop(models.actor_critic, lr=0.0)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts)
    records = []
    update = trainer.update
    trainer.update = lambda minibatch, *rest: records.append(dict(update(minibatch, *rest))) or dict(records[-1])
    trainer.step(encoded[:8], 1)
    assert records[0]["ppo/ratio/max"] == 1.0 and records[0]["ppo/ratio/mean"] == 1.0
    assert records[0]["ppo/policy/approxkl"] == 0.0


def _dropout_left(model) -> list[str]:
    """Names of every dropout probability still non-zero: modules' p, float rates on modules."""
    from rlhfkit.models.dropout import _RATE

    left = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0.0:
            left.append(f"{name}.p")
        left += [f"{name}.{k}" for k, v in vars(module).items() if isinstance(v, float) and _RATE.search(k) and v]
    return left


@pytest.mark.parametrize("stage", ("ppo", "dpo"))
def test_every_trained_model_leaves_its_builder_without_dropout_lora_included(tmp_path, stage):
    from rlhfkit.config import load_config
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.trainers.dpo import DPOConfig, load_models, prepare_reference
    from rlhfkit.trainers.ppo_models import build_ppo_models

    policy = tmp_path / "opt-dropout"
    save_tiny(build_tiny_model("opt", "micro", tokenizer(), seed=0, dropout=0.1), tokenizer(), policy)
    lora = ["lora.enabled=true", "lora.dropout=0.3", "lora.r=4"]
    if stage == "ppo":
        save_policy_folder(tmp_path)
        model = build_ppo_models(ppo_config(tmp_path, *lora, policy=policy)).actor_critic
    else:
        (tmp_path / "train.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
        cfg = load_config(DPOConfig, None, [f"model.path={policy}", f"data.train_file={tmp_path / 'train.jsonl'}",
                                            f"train.output_dir={tmp_path / 'out'}", "reference_mode=on_the_fly",
                                            "data.max_length=64", "data.max_prompt_length=32", *lora])
        model = prepare_reference(cfg, *load_models(cfg), tokenizer(), {"train": []}, "cpu", True)[0]
    assert any("lora_dropout" in name for name, _ in model.named_modules())
    assert _dropout_left(model) == []
