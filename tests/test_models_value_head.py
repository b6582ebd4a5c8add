"""PolicyWithValueHead: one forward gives the policy's logits and the values; saved as a standard folder."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.models.forward import forward_logits, trunk_hidden_states
from rlhfkit.models.heads import VALUE_HEAD_WEIGHTS, PolicyWithValueHead
from rlhfkit.models.load import ModelLoadError, load_causal_lm
from rlhfkit.models.lora import LoraSettings, adapters_disabled, apply_lora
from rlhfkit.models.policy import policy_value_outputs, response_logprobs_and_entropy, values_for_actions

try:
    from test_models_common import ARCHS, encode, pad_batch, saved_model_dir
except ImportError:  # tests/ imported as a package
    from tests.test_models_common import ARCHS, encode, pad_batch, saved_model_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("policy_value")


def _rollout_batch(arch):
    rows = encode(arch)
    ids, mask = pad_batch(rows, pad_id=0, side="left")
    response = torch.zeros_like(mask)
    for b, row in enumerate(rows):  # the second half of each row is its response
        response[b, ids.shape[1] - len(row) + max(1, len(row) // 2):] = 1
    return ids, mask, response


def test_value_head_starts_at_zero_like_lm_human_preferences(root):
    model = PolicyWithValueHead(load_causal_lm(saved_model_dir("llama", root)))
    ids, mask, _ = _rollout_batch("llama")
    with torch.no_grad():
        _, values = model(ids, mask)
    assert torch.all(values == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_forward_matches_separate_policy_and_trunk_passes(arch, root):
    policy = load_causal_lm(saved_model_dir(arch, root))
    model = PolicyWithValueHead(policy, head_init_std=0.5, seed=1)
    ids, mask, response = _rollout_batch(arch)
    with torch.no_grad():
        logits, values = model(ids, mask)
        torch.testing.assert_close(logits, forward_logits(policy, ids, mask))
        hidden = trunk_hidden_states(policy, ids, mask)
        torch.testing.assert_close(values, model.value_head(hidden).squeeze(-1))
        logprobs, entropy, action_values = policy_value_outputs(model, ids, mask, response, temperature=0.8)
        expected_lp, expected_h = response_logprobs_and_entropy(policy, ids, mask, response, temperature=0.8)
    torch.testing.assert_close(logprobs, expected_lp)
    torch.testing.assert_close(entropy, expected_h)
    torch.testing.assert_close(action_values, values_for_actions(values, response))
    assert torch.all(action_values[response == 0] == 0) and action_values[response == 1].abs().sum() > 0


def test_gradients_reach_the_value_head_and_the_trunk(root):
    model = PolicyWithValueHead(load_causal_lm(saved_model_dir("gpt2", root)), head_init_std=0.1)
    ids, mask, response = _rollout_batch("gpt2")
    logprobs, _, values = policy_value_outputs(model, ids, mask, response)
    (logprobs.sum() + values.sum()).backward()
    assert model.value_head.weight.grad.abs().sum() > 0
    assert model.policy.transformer.wte.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_save_and_load_full_policy(arch, root, tmp_path):
    from transformers import AutoModelForCausalLM

    model = PolicyWithValueHead(load_causal_lm(saved_model_dir(arch, root)), head_init_std=0.3)
    ids, mask, _ = _rollout_batch(arch)
    folder = model.save_pretrained(tmp_path / "pv")
    assert (folder / VALUE_HEAD_WEIGHTS).is_file()
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()  # the policy folder is a standard one
    again = PolicyWithValueHead.from_pretrained(folder)
    with torch.no_grad():
        logits, values = model(ids, mask)
        again_logits, again_values = again(ids, mask)
        torch.testing.assert_close(forward_logits(plain, ids, mask), logits)
    torch.testing.assert_close(again_logits, logits)
    torch.testing.assert_close(again_values, values)


@pytest.mark.parametrize("merge", [True, False])
def test_save_and_load_lora_policy(merge, root, tmp_path):
    policy = apply_lora(load_causal_lm(saved_model_dir("llama", root)), LoraSettings(r=4))
    model = PolicyWithValueHead(policy, head_init_std=0.3)
    ids, mask, response = _rollout_batch("llama")
    with torch.no_grad():
        base_logits, base_values = model(ids, mask)  # LoRA's B starts at 0: the base policy
        for module in model.policy.modules():  # move the adapters off zero without training
            if hasattr(module, "lora_B"):
                module.lora_B["default"].weight.normal_(0, 0.1)
        logits, values = model(ids, mask)
        with adapters_disabled(model):
            reference_logits, reference_values = model(ids, mask)
    assert (reference_logits - logits).abs().max() > 1e-3
    torch.testing.assert_close(reference_logits, base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(reference_values, base_values, atol=1e-6, rtol=0)  # values read the base trunk
    folder = model.save_pretrained(tmp_path / "pv", merge=merge)
    assert (folder / "adapter_config.json").is_file() == (not merge)
    again = PolicyWithValueHead.from_pretrained(folder)
    with torch.no_grad():
        again_logits, again_values = again(ids, mask)
    torch.testing.assert_close(again_logits, logits, atol=5e-5, rtol=1e-5)  # merging rounds
    torch.testing.assert_close(again_values, values, atol=1e-5, rtol=1e-5)


def test_loading_a_policy_without_value_head_is_a_clear_error(root):
    with pytest.raises(ModelLoadError, match="has no value_head.safetensors"):
        PolicyWithValueHead.from_pretrained(saved_model_dir("llama", root))
