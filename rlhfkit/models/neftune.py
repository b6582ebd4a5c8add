"""NEFTune: uniform noise on the input embeddings while fine-tuning (Jain et al. 2023, "NEFTune: Noisy
Embeddings Improve Instruction Finetuning", Algorithm 1).

While the model trains, each input embedding tensor ``X`` of shape (B, L, d) becomes
``X + ε · α / √(L·d)`` with ``ε ~ Uniform(−1, 1)`` elementwise. ``L`` is the row length as the model sees
it (padded or packed), as transformers' ``neftune_noise_alpha`` does. Evaluation and generation (module in
eval mode) see clean embeddings. The noise comes from torch's global generator, which the training loop
checkpoints, so a resumed run draws the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def neftune_scale(alpha: float, seq_len: int, dim: int) -> float:
    """The noise bound α / √(L·d) of Algorithm 1."""
    return alpha / math.sqrt(seq_len * dim)


def add_neftune_noise(embeddings: torch.Tensor, alpha: float) -> torch.Tensor:
    """``embeddings`` (B, L, d) plus Uniform(−s, s) noise, s = :func:`neftune_scale` (α, L, d)."""
    bound = neftune_scale(alpha, embeddings.shape[-2], embeddings.shape[-1])
    return embeddings + torch.empty_like(embeddings).uniform_(-bound, bound)


@contextmanager
def neftune(model: torch.nn.Module, alpha: float) -> Iterator[None]:
    """Within the block, ``model``'s input embeddings are noised whenever the embedding module is training.
    ``alpha`` 0 does nothing. The hook is removed on exit, so the saved or returned model is clean."""
    if alpha <= 0:
        yield
        return
    embedding = model.get_input_embeddings()

    def hook(module: torch.nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return add_neftune_noise(output, alpha) if module.training else output

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
