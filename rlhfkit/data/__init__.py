"""Data: row formats and validation, rankings, chat templates, tokenization, collators.

Everything but the collators is torch-free; the collator names are imported lazily on first use, so
``import rlhfkit.data`` (and ``rlhfkit.data.formats``, which the annotation app uses) never imports torch.
See ``docs/data-formats.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhfkit.data.encode import (
    IGNORE_INDEX,
    EncodedGroup,
    EncodedPreference,
    EncodedPrompt,
    EncodedSFT,
    EncodeReport,
    encode_groups,
    encode_pair,
    encode_preference,
    encode_prompt,
    encode_sft,
    format_encode_report,
    special_prefix_ids,
)
from rlhfkit.data.formats import DataValidationError, LoadResult, load_rows, write_rows
from rlhfkit.data.rankings import (
    ComparisonGroup,
    group_preferences_by_prompt,
    n_pairs,
    preference_rows_from_rankings,
    ranking_groups,
    ranking_pairs,
)
from rlhfkit.data.rows import (
    ROLES,
    Message,
    PreferenceRow,
    Prompt,
    PromptRow,
    RankingRow,
    Response,
    Row,
    SFTRow,
    row_to_dict,
)
from rlhfkit.data.templates import (
    DEFAULT_CHAT_TEMPLATE,
    RAW,
    TemplateError,
    render_conversation,
    render_prompt,
    split_conversation,
)
from rlhfkit.data.validate import KINDS, POLICIES

_LAZY = {  # name -> module; these import torch
    "collate_sft": "rlhfkit.data.collate",
    "collate_prompts": "rlhfkit.data.collate",
    "collate_preference": "rlhfkit.data.collate",
    "collate_groups": "rlhfkit.data.collate",
    "length_grouped_batches": "rlhfkit.data.collate",
    "pad": "rlhfkit.data.collate",
    "pad_token_id_for": "rlhfkit.data.collate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlhfkit.data' has no attribute {name!r}")


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "KINDS",
    "POLICIES",
    "RAW",
    "ROLES",
    "ComparisonGroup",
    "DataValidationError",
    "EncodeReport",
    "EncodedGroup",
    "EncodedPreference",
    "EncodedPrompt",
    "EncodedSFT",
    "LoadResult",
    "Message",
    "PreferenceRow",
    "Prompt",
    "PromptRow",
    "RankingRow",
    "Response",
    "Row",
    "SFTRow",
    "TemplateError",
    "encode_groups",
    "encode_pair",
    "encode_preference",
    "encode_prompt",
    "encode_sft",
    "format_encode_report",
    "group_preferences_by_prompt",
    "load_rows",
    "n_pairs",
    "preference_rows_from_rankings",
    "ranking_groups",
    "ranking_pairs",
    "render_conversation",
    "render_prompt",
    "row_to_dict",
    "special_prefix_ids",
    "split_conversation",
    "write_rows",
    *_LAZY,
]
