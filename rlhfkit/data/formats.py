"""The four row formats, loaded and validated before any work (standard library only).

Row kinds (see ``docs/data-formats.md``):

==========  =====================================================================================
kind        JSON object per line
==========  =====================================================================================
sft         ``{"prompt", "response"}`` or ``{"messages": [{"role", "content"}, …]}`` (last: assistant)
preference  ``{"prompt", "chosen", "rejected"}`` — strings, or message lists (prompt = the
            conversation so far, chosen/rejected = the assistant turn(s))
ranking     ``{"prompt", "responses": [...], "ranking": [indices best→worst]}``
prompt      ``{"prompt"}``
==========  =====================================================================================

:func:`load_rows` reads a JSON Lines file, a ``datasets.Dataset`` or a list of dicts, checks every row
and either returns typed rows or raises one :class:`DataValidationError` listing every problem of the
source, each as one sentence naming the file, the line (``row N`` for a dataset or a list, 0-based like
``dataset[N]``) and the field::

    data/prefs.jsonl line 7, field "chosen": empty text.

This module never imports torch or ``datasets`` — the annotation app runs it on its exports.
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
from rlhfkit.data.validate import KINDS, KNOWN_KEYS, POLICIES, RowChecker, parse_row
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
) -> LoadResult:
    """Read and validate every row of ``source`` as rows of ``kind`` (one of ``KINDS``).

    ``source``: a JSON Lines path (str or ``os.PathLike``), a ``datasets.Dataset`` (anything with
    ``__len__``, ``__getitem__`` and ``column_names``) or a list of dicts. ``name`` overrides the
    display name used in messages. ``empty`` (empty or whitespace-only text) and ``identical``
    (chosen identical to rejected, or two identical responses of a ranking) are each ``"error"``,
    ``"warn"`` (keep the row, count and report it) or ``"drop"`` (skip the row, count and report it).

    Raises :class:`DataValidationError` listing every problem if any row is invalid, if there are no
    rows, or if every row was dropped. Unknown keys (``"id"``, ``"meta"``, …) are ignored and counted
    in ``LoadResult.ignored_keys``. Blank lines are skipped.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; valid: {', '.join(KINDS)}")
    for option, value in (("empty", empty), ("identical", identical)):
        if value not in POLICIES:
            raise ValueError(f"{option}={value!r} is not a policy; valid: {', '.join(POLICIES)}")
    display, records, n_blank = _open_source(source, kind, name)
    result = LoadResult(rows=[], kind=kind, source=display, n_read=0, n_blank_lines=n_blank)
    policy = {"empty": empty, "identical": identical}
    problems: list[str] = []
    ignored: Counter[str] = Counter()
    for where, obj in records:
        result.n_read += 1
        if isinstance(obj, _Unreadable):
            problems.append(obj.sentence)
            continue
        checker = RowChecker(where)
        row = parse_row(checker, obj, kind)
        if isinstance(obj, Mapping):
            ignored.update(k for k in obj if k not in KNOWN_KEYS[kind])
        _apply_policies(checker, row, policy, result, problems)
    result.ignored_keys = dict(ignored)
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


@dataclass(frozen=True)
class _Unreadable:
    """A line that is not a JSON value (bad UTF-8 or bad JSON); ``sentence`` says why."""

    sentence: str


def _open_source(source: Any, kind: str, name: str | None) -> tuple[str, Iterator[tuple[str, Any]], int]:
    """Return (display name, iterator of (where, object), number of blank lines)."""
    if isinstance(source, str | os.PathLike):
        display = name or str(source)
        records, n_blank = _read_jsonl(Path(source), display)
        return display, iter(records), n_blank
    if isinstance(source, list | tuple):
        display = name or "<list>"
        return display, ((f"{display} row {i}", obj) for i, obj in enumerate(source)), 0
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        display = _dataset_display(source, name)
        _check_dataset_columns(source, kind, display)
        rows = iter(source) if hasattr(source, "__iter__") else (source[i] for i in range(len(source)))
        return display, ((f"{display} row {i}", obj) for i, obj in enumerate(rows)), 0
    raise TypeError(
        f"load_rows: cannot read {type(source).__name__}; pass a JSON Lines path, a datasets.Dataset "
        "or a list of dicts"
    )


def _read_jsonl(path: Path, display: str) -> tuple[list[tuple[str, Any]], int]:
    """Parse every line; undecodable lines become :class:`_Unreadable` so all are reported at once."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataValidationError([f"{display}: file not found."], display) from None
    except IsADirectoryError:
        raise DataValidationError([f"{display}: is a directory, not a JSON Lines file."], display) from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    if data.lstrip()[:1] == b"[" and _is_json_array(data):
        raise DataValidationError(
            [
                f"{display} line 1: the file is one JSON array, not JSON Lines; write one JSON object per line."
            ],
            display,
        )
    records: list[tuple[str, Any]] = []
    n_blank = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{display} line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start : exc.start + 1].hex()
            records.append(
                (
                    where,
                    _Unreadable(
                        f"{where}: invalid UTF-8 (byte 0x{byte} at position {exc.start + 1} of the line)."
                    ),
                )
            )
            continue
        if not text.strip():
            n_blank += 1
            continue
        try:
            records.append((where, json.loads(text)))
        except json.JSONDecodeError as exc:
            records.append((where, _Unreadable(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).")))
        except RecursionError:
            records.append((where, _Unreadable(f"{where}: invalid JSON (nested too deeply).")))
    if data.endswith(b"\n"):  # the final newline does not open a blank line
        n_blank -= 1
    return records, n_blank


def _is_json_array(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), list)
    except (ValueError, RecursionError):
        return False


def _dataset_display(dataset: Any, name: str | None) -> str:
    if isinstance(getattr(dataset, "column_names", None), dict):
        splits = ", ".join(dataset.column_names)
        raise TypeError(
            f"load_rows: got a DatasetDict with splits {splits}; pass one split, e.g. ds['train']"
        )
    if name is None:
        info = getattr(dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
        split = getattr(dataset, "split", None)
        if name and split:
            name = f"{name}[{split}]"
    return f'dataset "{name}"' if name else "dataset"


def _check_dataset_columns(dataset: Any, kind: str, display: str) -> None:
    """A column missing from the whole dataset is one problem, not one per row."""
    columns = list(dataset.column_names)
    if kind == "sft" and "messages" in columns:
        return
    required = {
        "sft": ["prompt", "response"],
        "preference": ["prompt", "chosen", "rejected"],
        "ranking": ["prompt", "responses", "ranking"],
        "prompt": ["prompt"],
    }[kind]
    missing = [c for c in required if c not in columns]
    if missing:
        have = ", ".join(f'"{c}"' for c in columns) or "none"
        problems = [f'{display}, column "{c}": missing (the columns are {have}).' for c in missing]
        raise DataValidationError(problems, display)


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
