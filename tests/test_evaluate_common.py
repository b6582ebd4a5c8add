"""Shared builders for tests/test_evaluate_*.py and tests/test_judges_*.py (no tests here).

Micro Llama policies on a byte-level tokenizer trained on the built-in world's vocabulary and eval
prompts (the world's tokenizer style: ``</s>`` EOS, ``<pad>``, role tokens), so prompts render with the
world's chat template, and a bigram "model" whose sequence KL can be enumerated exactly.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer
from rlhfkit.worlds import World

torch.set_num_threads(1)


@cache
def world():
    return World.build(0)


@cache
def world_tokenizer():
    w = world()
    texts = [" ".join(w.vocabulary())] * 2 + [p.text for p in w.eval_prompts]
    texts += ["the answer is 12.", "sorry, i cannot help with that.", "i do not know."] * 5
    return train_tokenizer(texts, vocab_size=600, style="world")


def micro_policy(seed: int = 0, logit_scale: float = 1.0):
    """A random micro Llama whose vocabulary is the world tokenizer's; ``logit_scale`` sharpens it."""
    model = build_tiny_model("llama", "micro", world_tokenizer(), seed=seed).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    return model


def saved_policy(root: Path, seed: int = 0) -> Path:
    out = root / f"policy-{seed}"
    if not (out / "config.json").exists():
        save_tiny(micro_policy(seed), world_tokenizer(), out)
    return out


def some_world_prompts(per_family: int = 2) -> list[str]:
    w = world()
    families = ("helpful", "harmful", "benign", "unanswerable", "sycophancy")
    return [p.text for f in families for p in w.prompts("eval", f)[:per_family]]


class BigramLM(nn.Module):
    """A "causal LM" whose next-token logits depend only on the current token: ``logits[t] = table[x_t]``.

    Enough context dependence for a sequence KL that is not a sum of identical terms, and small enough to
    enumerate every sequence. Implements the forward signature :func:`rlhfkit.models.forward_logits` uses.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone().float(), requires_grad=False)  # (V, V)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)
