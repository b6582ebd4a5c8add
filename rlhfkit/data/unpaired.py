"""Unpaired feedback rows (KTO): one response and a binary label, TRL's *unpaired preference* format.

    {"prompt": "…", "completion": "…", "label": true}     # a good (desirable) response
    {"prompt": "…", "completion": "…", "label": false}    # a bad (undesirable) one

``prompt`` is text or the conversation so far and ``completion`` text or the assistant turn(s), exactly as
``prompt`` / ``chosen`` of a preference row; ``label`` must be a JSON boolean (``1``, ``"true"`` or
``null`` are refused: a label silently read the wrong way round trains the opposite behaviour). This is
the cheapest feedback to collect — a thumbs up or down — and the one the annotation app's ``thumbs``
task exports (``unpaired.{train,eval}.jsonl``).

A preference pair holds two such labels: :func:`unpaired_from_preferences` turns ``(x, y_w, y_l)`` into
``(x, y_w, true)`` and ``(x, y_l, false)`` (as TRL's ``unpair_preference_dataset``), which is how KTO is
compared with DPO on the same labels.

Standard library only (the app uses it); validation reuses ``formats`` / ``validate``: every problem is
one sentence naming the file, the line and the field, all listed, before any work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.data.formats import DataValidationError, LoadResult, Policy, _apply_policies, finish_load
from rlhfkit.data.rows import PreferenceRow, Prompt, Response, _value_to_json
from rlhfkit.data.sources import SourceError, Unreadable, open_source
from rlhfkit.data.validate import POLICIES, RowChecker, check_prompt, check_response, json_type

KIND = "unpaired"
KEYS = frozenset({"prompt", "completion", "label"})


@dataclass(frozen=True)
class UnpairedRow:
    """One response to ``prompt`` labelled good (``label`` true: desirable) or bad (false: undesirable)."""

    prompt: Prompt
    completion: Response
    label: bool
    origin: str = field(default="", compare=False)

    @property
    def response(self) -> Response:
        """The completion, under the name the SFT encoder reads (see :func:`encode_unpaired`)."""
        return self.completion


def unpaired_row_to_dict(row: UnpairedRow) -> dict[str, Any]:
    """The JSON object of ``row`` (without ``origin``); :func:`load_unpaired_rows` reads it back equal."""
    return {"prompt": _value_to_json(row.prompt), "completion": _value_to_json(row.completion),
            "label": bool(row.label)}


def parse_unpaired(checker: RowChecker, obj: Any) -> UnpairedRow | None:
    """The typed row of one decoded JSON object, or None when it has an error (all recorded in ``checker``)."""
    if not isinstance(obj, Mapping):
        checker.add(None, f"expected a JSON object, got {json_type(obj)}")
        return None
    missing = [key for key in ("prompt", "completion", "label") if key not in obj]
    for key in missing:
        keys = ", ".join(f'"{k}"' for k in obj) or "none"
        checker.add(key, f"missing (the row has keys {keys})")
    prompt = check_prompt(checker, obj["prompt"]) if "prompt" in obj else None
    completion = check_response(checker, obj["completion"], "completion") if "completion" in obj else None
    label = obj.get("label")
    if "label" in obj and not isinstance(label, bool):
        checker.add("label", f"expected true (good) or false (bad), got {json_type(label)}")
        return None
    if prompt is None or completion is None or missing or checker.n_errors:
        return None
    return UnpairedRow(prompt, completion, label, checker.where)


def load_unpaired_rows(source: Any, *, empty: Policy = "error", name: str | None = None) -> LoadResult:
    """Read and validate every unpaired row of ``source`` (a JSON Lines path, a ``datasets.Dataset`` or a
    list of dicts), as :func:`rlhfkit.data.load_rows` does for the other kinds: one
    :class:`DataValidationError` listing every problem, or the rows (``LoadResult.kind == "unpaired"``).
    ``empty`` is the policy for empty or whitespace-only text (error / warn / drop). A file whose labels are
    all one value still loads: KTO can learn from desirable or undesirable examples alone (§ 4.2).
    """
    if empty not in POLICIES:
        raise ValueError(f"empty={empty!r} is not a policy; valid: {', '.join(POLICIES)}")
    try:
        opened = open_source(source, name)  # any file or dataset load_rows reads (JSON Lines, Parquet, CSV, …)
    except SourceError as exc:
        raise DataValidationError([exc.sentence], exc.display) from None
    display = opened.display
    if opened.columns:
        _check_columns(opened.columns, display)
    result = LoadResult(rows=[], kind=KIND, source=display, n_read=0, n_blank_lines=opened.n_blank_lines)
    problems: list[str] = []
    ignored: Counter[str] = Counter()
    for where, obj in opened.records:
        result.n_read += 1
        if isinstance(obj, Unreadable):
            problems.append(obj.sentence)
            continue
        checker = RowChecker(where)
        row = parse_unpaired(checker, obj)
        if isinstance(obj, Mapping):
            ignored.update(k for k in obj if k not in KEYS)
        _apply_policies(checker, row, {"empty": empty}, result, problems)
    result.ignored_keys = dict(ignored)
    return finish_load(result, problems, display)


def _check_columns(columns: list[str], display: str) -> None:
    """A column missing from the whole table (a dataset, Parquet, CSV) is one problem, not one per row."""
    missing = [c for c in ("prompt", "completion", "label") if c not in columns]
    if missing:
        have = ", ".join(f'"{c}"' for c in columns) or "none"
        raise DataValidationError([f'{display}, column "{c}": missing (the columns are {have}).' for c in missing],
                                  display)


def unpaired_from_preferences(rows: Sequence[PreferenceRow]) -> list[UnpairedRow]:
    """Each pair ``(x, y_w, y_l)`` as two unpaired rows, ``(x, y_w, true)`` then ``(x, y_l, false)``: the
    same labels, without the pairing (so ``2·len(rows)`` rows, half of each label)."""
    out: list[UnpairedRow] = []
    for row in rows:
        out.append(UnpairedRow(row.prompt, row.chosen, True, f"{row.origin} (chosen)" if row.origin else ""))
        out.append(UnpairedRow(row.prompt, row.rejected, False, f"{row.origin} (rejected)" if row.origin else ""))
    return out


def label_counts(rows: Sequence[UnpairedRow]) -> tuple[int, int]:
    """``(n_desirable, n_undesirable)``."""
    n_good = sum(1 for r in rows if r.label)
    return n_good, len(rows) - n_good


def encode_unpaired(tokenizer: Any, rows: Sequence[UnpairedRow], *, max_length: int | None = None,
                    max_prompt_length: int | None = None, template: str | None = None):
    """``(encoded, labels, report)``: each row tokenized exactly like an SFT row (prompt/completion boundary,
    one EOS, the same truncation), ``labels[i]`` the label of ``encoded[i]`` (dropped rows are skipped)."""
    from rlhfkit.data.encode import encode_sft

    encoded, report = encode_sft(tokenizer, rows, max_length=max_length, max_prompt_length=max_prompt_length,
                                 template=template)
    return encoded, [rows[e.index].label for e in encoded], report


__all__ = [
    "KIND",
    "DataValidationError",
    "UnpairedRow",
    "encode_unpaired",
    "label_counts",
    "load_unpaired_rows",
    "parse_unpaired",
    "unpaired_from_preferences",
    "unpaired_row_to_dict",
]
