"""Best-of-N sampling: a "policy" that draws N responses from a model and keeps the one a judge scores highest.

The classic baseline for RLHF (Stiennon et al. 2020; Nakano et al. 2021): no training, just the reward
model as a filter at inference time, N times the sampling cost. Its distance from the sampling policy π
has a closed form that needs no model: for a continuous score without ties,

    KL(π_BoN ‖ π) = log N − (N − 1) / N      (:func:`best_of_n_kl`)

in nats per sequence, an upper bound when scores tie (Beirami et al. 2024). Report it as the best-of-N
policy's KL; a token-level estimate is impossible because π_BoN has no per-token distribution.

Output sample j of prompt i is the best of candidates ``j·N … j·N + N − 1`` of that prompt; the first
maximum wins a tie, so the choice is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit.evaluate.sampling import PolicySamples, sample_policy
from rlhfkit.judges.base import score_nested


def best_of_n_kl(n: int) -> float:
    """``log n − (n − 1)/n``: KL(best-of-n ‖ π) in nats per sequence (0 for n = 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    """The picks and everything they were picked from."""

    samples: PolicySamples  # the picks, ``n_samples`` per prompt (texts only: no per-token policy)
    scores: list[list[float]]  # judge score of each pick
    candidates: PolicySamples  # ``n · n_samples`` candidates per prompt, with tokens
    candidate_scores: list[list[float]]
    n: int

    @property
    def texts(self) -> list[list[str]]:
        return self.samples.texts

    @property
    def kl(self) -> float:
        """:func:`best_of_n_kl` of ``n``."""
        return best_of_n_kl(self.n)


def pick_best(candidate_scores: Sequence[Sequence[float]], n: int, n_samples: int) -> list[list[int]]:
    """Index of the winning candidate for each (prompt, output sample): argmax over each block of ``n``."""
    picks = []
    for scores in candidate_scores:
        if len(scores) != n * n_samples:
            raise ValueError(f"expected {n * n_samples} candidates per prompt, got {len(scores)}")
        row = []
        for j in range(n_samples):
            block = range(j * n, (j + 1) * n)
            row.append(max(block, key=lambda k: (scores[k], -k)))  # the first maximum
        picks.append(row)
    return picks


def best_of_n(model, tokenizer, judge, prompts: Sequence[Any], n: int, n_samples: int = 1, *, seed: int,
              max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
              batch_size: int | None = 64, template: str | None = None,
              candidates: PolicySamples | None = None) -> BestOfN:
    """Best of ``n`` samples of ``model``, ``n_samples`` times per prompt, by ``judge`` (e.g. a reward model).

    ``candidates``: previously drawn samples with ``n · n_samples`` per prompt to pick from instead of
    sampling (then ``model`` may be None). The judge scores all candidates in one ``score_batch`` call.
    """
    if n < 1 or n_samples < 1:
        raise ValueError(f"n and n_samples must be >= 1, got n={n}, n_samples={n_samples}")
    if candidates is None:
        candidates = sample_policy(model, tokenizer, prompts, n * n_samples, seed=seed,
                                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   batch_size=batch_size, template=template)
    elif candidates.n_samples != n * n_samples:
        raise ValueError(f"candidates hold {candidates.n_samples} samples per prompt; need n · n_samples = "
                         f"{n * n_samples}")
    candidate_scores = score_nested(judge, candidates.prompts, candidates.texts)
    picks = pick_best(candidate_scores, n, n_samples)
    texts = [[candidates.texts[i][k] for k in row] for i, row in enumerate(picks)]
    scores = [[candidate_scores[i][k] for k in row] for i, row in enumerate(picks)]
    picked = PolicySamples.from_texts(candidates.prompts, texts)
    picked.seed, picked.max_new_tokens = candidates.seed, candidates.max_new_tokens
    return BestOfN(picked, scores, candidates, candidate_scores, n)


def best_of_n_responses(model, tokenizer, reward_judge, prompts: Sequence[Any], n: int, n_samples: int = 1, *,
                        seed: int, **kwargs) -> list[list[str]]:
    """Texts only: ``best_of_n(...).texts`` (``[prompt][sample]``)."""
    return best_of_n(model, tokenizer, reward_judge, prompts, n, n_samples, seed=seed, **kwargs).texts
