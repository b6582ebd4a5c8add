"""The four row kinds, loaded and validated before any work (standard library only).

Row kinds, in our own shape (the ecosystem's shapes of each kind: :mod:`rlhfkit.data.shapes`; the
sources rows come from: :mod:`rlhfkit.data.sources`; see ``docs/data-formats.md``):

==========  =====================================================================================
kind        JSON object per line
==========  =====================================================================================
sft         ``{"prompt", "response"}`` or ``{"messages": [{"role", "content"}, …]}`` (last: assistant)
preference  ``{"prompt", "chosen", "rejected"}`` — strings, or message lists (prompt = the
            conversation so far, chosen/rejected = the assistant turn(s))
ranking     ``{"prompt", "responses": [...], "ranking": [indices best→worst]}``
prompt      ``{"prompt"}``
==========  =====================================================================================

:func:`load_rows` reads a file, a ``datasets`` folder or name, a ``datasets.Dataset`` or a list of dicts,
checks every row and either returns typed rows or raises one :class:`DataValidationError` listing every
problem of the source, each as one sentence naming the file, the line (``row N`` for a table, a dataset
or a list, 0-based like ``dataset[N]``) and the field::

    data/prefs.jsonl line 7, field "chosen": empty text.

This module never imports torch; ``datasets`` and ``pyarrow`` only for the sources that need them — the
annotation app runs it on its exports.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.rows import (
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
from rlhfkit.data.shapes import column_problems, read_row, readable_names, usual_shape
from rlhfkit.data.sources import SourceError, Unreadable, open_source
from rlhfkit.data.validate import KINDS, POLICIES, RowChecker
from rlhfkit.errors import UserError

__all__ = [
    "KINDS",
    "MAX_LISTED_PROBLEMS",
    "POLICIES",
    "DataValidationError",
    "LoadResult",
    "Message",
    "Policy",
    "PreferenceRow",
    "Prompt",
    "PromptRow",
    "RankingRow",
    "Response",
    "Row",
    "SFTRow",
    "load_rows",
    "peek_keys",
    "row_to_dict",
    "write_rows",
]

logger = logging.getLogger("rlhfkit.data")

Policy = Literal["error", "warn", "drop"]
MAX_LISTED_PROBLEMS = 20


class DataValidationError(UserError):
    """Bad input data. ``problems`` holds every problem found, one sentence each; the message lists
    the first ``MAX_LISTED_PROBLEMS`` and the total count."""

    def __init__(self, problems: list[str], source: str = "the data", outcome: str = "nothing was loaded"):
        self.problems = list(problems)
        self.source = source
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''} found, {outcome}:"
        lines = [head, *(f"  {p}" for p in shown)]
        if count > len(shown):
            lines.append(f"  … and {count - len(shown)} more ({count} in all).")
        super().__init__("\n".join(lines))


@dataclass
class LoadResult:
    """What :func:`load_rows` returns: the valid rows plus an account of what was not kept as is."""

    rows: list[Row]
    kind: str
    source: str  # display name: the path as given, 'dataset "name"' or "<list>"
    n_read: int  # rows read (blank lines are skipped and not counted)
    n_dropped: int = 0  # rows dropped under empty="drop" / identical="drop"
    n_warned: int = 0  # rows kept despite a problem under empty="warn" / identical="warn"
    warnings: list[str] = field(default_factory=list)  # one sentence per problem of a kept row
    dropped: list[str] = field(default_factory=list)  # one sentence per problem of a dropped row
    ignored_keys: dict[str, int] = field(default_factory=dict)  # unknown key -> rows that had it
    n_blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def summary(self) -> str:
        """One line for logs, e.g. ``data/p.jsonl: 998 preference rows (1000 read, 2 dropped: …)``."""
        parts = [f"{self.n_read} read"]
        if self.n_dropped:
            parts.append(f"{self.n_dropped} dropped, first: {self.dropped[0].rstrip('.')}")
        if self.n_warned:
            parts.append(f"{self.n_warned} kept with warnings, first: {self.warnings[0].rstrip('.')}")
        if self.ignored_keys:
            keys = ", ".join(f'"{k}" ×{n}' for k, n in sorted(self.ignored_keys.items()))
            parts.append(f"ignored keys: {keys}")
        return f"{self.source}: {len(self.rows)} {self.kind} rows ({'; '.join(parts)})"


def load_rows(
    source: Any,
    kind: str,
    *,
    empty: Policy = "error",
    identical: Policy = "error",
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
    transcripts: bool = True,
) -> LoadResult:
    """Read and validate every row of ``source`` as rows of ``kind`` (one of ``KINDS``).

    ``source``: a path (str or ``os.PathLike``) of a JSON Lines, JSON, Parquet or CSV file or of a
    ``datasets`` folder; a ``datasets`` name (``NAME[split]``); a ``datasets.Dataset`` (anything with
    ``__len__``, ``__getitem__`` and ``column_names``) or a list of dicts (see :mod:`rlhfkit.data.sources`).
    Rows may be in any shape of ``kind`` that :mod:`rlhfkit.data.shapes` lists (ours, TRL's, HH
    transcripts). ``columns`` renames the source's columns first (``{"question": "prompt"}``); problems
    still name the source's column. ``transcripts=False`` keeps HH-transcript strings as text (for
    ``template: raw``). ``name`` overrides the display name used in messages. ``empty`` (empty or
    whitespace-only text) and ``identical`` (chosen identical to rejected, or two identical responses of a
    ranking) are each ``"error"``, ``"warn"`` (keep the row, count and report it) or ``"drop"`` (skip the
    row, count and report it).

    Raises :class:`DataValidationError` listing every problem if any row is invalid, if there are no
    rows, or if every row was dropped. Unknown keys (``"id"``, ``"meta"``, …) are ignored and counted
    in ``LoadResult.ignored_keys``. Blank lines are skipped.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; valid: {', '.join(KINDS)}")
    for option, value in (("empty", empty), ("identical", identical)):
        if value not in POLICIES:
            raise ValueError(f"{option}={value!r} is not a policy; valid: {', '.join(POLICIES)}")
    rename = dict(columns or {})
    aliases = {target: original for original, target in rename.items()}
    display = name or _display_guess(source)
    problems = _mapping_problems(rename, kind, display)
    if problems:
        raise DataValidationError(problems, display)
    try:
        opened = open_source(source, name)
    except SourceError as exc:
        raise DataValidationError([exc.sentence], exc.display) from None
    display = opened.display
    if opened.columns is not None and opened.columns:
        problems = column_problems(kind, [rename.get(c, c) for c in opened.columns], display)
        if problems:
            raise DataValidationError(problems, display)
    result = LoadResult(rows=[], kind=kind, source=display, n_read=0, n_blank_lines=opened.n_blank_lines)
    policy = {"empty": empty, "identical": identical}
    ignored: Counter[str] = Counter()
    records = []
    for where, obj in opened.records:
        checker = RowChecker(where, aliases)
        if rename and isinstance(obj, Mapping):
            obj = _rename(checker, obj, rename)
        records.append((checker, obj))
    usual = usual_shape(kind, (obj for _, obj in records))  # the shape a row matching none was meant to be
    for checker, obj in records:
        result.n_read += 1
        if isinstance(obj, Unreadable):
            problems.append(obj.sentence)
            continue
        row, shape = read_row(checker, obj, kind, transcripts=transcripts, usual=usual)
        if shape is not None:
            ignored.update(aliases.get(k, k) for k in obj if k not in shape.reads)
        _apply_policies(checker, row, policy, result, problems)
    result.ignored_keys = dict(ignored)
    return finish_load(result, problems, display)


