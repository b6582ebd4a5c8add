"""Progress, agreement and per-annotator quality, read from the database into one JSON-able dict.

Definitions (also in docs/feedback-app.md):
- pairwise label of a judgment: the canonical winner "0" / "1", or "tie" / "both_bad";
  percent agreement, Cohen's κ (per annotator pair) and Krippendorff's α (all annotators,
  nominal) are computed on pair items; Kendall's τ on rank items; the same three on the binary
  label ("up" / "down") of thumbs items, separately (`thumbs_*`).
- thumbs-up rate: per annotator, share of their thumbs judgments that said good.
- gold accuracy: share of answered gold items whose top choice is the gold best response
  (a tie or both-bad answer counts as wrong).
- left-choice rate: share of decisive pair judgments that picked the response shown on the
  left (A); ~0.5 for an annotator without position bias. For rank items,
  `first_shown_top_rate` is the share where the first response shown was ranked best (~1/K).
- median seconds: from lease to submit, per item.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from rlhfkit.feedback import agreement as ag
from rlhfkit.feedback import schema as t
from rlhfkit.feedback.db import Database


def pair_label(outcome: str, ranking: list[int] | None) -> str:
    """The nominal label of a pairwise judgment in canonical terms."""
    return str(ranking[0]) if outcome == "ranked" and ranking else outcome


def gold_best(gold: dict | None) -> int | None:
    if not gold or "good" in gold:  # a thumbs item's gold is a label, not a best response
        return None
    return int(gold["best"]) if "best" in gold else int(gold["ranking"][0])


def _clean(value: Any) -> Any:
    """Round floats for display and turn NaN into None, recursively, so the dict is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _progress(conn: sa.Connection, now: float) -> dict[str, Any]:
    submitted = (sa.select(t.judgments.c.item_id, sa.func.count().label("n"))
                 .group_by(t.judgments.c.item_id).subquery())
    rows = conn.execute(sa.select(t.items.c.kind, t.items.c.overlap, t.items.c.gold,
                                  sa.func.coalesce(submitted.c.n, 0).label("n"))
                        .outerjoin(submitted, submitted.c.item_id == t.items.c.id)).all()
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"items": 0, "complete": 0, "judgments": 0,
                                                              "slots_left": 0, "gold_items": 0})
    for row in rows:
        entry = by_kind[row.kind]
        entry["items"] += 1
        entry["complete"] += row.n >= row.overlap
        entry["judgments"] += row.n
        entry["slots_left"] += max(0, row.overlap - row.n)
        entry["gold_items"] += row.gold is not None
    active_leases = conn.execute(sa.select(sa.func.count()).select_from(t.assignments).where(
        t.assignments.c.status == "leased", t.assignments.c.expires_at > now)).scalar_one()
    totals = {key: sum(entry[key] for entry in by_kind.values())
              for key in ("items", "complete", "judgments", "slots_left", "gold_items")}
    return {**totals, "active_leases": active_leases, "by_kind": dict(by_kind)}


def _annotator_stats(rows: list[sa.Row]) -> dict[str, dict[str, Any]]:
    per: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        p = per[r.name]
        p["seconds"].append(r.duration_s)
        p["kinds"].append(r.kind)
        if r.kind == "pair":
            p["pair_outcomes"].append(r.outcome)
            if r.outcome == "ranked":
                p["left"].append(r.ranking[0] == r.presented_order[0])
        elif r.kind == "rank":
            p["first_top"].append(r.ranking[0] == r.presented_order[0])
        elif r.kind == "thumbs":
            p["thumbs_up"].append(r.outcome == "up")
            if r.gold:
                p["gold"].append((r.outcome == "up") == r.gold["good"])
        best = gold_best(r.gold)
        if best is not None:
            p["gold"].append(r.outcome == "ranked" and r.ranking[0] == best)
    out = {}
    for name, p in sorted(per.items()):
        outcomes = p["pair_outcomes"]
        out[name] = {
            "judgments": len(p["seconds"]),
            "by_kind": {k: p["kinds"].count(k) for k in ("pair", "rank", "demo", "thumbs") if k in p["kinds"]},
            "gold_answered": len(p["gold"]),
            "gold_accuracy": ag.rate(sum(p["gold"]), len(p["gold"])),
            "left_choice_rate": ag.rate(sum(p["left"]), len(p["left"])),
            "first_shown_top_rate": ag.rate(sum(p["first_top"]), len(p["first_top"])),
            "tie_rate": ag.rate(outcomes.count("tie"), len(outcomes)),
            "both_bad_rate": ag.rate(outcomes.count("both_bad"), len(outcomes)),
            "thumbs_up_rate": ag.rate(sum(p["thumbs_up"]), len(p["thumbs_up"])),
            "median_seconds": ag.median(p["seconds"]),
        }
    return out


