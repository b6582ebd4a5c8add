"""The preference trainer's data: rows read and validated, encoded, and collated into batches.

Pair losses read ``{"prompt","chosen","rejected"}`` rows (or rankings, flattened into their pairs). KTO reads
unpaired rows ``{"prompt","completion","label"}`` (``rlhfkit.data.unpaired``), or pairs turned into two
unpaired rows each. Every KTO example is encoded with a *mismatched* completion — that of another example,
chosen once by a seeded permutation — so that its two rows take the places of a pair's chosen and rejected
rows: the collator, the shared-prompt rows and the reference cache treat both kinds alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.trainers.reference_cache import ReferenceLogps


@dataclass
class EncodedKTO:
    """One unpaired example ``(x, y, desirable)`` and the mismatched completion y' of another prompt.

    ``chosen_ids`` is y and ``rejected_ids`` is y' — the two rows of the preference collator, so the batch
    holds ``x + y`` (the labelled row) and ``x + y'`` (the KL-estimate row)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    desirable: bool
    index: int = 0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def mismatched_partners(prompts: list[list[int]], seed: int) -> list[int]:
    """For each example i, an example j ≠ i with another prompt whose completion estimates KL under prompt i.

    A seeded permutation σ, and j = the next example along σ whose prompt differs from i's (the next in σ if
    every prompt is the same). A pure function of (prompts, seed): the reference table stays valid on resume.
    Pairs turned into unpaired rows put one prompt's two completions side by side, so "the next row" alone
    would pair a completion with its own prompt.
    """
    n = len(prompts)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for k, i in enumerate(order):
        partners[i] = order[(k + 1) % n]
        for step in range(1, n):
            j = order[(k + step) % n]
            if prompts[j] != prompts[i]:
                partners[i] = j
                break
    return partners


def kto_examples(encoded: list, labels: list[bool], seed: int) -> list[EncodedKTO]:
    """Encoded unpaired rows (``EncodedSFT``) with their labels -> KTO examples with mismatched completions."""
    partners = mismatched_partners([e.prompt_ids for e in encoded], seed)
    return [EncodedKTO(e.prompt_ids, e.response_ids, encoded[j].response_ids, bool(good), e.index, e.origin)
            for e, good, j in zip(encoded, labels, partners, strict=True)]


@dataclass(frozen=True)
class Pair:
    """One encoded example and its position in the encoded list (the row of the reference table)."""

    position: int
    example: Any  # EncodedPreference or EncodedKTO

    def __len__(self) -> int:
        return len(self.example)


class PreferenceCollator:
    """Pairs -> one batch of 2B rows (``collate_preference``), or with ``shared_prompt`` B rows
    ``prompt + chosen + rejected`` (``collate_shared_prompt``: responses 2i and 2i+1 are pair i's chosen and
    rejected); plus ``ref_logps`` (2B,) from the table, in the batch's response order, and for KTO examples
    ``desirable`` (B,) bool."""

    def __init__(self, pad_token_id: int, table: ReferenceLogps | None = None, shared_prompt: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.table = table
        self.shared_prompt = shared_prompt

    def __call__(self, pairs: list[Pair]) -> dict[str, Any]:
        from rlhfkit.data.collate import collate_preference, collate_shared_prompt

        examples = [p.example for p in pairs]
        if not self.shared_prompt:
            batch = collate_preference(examples, pad_token_id=self.pad_token_id)
        else:
            batch = collate_shared_prompt([e.prompt_ids for e in examples],
                                          [[e.chosen_ids, e.rejected_ids] for e in examples],
                                          pad_token_id=self.pad_token_id)
            n = len(examples)
            batch.update(chosen_index=torch.arange(0, 2 * n, 2), rejected_index=torch.arange(1, 2 * n, 2),
                         pair_group=torch.arange(n), n_pairs=n)
        if isinstance(examples[0], EncodedKTO):
            batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)  # (B,)
        if self.table is not None:
            ref_logps = self.table.rows([p.position for p in pairs])  # (2B,) chosen rows, then rejected rows
            if self.shared_prompt:  # -> chosen_0, rejected_0, chosen_1, …: the shared batch's response order
                ref_logps = ref_logps.view(2, -1).t().reshape(-1)
            batch["ref_logps"] = ref_logps
        return batch


def read_rows(cfg, sources: dict[str, Any] | None = None) -> tuple[list, list]:
    """Every row of the train and eval data, validated (one sentence per problem naming file, line, field).
    ``sources``: split -> a path or in-memory rows (default: the configured files). For KTO: unpaired rows,
    read as such or made from the pairs."""
    from rlhfkit.data import load_rows, preference_rows_from_rankings
    from rlhfkit.data.unpaired import load_unpaired_rows, unpaired_from_preferences
    from rlhfkit.engine.stage_config import data_sources, source_name

    def read(split: str) -> list:
        if cfg.data_kind == "unpaired":
            return list(load_unpaired_rows(sources[split], empty=cfg.data.empty).rows)
        rows = load_rows(sources[split], cfg.data_kind, empty=cfg.data.empty, identical=cfg.data.identical,
                         columns=cfg.data.columns, transcripts=cfg.data.template != "raw",
                         name=source_name(sources[split], split)).rows
        rows = preference_rows_from_rankings(rows) if cfg.data_kind == "ranking" else list(rows)
        return unpaired_from_preferences(rows) if cfg.unpaired else rows

    sources = sources or data_sources(cfg.data)
    return read("train"), (read("eval") if "eval" in sources else [])


def encode_rows(cfg, tokenizer, rows: list, name: str) -> list:
    """Encoded pairs (``EncodedPreference``), or KTO examples (``EncodedKTO``) for an unpaired loss."""
    from rlhfkit.data import DataValidationError, TemplateError, encode_preference, format_encode_report
    from rlhfkit.data.order import derive_seed
    from rlhfkit.data.unpaired import encode_unpaired
    from rlhfkit.engine.metrics_log import say

    lengths = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length,
               "template": cfg.data.template}
    try:
        if cfg.unpaired:
            encoded, labels, report = encode_unpaired(tokenizer, rows, **lengths)
        else:
            examples, report = encode_preference(tokenizer, rows, **lengths)
    except TemplateError as exc:
        raise DataValidationError([str(exc)], f"{cfg.loss} {name} data") from None
    say(format_encode_report(report, f"{cfg.loss} {name}"))
    if not cfg.unpaired:
        return examples
    say(f"{cfg.loss} {name}: {sum(labels)} desirable and {len(labels) - sum(labels)} undesirable examples")
    return kto_examples(encoded, labels, derive_seed(cfg.train.seed, f"kto_mismatch_{name}"))


def examples_identity(examples: list) -> str:
    """Hash of the encoded examples (token ids, and the labels of KTO examples): what a resume must match."""
    import hashlib

    from rlhfkit.trainers.reference_cache import examples_fingerprint

    tokens = examples_fingerprint(examples)
    if not examples or not isinstance(examples[0], EncodedKTO):
        return tokens
    labels = "".join("1" if e.desirable else "0" for e in examples)
    return hashlib.sha256((tokens + labels).encode()).hexdigest()
