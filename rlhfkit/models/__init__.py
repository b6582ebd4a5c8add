"""Models: loading local folders, padding-safe forwards, reward/value heads, LoRA, policy log-probs.

===========  ==============================================================================
module       what
===========  ==============================================================================
load         ``load_causal_lm``, ``load_tokenizer``, ``ModelLoadError`` (offline, one-sentence errors)
forward      ``position_ids_from_mask``, ``forward_logits``, ``last_token_index``
heads        ``score_sequences``, ``token_values``, score normalisation, ``PolicyWithValueHead``
reward       ``reward_model_from_causal_lm``, ``load_reward_model``, ``value_model_from_reward_model``
lora         ``LoraSettings``, ``apply_lora``, ``adapters_disabled``, ``reference_logits``, ``save_policy``
policy       ``response_logprobs``, ``response_logprobs_and_entropy``, ``values_for_actions``
tiny         tiny tokenizers and models built from configs
===========  ==============================================================================

Names are re-exported lazily, so ``import rlhfkit.models.tiny`` does not import transformers eagerly.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": ["ModelLoadError", "load_causal_lm", "load_tokenizer", "is_adapter_folder", "read_model_config",
             "resolve_dtype"],
    "forward": ["position_ids_from_mask", "last_token_index", "forward_logits", "trunk_hidden_states",
                "unwrap_model"],
    "heads": ["score_sequences", "token_values", "set_score_normalization", "get_score_normalization",
              "normalized_scores", "normalization_from_scores", "PolicyWithValueHead", "init_scalar_head",
              "reward_head_init_std"],
    "reward": ["reward_model_from_causal_lm", "load_reward_model", "load_value_model",
               "value_model_from_reward_model", "save_scalar_model", "reward_tokenizer"],
    "lora": ["LoraSettings", "apply_lora", "adapters_disabled", "reference_logits", "save_policy",
             "is_peft_model", "trainable_parameter_count"],
    "policy": ["response_logprobs", "response_logprobs_and_entropy", "values_for_actions",
               "policy_value_outputs", "response_span"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhfkit.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlhfkit.models.{module}"), name)
