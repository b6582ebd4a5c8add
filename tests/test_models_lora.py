"""LoRA: per-arch targets, reference = adapters disabled (no copy), merged and adapter folders agree."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.models.forward import forward_logits
from rlhfkit.models.heads import score_sequences
from rlhfkit.models.load import load_causal_lm
from rlhfkit.models.lora import (
    DEFAULT_TARGET_MODULES,
    LoraSettings,
    adapters_disabled,
    apply_lora,
    reference_logits,
    save_policy,
    trainable_parameter_count,
)
from rlhfkit.models.policy import response_logprobs

try:
    from test_models_common import ARCHS, encode, pad_batch, saved_model_dir
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import ARCHS, encode, pad_batch, saved_model_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("lora")


def _batch(arch):
    return pad_batch(encode(arch), pad_id=0, side="right")


def _train_a_few_steps(model, ids, mask, steps=3):
    """Move the adapters away from their zero-B initialisation."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        forward_logits(model, ids, mask).logsumexp(-1).mean().backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def adapted(root):
    """arch -> (peft model after a few steps, base logits before LoRA, batch)."""
    out = {}
    for arch in ARCHS:
        base = load_causal_lm(saved_model_dir(arch, root))
        ids, mask = _batch(arch)
        with torch.no_grad():
            base_logits = forward_logits(base, ids, mask)
        model = apply_lora(base, LoraSettings(r=4, alpha=8))
        _train_a_few_steps(model, ids, mask)
        out[arch] = (model, base_logits, ids, mask)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_targets_are_attention_and_mlp_and_only_adapters_train(arch, adapted):
    model = adapted[arch][0]
    adapted_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted_names == set(DEFAULT_TARGET_MODULES[arch])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    n_trainable, n_total = trainable_parameter_count(model)
    assert 0 < n_trainable < n_total
    assert model.peft_config["default"].fan_in_fan_out == (arch == "gpt2")  # GPT-2's Conv1D


@pytest.mark.parametrize("arch", ARCHS)
def test_disabled_adapters_give_the_base_model_and_come_back(arch, adapted):
    model, base_logits, ids, mask = adapted[arch]
    with torch.no_grad():
        before = forward_logits(model, ids, mask)
        assert (before - base_logits).abs().max() > 1e-4  # training moved the policy
        with adapters_disabled(model) as reference:
            assert reference is model  # the same object: no second copy
            inside = forward_logits(model, ids, mask)
        after = forward_logits(model, ids, mask)
    torch.testing.assert_close(inside, base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    ref = reference_logits(model, ids, mask)
    assert not ref.requires_grad
    torch.testing.assert_close(ref, base_logits, atol=1e-6, rtol=0)


def test_adapters_disabled_refuses_a_model_without_adapters(root):
    plain = load_causal_lm(saved_model_dir("llama", root))
    with pytest.raises(ValueError, match="no adapters to disable"), adapters_disabled(plain):
        pass


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_and_adapter_folders_load_with_plain_libraries_and_agree(arch, adapted, root, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, _, ids, mask = adapted[arch]
    with torch.no_grad():
        live = forward_logits(model, ids, mask)
    merged_dir = save_policy(model, tmp_path / "merged", merge=True)
    adapter_dir = save_policy(model, tmp_path / "adapter", merge=False)
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(saved_model_dir(arch, root).resolve())

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    ours = load_causal_lm(adapter_dir)
    with torch.no_grad():
        for other in (merged, with_adapter, ours):
            torch.testing.assert_close(forward_logits(other, ids, mask), live, atol=1e-5, rtol=1e-5)
    # the live model still has its adapters after a merged save
    assert hasattr(model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, ids, mask), live, atol=0, rtol=0)


def test_adapter_folder_loads_trainable_or_merged(adapted, tmp_path):
    model, _, ids, mask = adapted["qwen2"]
    folder = save_policy(model, tmp_path / "adapter", merge=False)
    trainable = load_causal_lm(folder, adapter_trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    merged = load_causal_lm(folder, merge_adapter=True)
    assert not hasattr(merged, "peft_config")
    response = mask.clone()
    response[:, :2] = 0
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(merged, ids, mask), forward_logits(model, ids, mask),
                                   atol=1e-5, rtol=1e-5)
        # the span-sliced log-prob path (logits_to_keep) goes through the PEFT wrapper too
        torch.testing.assert_close(response_logprobs(model, ids, mask, response, 0.9),
                                   response_logprobs(merged, ids, mask, response, 0.9), atol=1e-5, rtol=1e-5)


def test_lora_reward_model_trains_its_head_and_saves_merged(root, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.reward import reward_model_from_causal_lm, save_scalar_model

    reward, tok = reward_model_from_causal_lm(saved_model_dir("llama", root))
    ids, mask = pad_batch(encode("llama"), tok.pad_token_id, "right")
    with torch.no_grad():
        base_scores = score_sequences(reward, ids, mask)
    model = apply_lora(reward, LoraSettings(r=4))
    assert any(p.requires_grad for n, p in model.named_parameters() if "score" in n)  # head trains in full
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        score_sequences(model, ids, mask).sum().backward()
        optimizer.step()
    with torch.no_grad():
        trained = score_sequences(model, ids, mask)
        with adapters_disabled(model):
            torch.testing.assert_close(score_sequences(model, ids, mask), base_scores, atol=1e-6, rtol=0)
    assert (trained - base_scores).abs().max() > 1e-3
    folder = save_scalar_model(model, tok, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits[:, 0], trained,
                                   atol=1e-5, rtol=1e-5)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="lora.r"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="lora.dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ValueError, match="lora.bias"):
        LoraSettings(bias="some")
