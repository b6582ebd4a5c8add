"""Export judgments as training data in the library's formats, atomically, with a manifest.

Files written into `out_dir` (every file every time, possibly empty):

- `preferences.{train,eval}.jsonl` — `{"prompt", "chosen", "rejected"}`, one row per pair
  item whose strict majority (more than half of at least `min_votes` votes) picked a winner;
- `rankings.{train,eval}.jsonl` — `{"prompt", "responses", "ranking"}` (canonical order,
  ranking = indices best first): the Borda consensus of at least `min_votes` rankings, an
  item whose consensus has a tie is left out (`ranking_aggregate="borda"`), or one row per
  judgment (`"each"`);
- `sft.{train,eval}.jsonl` — `{"prompt", "response"}`, every written demonstration;
- `unpaired.{train,eval}.jsonl` — `{"prompt", "completion", "label"}` (TRL's unpaired format, what KTO
  trains on), one row per thumbs item whose strict majority of at least `min_votes` votes said up
  (true) or down (false);
- `ties.jsonl` — pair items whose majority said tie or both bad, with the vote counts;
- `judgments.raw.jsonl` and `judgments.csv` — every judgment, for audit, annotators
  replaced by an HMAC pseudonym (key stored in the database; stable across exports);
  CSV cells that a spreadsheet would run as a formula are neutralised;
- `manifest.json` — written last: counts, filters, schema version, and each file's rows and SHA-256.

Train/eval split is by prompt: `sha256(prompt)` decides, so one prompt never lands in both
splits, across files and across exports. Atomicity: everything is first written to a
staging folder and fsync'ed; only then is the old manifest removed, the files moved in
with `os.replace`, and the new manifest written. A crash while writing leaves the previous
export untouched; a crash while moving leaves no manifest, so no reader trusts the folder.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rlhfkit.feedback import schema as t
from rlhfkit.feedback.db import Database, audit, get_setting
from rlhfkit.feedback.stats import pair_label

EXPORT_FORMAT_VERSION = 1
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("judgment_id", "item_id", "kind", "gold", "annotator", "outcome", "ranking", "presented_order",
               "flags", "note", "response", "duration_s", "submitted_at")


@dataclass
class ExportOptions:
    min_votes: int = 2
    """Pair, rank and thumbs items need at least this many judgments to be exported."""
    eval_fraction: float = 0.0
    """Share of prompts (by hash) sent to the eval files."""
    include_gold: bool = False
    """Gold items are quality checks; leave them out of the training files unless asked."""
    ranking_aggregate: str = "borda"
    """"borda" (one consensus ranking per item) or "each" (one row per judgment)."""
    batches: list[str] | None = None
    """Only items imported under these batch names (e.g. one round of `rlhfkit iterate`); None = all."""

    def __post_init__(self) -> None:
        if isinstance(self.min_votes, bool) or not isinstance(self.min_votes, int) or self.min_votes < 1:
            raise ValueError(f"min_votes must be an integer >= 1, got {self.min_votes!r}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}.")
        if self.ranking_aggregate not in ("borda", "each"):
            raise ValueError(f"ranking_aggregate must be 'borda' or 'each', got {self.ranking_aggregate!r}.")
        if self.batches is not None:
            self.batches = [str(b) for b in self.batches]


def csv_safe(value: Any) -> Any:
    """Prefix text cells that start like a formula with `'` so spreadsheets show them as text."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def split_of(prompt: str, eval_fraction: float) -> str:
    """ "eval" for a fixed `eval_fraction` of prompts (by SHA-256), else "train"."""
    fraction = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2**64
    return "eval" if fraction < eval_fraction else "train"


def pseudonym(key: str, name: str) -> str:
    return "ann-" + hmac.new(key.encode(), name.encode("utf-8"), hashlib.sha256).hexdigest()[:12]


def strict_majority(votes: Counter) -> str | None:
    """The label with more than half of all votes, else None."""
    if not votes:
        return None
    label, count = votes.most_common(1)[0]
    return label if 2 * count > sum(votes.values()) else None


def borda_consensus(rankings: list[list[int]]) -> list[int] | None:
    """Order positions by mean rank over the rankings (best first); None if two means tie."""
    k = len(rankings[0])
    mean_rank = [0.0] * k
    for ranking in rankings:
        for place, position in enumerate(ranking):
            mean_rank[position] += place / len(rankings)
    order = sorted(range(k), key=lambda p: mean_rank[p])
    if any(abs(mean_rank[a] - mean_rank[b]) < 1e-9 for a, b in zip(order, order[1:])):
        return None
    return order


def _load(db: Database) -> tuple[dict[int, sa.Row], dict[int, list[str]], list[sa.Row], str]:
    with db.read(snapshot=True) as conn:
        items = {r.id: r for r in conn.execute(sa.select(t.items))}
        texts: dict[int, list[str]] = defaultdict(list)
        for r in conn.execute(sa.select(t.responses).order_by(t.responses.c.item_id, t.responses.c.position)):
            texts[r.item_id].append(r.text)
        judgments = conn.execute(
            sa.select(t.judgments, t.users.c.name, t.assignments.c.presented_order, t.assignments.c.leased_at)
            .join(t.users, t.users.c.id == t.judgments.c.user_id)
            .join(t.assignments, t.assignments.c.id == t.judgments.c.assignment_id)
            .order_by(t.judgments.c.id)).all()
        key = get_setting(conn, "pseudonym_key")
    return items, texts, judgments, key