def _agreement(rows: list[sa.Row]) -> dict[str, Any]:
    pair_labels: dict[str, dict[int, str]] = defaultdict(dict)
    rankings: dict[str, dict[int, list[int]]] = defaultdict(dict)
    thumbs: dict[str, dict[int, str]] = defaultdict(dict)
    for r in rows:
        if r.kind == "thumbs":
            thumbs[r.name][r.item_id] = r.outcome
        elif r.kind == "pair":
            pair_labels[r.name][r.item_id] = pair_label(r.outcome, r.ranking)
        elif r.kind == "rank" and r.outcome == "ranked":
            rankings[r.name][r.item_id] = list(r.ranking)
    pairs = ag.pairwise_label_agreement(pair_labels)
    rank_pairs = ag.pairwise_ranking_agreement(rankings)
    return {
        "pairs": pairs,
        # Pooled over all shared items, i.e. the per-pair values weighted by their item counts.
        "percent_agreement": _weighted(pairs, "percent_agreement"),
        "krippendorff_alpha": ag.alpha_from_labels(pair_labels),
        "rank_pairs": rank_pairs,
        "mean_kendall_tau": _weighted(rank_pairs, "mean_kendall_tau"),
        **_thumbs_agreement(thumbs),
    }


def _thumbs_agreement(thumbs: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Agreement on the binary label of thumbs items: per annotator pair, pooled, and Krippendorff's α."""
    pairs = ag.pairwise_label_agreement(thumbs)
    return {"thumbs_pairs": pairs, "thumbs_percent_agreement": _weighted(pairs, "percent_agreement"),
            "thumbs_krippendorff_alpha": ag.alpha_from_labels(thumbs)}


def _weighted(rows: list[dict], key: str) -> float:
    total = sum(r["n"] for r in rows)
    return sum(r[key] * r["n"] for r in rows) / total if total else math.nan


def collect_stats(db: Database) -> dict[str, Any]:
    """Everything the admin stats page, its JSON twin and `rlhfkit annotate stats` show."""
    with db.read() as conn:
        now = db.now()
        progress = _progress(conn, now)
        rows = conn.execute(
            sa.select(t.judgments.c.item_id, t.judgments.c.outcome, t.judgments.c.ranking,
                      t.judgments.c.duration_s, t.items.c.kind, t.items.c.gold, t.users.c.name,
                      t.assignments.c.presented_order)
            .join(t.items, t.items.c.id == t.judgments.c.item_id)
            .join(t.users, t.users.c.id == t.judgments.c.user_id)
            .join(t.assignments, t.assignments.c.id == t.judgments.c.assignment_id)
            .order_by(t.judgments.c.id)).all()
    # Agreement is measured on ordinary items only: gold items are shown to more people on
    # purpose and have an answer key, which would inflate it.
    ordinary = [r for r in rows if r.gold is None]
    return _clean({"progress": progress, "annotators": _annotator_stats(rows), "agreement": _agreement(ordinary),
                   "generated_at": now})
