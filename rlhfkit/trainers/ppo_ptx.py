"""PPO-ptx: the demonstrations' language-modelling term InstructGPT mixes into every PPO update.

InstructGPT's objective (Ouyang et al. 2022, Eq. 2) adds ``γ · E_{x ~ D_pretrain}[log π(x)]`` to the
KL-penalised reward: the policy keeps assigning likelihood to text it should still be able to write, which
is what stopped its PPO models regressing on public NLP tasks (the "alignment tax"). Here the text is any
``{"prompt", "response"}`` file — on the built-in world, the SFT demonstrations — and the term is the mean
negative log-likelihood of the response tokens (temperature 1: it is a language-modelling loss, not the
sampling distribution), ``γ · NLL``, added to each optimizer update's loss.

Which demonstrations an update sees is a pure function of the update's number (a fresh seeded permutation
per pass over the file), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rlhfkit.data import encode_sft, format_encode_report, load_rows
from rlhfkit.data.collate import pad
from rlhfkit.data.encode import EncodedSFT
from rlhfkit.data.order import derive_seed
from rlhfkit.engine.metrics_log import say
from rlhfkit.ops import masked_mean


def demonstration_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``−Σ mask·log π(y_t | x, y_<t) / Σ mask``: mean NLL per response token over the batch.

    logprobs, mask: (B, T), action-aligned response log-probs at temperature 1 and the response mask.
    Returns a scalar (every token weighs the same, whichever row it is in)."""
    return -masked_mean(logprobs, mask)


@dataclass
class PtxBatches:
    """The demonstrations, served ``batch_size`` at a time by update number."""

    examples: list[EncodedSFT]
    batch_size: int
    seed: int
    pad_token_id: int

    def indices(self, update: int) -> list[int]:
        """Example indices of update ``update`` (0-based): positions ``update·b … update·b + b − 1`` of the
        endless stream made of one seeded permutation of the file per pass."""
        n, orders, out = len(self.examples), {}, []
        for position in range(update * self.batch_size, (update + 1) * self.batch_size):
            epoch, offset = divmod(position, n)
            if epoch not in orders:  # an update spans at most a few passes: shuffle each once
                orders[epoch] = list(range(n))
                random.Random(derive_seed(self.seed, "ptx", epoch)).shuffle(orders[epoch])
            out.append(orders[epoch][offset])
        return out

    def batch(self, update: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(query_ids, query_mask, response_ids, response_mask)``: prompts left-padded, responses
        right-padded, as the actor-critic's forward takes a rollout."""
        chosen = [self.examples[i] for i in self.indices(update)]
        query_ids, query_mask = pad([e.prompt_ids for e in chosen], self.pad_token_id, "left")
        response_ids, response_mask = pad([e.response_ids for e in chosen], self.pad_token_id, "right")
        return query_ids, query_mask, response_ids, response_mask


def load_ptx(cfg, tokenizer) -> PtxBatches | None:
    """The run's :class:`PtxBatches` (None when ``ptx.coef`` is 0); rows validated and encoded up front."""
    if not cfg.ptx.coef:
        return None
    loaded = load_rows(cfg.ptx.data_file, "sft", empty=cfg.data.empty)
    examples, report = encode_sft(tokenizer, loaded.rows, max_length=cfg.data.max_length,
                                  max_prompt_length=cfg.data.max_prompt_length, template=cfg.data.template)
    say(format_encode_report(report, f"ptx {cfg.ptx.data_file}"))
    say(f"ptx: γ = {cfg.ptx.coef} × NLL of {len(examples)} demonstrations, {cfg.ptx.batch_size} per update")
    return PtxBatches(examples, cfg.ptx.batch_size, cfg.train.seed, tokenizer.pad_token_id)
