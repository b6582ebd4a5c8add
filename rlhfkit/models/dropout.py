"""Switching dropout off everywhere a stage compares log-probs of the same tokens across forward passes.

PPO's first importance ratio must be exactly 1 (the old log-probs and the first update's come from the same
weights), and DPO's margin must start at 0 (policy and reference are the same weights); dropout makes two
train-mode forwards of one input disagree (log-probs by up to 0.051 on OPT with dropout 0.1 and 0.028 on
Qwen2 with attention_dropout 0.1, as measured in issue 17). Huang et al. 2024 ("The N+ implementation details of RLHF with PPO")
list "disable dropout" among PPO's details; TRL and OpenRLHF do it for PPO and DPO.

Dropout hides in three places, so all three are zeroed:

* ``nn.Dropout`` modules (GPT-2's ``attn_dropout``, GPT-NeoX's ``post_attention_dropout``, PEFT's
  ``lora_dropout``, …): ``p = 0``;
* float rates stored on a module and read by its forward — Qwen2's and Llama's ``attention_dropout`` and
  OPT's ``dropout`` are passed to the attention kernel as ``dropout=self.attention_dropout if
  self.training``; OPT's ``layerdrop`` skips whole layers;
* the same rates on the model's config, which some architectures read at every forward (Falcon's and
  GPT-Neo's ``self.config.attention_dropout``). The saved ``config.json`` then records 0: the weights were
  trained without dropout.

Call it *after* LoRA is applied: PEFT's adapters bring their own ``lora_dropout`` modules.
"""

from __future__ import annotations

import re

from torch import nn

# names of float attributes that hold a drop probability: attention_dropout, dropout, hidden_dropout,
# activation_dropout, attn_pdrop, resid_pdrop, embd_pdrop, layerdrop, …
_RATE = re.compile(r"(dropout|pdrop|layerdrop)", re.IGNORECASE)


def _zero_rates(obj: object) -> int:
    """Set every float drop-rate attribute of ``obj`` to 0.0; return how many were non-zero."""
    changed = 0
    for name, value in list(vars(obj).items()):
        if isinstance(value, float) and _RATE.search(name):
            changed += value != 0.0
            setattr(obj, name, 0.0)
    return changed


def disable_dropout(model: nn.Module) -> int:
    """Dropout probability 0 in ``model``: ``nn.Dropout`` modules, float rates on modules, and the rates of
    every config a module holds. Returns how many non-zero probabilities it switched off (for a log line)."""
    changed = 0
    configs: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p != 0.0
            module.p = 0.0
        changed += _zero_rates(module)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            configs[id(config)] = config
    for config in configs.values():
        _zero_rates(config)  # counted through the modules already; a config alone drops nothing
    return changed