def finish_load(result: LoadResult, problems: list[str], display: str) -> LoadResult:
    """The end of every reader: all problems at once, or no rows, or every row dropped, is one
    :class:`DataValidationError`; otherwise the result, with its drops and warnings logged."""
    if problems:
        raise DataValidationError(problems, display)
    if result.n_read == 0:
        raise DataValidationError([f"{display}: no rows (an empty file or dataset)."], display)
    if not result.rows:
        raise DataValidationError(
            [f"{display}: all {result.n_read} rows were dropped (first: {result.dropped[0].rstrip('.')})."],
            display,
        )
    if result.n_dropped or result.n_warned:
        logger.warning(result.summary())
    elif result.ignored_keys:
        logger.info(result.summary())
    return result


def _apply_policies(
    checker: RowChecker, row: Row | None, policy: dict[str, str], result: LoadResult, problems: list[str]
) -> None:
    """Sort the row's issues into errors / drops / warnings according to the policies."""
    actions = [(policy.get(category, "error"), sentence) for category, sentence in checker.issues]
    errors = [s for action, s in actions if action == "error"]
    if errors or row is None:
        problems.extend(errors)
        return
    drops = [s for action, s in actions if action == "drop"]
    if drops:
        result.n_dropped += 1
        result.dropped.extend(drops)
        return
    warns = [s for action, s in actions if action == "warn"]
    if warns:
        result.n_warned += 1
        result.warnings.extend(warns)
    result.rows.append(row)


def peek_keys(source: Any, columns: Mapping[str, str] | None = None) -> frozenset[str]:
    """The keys of the first row of ``source`` (renamed by ``columns``): for choosing a kind by shape.

    Empty when the source cannot be opened or its first row is not an object — :func:`load_rows` then
    reports why."""
    rename = dict(columns or {})
    try:
        opened = open_source(source)
        keys = opened.columns
        if keys is None:
            first = next((obj for _, obj in opened.records), None)
            keys = list(first) if isinstance(first, Mapping) else []
    except (SourceError, TypeError):
        return frozenset()
    return frozenset(rename.get(k, k) for k in keys)


def _display_guess(source: Any) -> str:
    return os.fspath(source) if isinstance(source, str | os.PathLike) else "the data"


def _mapping_problems(rename: dict[str, str], kind: str, display: str) -> list[str]:
    """``columns`` must map to names ``kind`` reads, each at most once."""
    valid = readable_names(kind)
    problems = []
    for original, target in rename.items():
        if target not in valid:
            problems.append(f'{display}: data.columns maps "{original}" to "{target}", which {kind} rows do not '
                            f"have (valid: {', '.join(sorted(valid))}).")
    targets = Counter(rename.values())
    problems += [f'{display}: data.columns maps {n} columns to "{t}".' for t, n in targets.items() if n > 1]
    return problems


def _rename(checker: RowChecker, obj: Mapping[str, Any], rename: dict[str, str]) -> dict[str, Any]:
    """The row with its columns renamed; a row holding both a column and its new name keeps its own."""
    out = {}
    for key, value in obj.items():
        target = rename.get(key, key)
        if key in rename and target in obj and target not in rename:
            checker.add(key, f'data.columns renames it to "{target}", but the row has "{target}" too')
            continue
        out[target] = value
    return out


def write_rows(path: str | os.PathLike, rows: list[Row] | list[dict[str, Any]]) -> Path:
    """Write rows (or plain dicts) as JSON Lines, atomically: a temporary file renamed into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            obj = row if isinstance(row, dict) else row_to_dict(row)
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out