def build_rows(db: Database, options: ExportOptions) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """All output rows by file name, and the counts for the manifest."""
    items, texts, judgments, key = _load(db)
    if options.batches is not None:
        items = {i: item for i, item in items.items() if item.batch in options.batches}
        judgments = [j for j in judgments if j.item_id in items]
    by_item: dict[int, list[sa.Row]] = defaultdict(list)
    for j in judgments:
        by_item[j.item_id].append(j)
    files: dict[str, list[dict]] = {name: [] for name in _FILE_NAMES}
    counts: Counter[str] = Counter()
    for item_id, item in sorted(items.items()):
        votes = by_item.get(item_id, [])
        if item.gold is not None and not options.include_gold:
            counts["gold_items_left_out"] += 1
            continue
        split = split_of(item.prompt, options.eval_fraction)
        responses = texts[item_id]
        if item.kind == "demo":
            for j in votes:
                files[f"sft.{split}.jsonl"].append({"prompt": item.prompt, "response": j.response_text})
            continue
        if len(votes) < options.min_votes:
            counts[f"{item.kind}_items_below_min_votes"] += 1
            continue
        if item.kind == "pair":
            tally = Counter(pair_label(j.outcome, j.ranking) for j in votes)
            winner = strict_majority(tally)
            if winner is None:
                counts["pair_items_without_majority"] += 1
            elif winner in ("tie", "both_bad"):
                files["ties.jsonl"].append({"prompt": item.prompt, "responses": responses, "outcome": winner,
                                            "votes": dict(tally), "split": split})
            else:
                w = int(winner)
                files[f"preferences.{split}.jsonl"].append(
                    {"prompt": item.prompt, "chosen": responses[w], "rejected": responses[1 - w]})
        elif item.kind == "thumbs":
            label = strict_majority(Counter(j.outcome for j in votes))
            if label is None:
                counts["thumbs_items_without_majority"] += 1
            else:
                files[f"unpaired.{split}.jsonl"].append(
                    {"prompt": item.prompt, "completion": responses[0], "label": label == "up"})
        elif item.kind == "rank":
            rankings = [list(j.ranking) for j in votes if j.outcome == "ranked"]
            consensus = [borda_consensus(rankings)] if options.ranking_aggregate == "borda" else rankings
            if consensus == [None]:
                counts["rank_items_with_tied_consensus"] += 1
                continue
            for ranking in consensus:
                files[f"rankings.{split}.jsonl"].append(
                    {"prompt": item.prompt, "responses": responses, "ranking": ranking})
    for j in judgments:
        item = items[j.item_id]
        files["judgments.raw.jsonl"].append({
            "judgment_id": j.id, "item_id": item.external_id, "kind": item.kind, "gold": item.gold is not None,
            "annotator": pseudonym(key, j.name), "outcome": j.outcome, "ranking": j.ranking,
            "presented_order": j.presented_order, "flags": j.flags, "note": j.note, "response": j.response_text,
            "duration_s": round(j.duration_s, 3), "submitted_at": j.submitted_at, "prompt": item.prompt,
            "responses": texts[j.item_id]})
    counts["items"] = len(items)
    counts["judgments"] = len(judgments)
    return files, dict(counts)


_FILE_NAMES = [f"{kind}.{split}.jsonl" for kind in ("preferences", "rankings", "sft", "unpaired")
               for split in ("train", "eval")]
_FILE_NAMES += ["ties.jsonl", "judgments.raw.jsonl"]


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def csv_bytes(raw_rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in raw_rows:
        cells = [r[c] if not isinstance(r[c], list | dict) else json.dumps(r[c], ensure_ascii=False)
                 for c in CSV_COLUMNS]
        writer.writerow([csv_safe(cell) for cell in cells])
    return buffer.getvalue().encode("utf-8")


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(db: Database, out_dir: str | Path, options: ExportOptions | None = None, *,
           actor_id: int | None = None) -> dict[str, Any]:
    """Write every export file into `out_dir` atomically (see module doc); returns the manifest."""
    options = options or ExportOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, counts = build_rows(db, options)
    payloads = {name: _jsonl_bytes(rows) for name, rows in files.items()}
    payloads["judgments.csv"] = csv_bytes(files["judgments.raw.jsonl"])
    staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=out_dir))
    try:
        for name, data in payloads.items():
            _write_durable(staging / name, data)
        manifest = {
            "export_format_version": EXPORT_FORMAT_VERSION,
            "schema_version": t.SCHEMA_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "filters": {**asdict(options), "split": "sha256(prompt) < eval_fraction -> eval"},
            "counts": {**counts, **{name.removesuffix(".jsonl").replace(".", "_"): len(rows)
                                    for name, rows in files.items()}},
            "files": {name: {"rows": len(files.get(name, files["judgments.raw.jsonl"])),
                             "sha256": hashlib.sha256(data).hexdigest()} for name, data in payloads.items()},
        }
        _write_durable(staging / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        (out_dir / "manifest.json").unlink(missing_ok=True)
        _fsync_dir(out_dir)
        for name in payloads:
            os.replace(staging / name, out_dir / name)
        _fsync_dir(out_dir)
        os.replace(staging / "manifest.json", out_dir / "manifest.json")
        _fsync_dir(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with db.write() as conn:
        audit(conn, db.now(), "export", user_id=actor_id, subject=str(out_dir)[-128:],
              detail={"filters": manifest["filters"], "counts": manifest["counts"]})
    return manifest
