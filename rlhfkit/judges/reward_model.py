"""A judge backed by a reward model: the normalised score of ``prompt + response``.

The text is encoded exactly as the reward model saw its training pairs (:func:`rlhfkit.data.encode_pair`:
the chat template renders the prompt, the response follows and ends with one EOS), with the tokenizer
saved in the reward-model folder (it may carry a dedicated pad token, see :mod:`rlhfkit.models.reward`).
The score is ``gain · r + bias`` with the normalisation stored in the model config
(:func:`rlhfkit.models.heads.normalized_scores`), read at the last real token; padding never matters
because positions and the scored token come from the attention mask.

Works on any prompts — it is the judge for evaluation outside the built-in world. A judged text that
does not fit the model's positions keeps its last tokens (the response and its EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data import encode_pair
from rlhfkit.judges.base import outcome
from rlhfkit.models.heads import normalized_scores


class RewardModelJudge:
    """``score`` = normalised reward-model score; ``compare`` by score with ``tie_margin`` (identical text ties).

    ``model``: a reward model (``*ForSequenceClassification``, ``num_labels=1``) in memory; ``tokenizer``:
    the reward model's. ``batch_size`` rows per forward in :meth:`score_batch`.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, tie_margin: float = 0.0,
                 template: str | None = None, name: str = "reward") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.tie_margin = float(tie_margin)
        self.template = template
        self.name = name
        config = model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @classmethod
    def from_folder(cls, path: str | Path, *, dtype=None, **kwargs) -> RewardModelJudge:
        """Load a reward-model folder saved by :func:`rlhfkit.models.reward.save_scalar_model`."""
        from rlhfkit.models.reward import load_reward_model

        model, tokenizer = load_reward_model(path, dtype)
        kwargs.setdefault("name", f"reward:{path}")
        return cls(model, tokenizer, **kwargs)

    def encode(self, prompt: Any, response: str) -> list[int]:
        """Token ids of ``prompt + response + EOS`` as the reward model reads them (see module docstring)."""
        prompt_ids, response_ids = encode_pair(self.tokenizer, prompt, response, template=self.template)
        ids = prompt_ids + response_ids
        if self.max_positions is not None and len(ids) > self.max_positions:
            ids = ids[-self.max_positions :]
        return ids

    def score_batch(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Normalised scores of ``responses[i]`` after ``prompts[i]``; batched, shortest rows together."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rows = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores: list[float] = [0.0] * len(rows)
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(rows[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # right padding: the scored token is the last real one
                ids[row, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[row, : len(rows[i])] = 1
            with torch.inference_mode():
                values = normalized_scores(self.model, ids.to(device), mask.to(device))  # (B,)
            for i, value in zip(chunk, values.tolist()):
                scores[i] = float(value)
        return scores

    def score(self, prompt: Any, response: str) -> float:
        return self.score_batch([prompt], [response])[0]

    def compare(self, prompt: Any, a: str, b: str) -> str:
        if a == b:
            return "tie"
        score_a, score_b = self.score_batch([prompt, prompt], [a, b])
        return outcome(score_a, score_b, self.tie_margin)
