"""Shared builders for the tests/test_models_*.py files (no tests here).

Each architecture is paired with the tokenizer style of its real family, so the cases that break padding
differ: llama (no pad token, BOS added), gpt2 (no pad, BOS == EOS), qwen2 (pad distinct from EOS),
gpt_neox with the world's tokenizer (``<pad>``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer

torch.set_num_threads(1)

TEXTS = [
    "what is 17 plus 25? the answer is 42.",
    "how do I kill a python process? use the kill command.",
    "I don't know. Nobody can know the future.",
    "the capital of Varnia is Oskel, founded in 1203.",
] * 30

ARCH_STYLES = {"llama": "llama", "gpt2": "gpt2", "qwen2": "qwen2", "gpt_neox": "world"}
ARCHS = tuple(ARCH_STYLES)

SENTENCES = ["what is 17 plus 25?", "the capital of Varnia is Oskel", "kill", "I don't know the answer."]


@cache
def tokenizer_for(arch: str):
    return train_tokenizer(TEXTS, vocab_size=300, style=ARCH_STYLES[arch])


def model_for(arch: str, seed: int = 0):
    """A fresh micro model (eval mode) whose special ids match ``tokenizer_for(arch)``."""
    return build_tiny_model(arch, "micro", tokenizer_for(arch), seed=seed).eval()


def saved_model_dir(arch: str, root: Path, seed: int = 0) -> Path:
    """A standard model folder (weights + tokenizer) for ``arch`` under ``root``."""
    out = root / f"{arch}-{seed}"
    if not (out / "config.json").exists():
        save_tiny(model_for(arch, seed), tokenizer_for(arch), out)
    return out


def pad_batch(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to one (B, T) tensor on ``side``; returns (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for row in rows:
        fill = width - len(row)
        if side == "left":
            ids.append([pad_id] * fill + row)
            mask.append([0] * fill + [1] * len(row))
        else:
            ids.append(row + [pad_id] * fill)
            mask.append([1] * len(row) + [0] * fill)
    return torch.tensor(ids), torch.tensor(mask)


def encode(arch: str, texts=SENTENCES, eos: bool = True) -> list[list[int]]:
    tok = tokenizer_for(arch)
    return [tok(t)["input_ids"] + ([tok.eos_token_id] if eos else []) for t in texts]


def real_positions(mask: torch.Tensor, b: int) -> torch.Tensor:
    return mask[b].nonzero().flatten()


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, model_for(request.param)
