"""Import candidates (a prompt and its responses) from JSON Lines, all-or-nothing.

One row per line::

    {"prompt": str, "responses": [str, ...], "kind": "pair"|"rank"|"demo"|"thumbs",   # kind optional
     "gold": {"best": i} | {"ranking": [i, ...]} | {"good": bool},                   # optional, known answer
     "id": str | int}                                                                # optional, unique

`kind` defaults from the number of responses (0 -> demo, 2 -> pair, 3+ -> rank). A demo item
asks the annotator to write the ideal response; its responses (if any) are shown as examples.
A thumbs item (``"kind": "thumbs"``, exactly one response) asks for a thumbs up or down.
Every row is validated before anything is written; each problem is one sentence naming the
file, line and field, and if there is any problem nothing is imported.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rlhfkit.feedback import schema as t
from rlhfkit.feedback.auth import User
from rlhfkit.feedback.db import Database, audit
from rlhfkit.feedback.textcheck import TextError, check_text, decode_utf8, invisible_characters

KINDS = ("pair", "rank", "demo", "thumbs")
MAX_RANK_K = 9  # InstructGPT ranked K = 4..9
MAX_DEMO_EXAMPLES = 9
MAX_TEXT_CHARS = 32_000
MAX_ID_CHARS = 128
ALLOWED_KEYS = ("prompt", "responses", "kind", "gold", "id")
NUL = b"\x00"


@dataclass(frozen=True)
class Candidate:
    line: int
    external_id: str
    kind: str
    prompt: str
    responses: tuple[str, ...]
    gold: dict[str, Any] | None
    content_hash: str


@dataclass
class ImportReport:
    batch: str
    imported: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    gold: int = 0
    skipped_duplicates: list[str] = field(default_factory=list)
    invisible: list[str] = field(default_factory=list)
    """One note per field that carries bidi / zero-width / control characters (kept, shown as markers)."""


class ImportValidationError(ValueError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        head = f"{len(problems)} problem(s) in {source}; nothing was imported:"
        super().__init__("\n".join([head, *problems]))


def content_hash(kind: str, prompt: str, responses: tuple[str, ...]) -> str:
    payload = json.dumps([kind, prompt, list(responses)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _gold_problem(gold: Any, kind: str, k: int) -> str | None:
    if kind == "demo":
        return "gold answers are not allowed on demo items"
    if not isinstance(gold, dict) or set(gold) not in ({"best"}, {"ranking"}):
        return 'must be {"best": index} or {"ranking": [indices best first]}'
    if "best" in gold:
        best = gold["best"]
        if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < k:
            return f"best must be a response index from 0 to {k - 1}"
        return None
    ranking = gold["ranking"]
    if not isinstance(ranking, list) or sorted(ranking) != list(range(k)) or any(isinstance(i, bool) for i in ranking):
        return f"ranking must be a permutation of 0..{k - 1}"
    return None


def _infer_kind(row: dict[str, Any], n: int) -> tuple[str | None, str | None]:
    kind = row.get("kind")
    if kind is None:
        if n == 1:
            return None, "a single response cannot be compared; give 2 or more, or kind demo"
        if n > MAX_RANK_K:  # the inferred kind gets the same bound as a stated one
            return None, f"a rank item needs 3 to {MAX_RANK_K} responses, got {n}"
        return {0: "demo", 2: "pair"}.get(n, "rank"), None
    if kind not in KINDS:
        return None, f"must be one of {', '.join(KINDS)}, got {kind!r}"
    if kind == "pair" and n != 2:
        return None, f"a pair item needs exactly 2 responses, got {n}"
    if kind == "rank" and not 3 <= n <= MAX_RANK_K:
        return None, f"a rank item needs 3 to {MAX_RANK_K} responses, got {n}"
    if kind == "demo" and n > MAX_DEMO_EXAMPLES:
        return None, f"a demo item shows at most {MAX_DEMO_EXAMPLES} example responses, got {n}"
    return kind, None


def _thumbs_kind(n: int) -> tuple[str | None, str | None]:
    """A thumbs item shows exactly one response, to be marked good (up) or bad (down)."""
    return ("thumbs", None) if n == 1 else (None, f"a thumbs item needs exactly 1 response, got {n}")


def _thumbs_gold_problem(gold: Any) -> str | None:
    if not isinstance(gold, dict) or set(gold) != {"good"} or not isinstance(gold["good"], bool):
        return 'must be {"good": true} or {"good": false} on a thumbs item'
    return None


def parse_row(raw_line: bytes, where: str, line_no: int) -> tuple[Candidate | None, list[str], list[str]]:
    """Validate one line; returns (candidate or None, problems, invisible-character notes)."""
    problems: list[str] = []
    notes: list[str] = []

    def problem(field_name: str, text: str) -> None:
        problems.append(f"{where}, line {line_no}, field {field_name}: {text}.")

    if NUL in raw_line:
        problem("(row)", f"contains a NUL byte at offset {raw_line.index(NUL)}")
        return None, problems, notes
    try:
        row = json.loads(decode_utf8(raw_line))
    except TextError as err:
        problem("(row)", str(err))
        return None, problems, notes
    except json.JSONDecodeError as err:
        problem("(row)", f"is not valid JSON ({err.msg} at column {err.colno})")
        return None, problems, notes
    if not isinstance(row, dict):
        problem("(row)", f"must be a JSON object, got {type(row).__name__}")
        return None, problems, notes
    for key in row:
        if key not in ALLOWED_KEYS:
            problem(repr(key)[:60], f"is not a known key; allowed keys are {', '.join(ALLOWED_KEYS)}")

    def text_field(name: str, value: Any) -> str | None:
        if not isinstance(value, str):
            problem(name, f"must be a string, got {type(value).__name__}")
            return None
        try:
            check_text(value, max_chars=MAX_TEXT_CHARS)
        except TextError as err:
            problem(name, str(err))
            return None
        marks = invisible_characters(value)
        if marks:
            notes.append(f"{where}, line {line_no}, field {name}: contains {', '.join(marks)} (kept; shown as markers).")
        return value

    prompt = None
    if "prompt" in row:
        prompt = text_field("prompt", row["prompt"])
    else:
        problem("prompt", "is missing")
    responses_raw = row.get("responses", [])
    if not isinstance(responses_raw, list):
        problem("responses", f"must be a list of strings, got {type(responses_raw).__name__}")
        responses_raw = []
    responses = [text_field(f"responses[{i}]", r) for i, r in enumerate(responses_raw)]
    for i, text in enumerate(responses):
        if text is not None and text in responses[:i]:
            problem(f"responses[{i}]", f"is identical to responses[{responses.index(text)}]")
    kind, kind_problem = (_thumbs_kind(len(responses)) if row.get("kind") == "thumbs"
                          else _infer_kind(row, len(responses)))
    if kind_problem:
        problem("kind" if "kind" in row else "responses", kind_problem)
    gold = row.get("gold")
    if gold is not None and kind is not None:
        gold_problem = _thumbs_gold_problem(gold) if kind == "thumbs" else _gold_problem(gold, kind, len(responses))
        if gold_problem:
            problem("gold", gold_problem)
    external_id = row.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, str | int):
            problem("id", f"must be a string or an integer, got {type(external_id).__name__}")
        else:
            external_id = text_field("id", str(external_id))
            if external_id is not None and len(external_id) > MAX_ID_CHARS:
                problem("id", f"is longer than {MAX_ID_CHARS} characters")
    if problems or prompt is None or kind is None:
        return None, problems, notes
    texts = tuple(r for r in responses if r is not None)
    digest = content_hash(kind, prompt, texts)
    return Candidate(line_no, external_id or f"h-{digest[:20]}", kind, prompt, texts, gold, digest), problems, notes


def parse_candidates(raw: bytes, where: str) -> tuple[list[Candidate], list[str], list[str]]:
    """Validate a whole file; returns (candidates, problems, invisible-character notes)."""
    candidates: list[Candidate] = []
    problems: list[str] = []
    notes: list[str] = []
    first_line_of: dict[tuple[str, str], int] = {}
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark from some editors
    for line_no, raw_line in enumerate(raw.split(b"\n"), start=1):
        raw_line = raw_line.removesuffix(b"\r")
        if not raw_line.strip():
            continue
        candidate, row_problems, row_notes = parse_row(raw_line, where, line_no)
        problems += row_problems
        notes += row_notes
        if candidate is None:
            continue
        for key, field_name in ((("id", candidate.external_id), "id"), (("hash", candidate.content_hash), "(row)")):
            if key in first_line_of:
                what = "the same id" if field_name == "id" else "the same kind, prompt and responses"
                problems.append(
                    f"{where}, line {line_no}, field {field_name}: duplicates line {first_line_of[key]} ({what})."
                )
            else:
                first_line_of[key] = line_no
        candidates.append(candidate)
    if not candidates and not problems:
        problems.append(f"{where}, line 1, field (file): contains no candidates.")
    return candidates, problems, notes


def _existing(conn: sa.Connection, column: sa.Column, values: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        found.update(conn.execute(sa.select(column).where(column.in_(chunk))).scalars())
    return found


def import_candidates(
    db: Database, raw: bytes, where: str, *, overlap: int = 2, gold_overlap: int | None = None,
    on_duplicate: str = "error", actor: User | None = None, batch: str | None = None,
) -> ImportReport:
    """Validate then insert every candidate in one transaction.

    `overlap` is how many annotators judge each item; `gold_overlap` (default: the same)
    applies to gold items, e.g. set it to the team size so every annotator meets them.

    `on_duplicate`: "error" (a row already in the database is a problem like any other)
    or "skip" (such rows are left out and listed in the report). `batch` names this import
    (default: a fresh unique name) so that an export can select it, e.g. one iterative round.
    """
    gold_overlap = overlap if gold_overlap is None else gold_overlap
    for name, value in (("overlap", overlap), ("gold_overlap", gold_overlap)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise ValueError(f"{name} must be an integer from 1 to 1000, got {value!r}.")
    if batch is not None and not (isinstance(batch, str) and 0 < len(batch) <= 64 and "\x00" not in batch):
        raise ValueError(f"batch must be a name of 1 to 64 characters, got {batch!r}.")
    if on_duplicate not in ("error", "skip"):
        raise ValueError(f"on_duplicate must be 'error' or 'skip', got {on_duplicate!r}.")
    candidates, problems, notes = parse_candidates(raw, where)
    if problems:
        raise ImportValidationError(where, problems)
    report = ImportReport(batch=batch or f"import-{int(db.now())}-{secrets.token_hex(3)}", invisible=notes)
    rng = random.SystemRandom()
    with db.write() as conn:
        ids = _existing(conn, t.items.c.external_id, [c.external_id for c in candidates])
        hashes = _existing(conn, t.items.c.content_hash, [c.content_hash for c in candidates])
        fresh = []
        for c in candidates:
            if c.external_id in ids or c.content_hash in hashes:
                field_name, what = (("(row)", "the same kind, prompt and responses") if c.content_hash in hashes
                                    else ("id", f"id {c.external_id!r}"))
                if on_duplicate == "error":
                    problems.append(
                        f"{where}, line {c.line}, field {field_name}: an item with {what} is already in the database.")
                report.skipped_duplicates.append(f"{where}, line {c.line}: {what} already imported")
            else:
                fresh.append(c)
        if problems:
            raise ImportValidationError(where, problems)
        now = db.now()
        for c in fresh:
            item_id = conn.execute(
                sa.insert(t.items)
                .values(external_id=c.external_id, kind=c.kind, prompt=c.prompt, content_hash=c.content_hash,
                        overlap=gold_overlap if c.gold else overlap, gold=c.gold, shuffle_key=rng.random(), batch=report.batch, created_at=now)
                .returning(t.items.c.id)
            ).scalar_one()
            if c.responses:
                conn.execute(sa.insert(t.responses),
                             [{"item_id": item_id, "position": i, "text": r} for i, r in enumerate(c.responses)])
            report.by_kind[c.kind] = report.by_kind.get(c.kind, 0) + 1
            report.gold += c.gold is not None
        report.imported = len(fresh)
        audit(conn, now, "import", user_id=actor.id if actor else None, subject=where[-128:],
              detail={"batch": report.batch, "imported": report.imported, "by_kind": report.by_kind,
                      "skipped_duplicates": len(report.skipped_duplicates), "overlap": overlap,
                      "gold_overlap": gold_overlap})
    return report


def import_file(db: Database, path: str | Path, **kwargs: Any) -> ImportReport:
    path = Path(path)
    return import_candidates(db, path.read_bytes(), str(path), **kwargs)
