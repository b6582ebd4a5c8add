"""Leasing items to annotators and storing their answers exactly once.

Lease (one write transaction): the caller's user row is locked (PostgreSQL) so one
annotator's requests are serialised; an unexpired lease they already hold is returned
again; otherwise the item with the fewest *active* assignments (submitted, or leased and
not yet expired) below its overlap that this annotator has never been assigned is locked
with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite holds the database write lock from
`BEGIN IMMEDIATE` instead), recounted under the lock, and leased. Every path that adds
an active assignment to an item holds that item's row lock, so the overlap is never
exceeded.

Submit: the assignment row is locked; a second submit of the same assignment is refused
(409), as is anyone else's assignment (not found, so ids cannot be probed). A submission
after the lease expired is still accepted if the item has a free slot (the work is not
wasted), else refused (410). The unique `judgments.assignment_id` is the last line of
defence against a duplicate.

Answers arrive in *screen* terms (A/B, screen slots) and are stored in *canonical*
response positions; see `canonical_answer`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from rlhfkit.feedback import schema as t
from rlhfkit.feedback.auth import User
from rlhfkit.feedback.db import Database
from rlhfkit.feedback.textcheck import TextError, check_text

FLAGS = {
    "fails_instruction": "Fails to follow the instruction",
    "harmful": "Harmful or unsafe",
    "untruthful": "Untruthful or made up",
}
PAIR_CHOICES = ("A", "B", "tie", "both_bad")
THUMBS_CHOICES = ("up", "down")  # a thumbs item's one response is good (up) or bad (down)
MAX_NOTE_CHARS = 2_000
MAX_DEMO_CHARS = 32_000


class AssignmentNotFound(LookupError):
    """No such assignment for this user (another user's id looks exactly like a missing one)."""


class AlreadySubmitted(Exception):
    """The assignment was already submitted or skipped."""


class LeaseExpired(Exception):
    """The lease ran out and the item's slots were taken by others meanwhile."""


class InvalidAnswer(ValueError):
    """The answer does not fit the task (unknown choice, not a permutation, empty demo...)."""


@dataclass(frozen=True)
class Task:
    """What an annotator sees: responses in screen order. No item id, no gold marker."""

    assignment_id: str
    kind: str
    prompt: str
    responses: list[str]
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return {"assignment_id": self.assignment_id, "kind": self.kind, "prompt": self.prompt,
                "responses": self.responses, "expires_at": self.expires_at}


@dataclass
class ScreenAnswer:
    """An answer as given on screen.

    pair: `choice` in A / B / tie / both_bad (A is the left, first shown response);
    thumbs: `choice` in up / down;
    rank: `ranking` = screen slots best first, a permutation of 0..K-1;
    demo: `response` = the written ideal response.
    `flags` maps a screen slot to flag names (keys of FLAGS); `note` is free text.
    """

    choice: str | None = None
    ranking: list[int] | None = None
    response: str | None = None
    flags: dict[int, list[str]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class CanonicalAnswer:
    outcome: str  # "ranked" | "tie" | "both_bad" | "demo" | "up" | "down"
    ranking: list[int] | None  # canonical positions, best first
    response_text: str | None
    flags: dict[str, list[str]]  # canonical position (as str) -> sorted flag names
    note: str


def canonical_answer(kind: str, presented_order: list[int], answer: ScreenAnswer) -> CanonicalAnswer:
    """Map a screen answer to canonical response positions; InvalidAnswer if it does not fit.

    presented_order[slot] = canonical position shown in that screen slot.
    """
    k = len(presented_order)
    flags: dict[str, list[str]] = {}
    for slot, names in answer.flags.items():
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < k:
            raise InvalidAnswer(f"flag target {slot!r} is not a response slot 0..{k - 1}")
        unknown = sorted(set(names) - set(FLAGS))
        if unknown:
            raise InvalidAnswer(f"unknown flag(s) {', '.join(map(repr, unknown))}; known: {', '.join(FLAGS)}")
        if names:
            flags[str(presented_order[slot])] = sorted(set(names))
    try:
        note = check_text(answer.note or "", max_chars=MAX_NOTE_CHARS, allow_empty=True)
    except TextError as err:
        raise InvalidAnswer(f"the note {err}") from None
    if kind == "pair":
        if answer.choice not in PAIR_CHOICES:
            raise InvalidAnswer(f"choice must be one of {', '.join(PAIR_CHOICES)}, got {answer.choice!r}")
        if answer.choice in ("tie", "both_bad"):
            return CanonicalAnswer(answer.choice, None, None, flags, note)
        winner_slot = 0 if answer.choice == "A" else 1
        ranking = [presented_order[winner_slot], presented_order[1 - winner_slot]]
        return CanonicalAnswer("ranked", ranking, None, flags, note)
    if kind == "thumbs":
        if answer.choice not in THUMBS_CHOICES:
            raise InvalidAnswer(f"choice must be one of {', '.join(THUMBS_CHOICES)}, got {answer.choice!r}")
        return CanonicalAnswer(answer.choice, None, None, flags, note)
    if kind == "rank":
        slots = answer.ranking
        if (not isinstance(slots, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in slots)
                or sorted(slots) != list(range(k))):
            raise InvalidAnswer(f"the ranking must order every response exactly once (a permutation of 0..{k - 1})")
        return CanonicalAnswer("ranked", [presented_order[s] for s in slots], None, flags, note)
    if kind == "demo":
        try:
            text = check_text(answer.response if isinstance(answer.response, str) else "", max_chars=MAX_DEMO_CHARS)
        except TextError as err:
            raise InvalidAnswer(f"the written response {err}") from None
        return CanonicalAnswer("demo", None, text, flags, note)
    raise InvalidAnswer(f"unknown task kind {kind!r}")


def _active_count(item_id_column: Any, now: float, exclude_assignment: str | None = None) -> sa.ScalarSelect:
    """Correlated count of an item's assignments that hold a slot: submitted, or leased and unexpired."""
    a = t.assignments.alias("active_a")
    query = sa.select(sa.func.count()).select_from(a).where(
        a.c.item_id == item_id_column,
        sa.or_(a.c.status == "submitted", sa.and_(a.c.status == "leased", a.c.expires_at > now)),
    )
    if exclude_assignment is not None:
        query = query.where(a.c.id != exclude_assignment)
    return query.scalar_subquery()


def _task(conn: sa.Connection, row: sa.Row) -> Task:
    texts = dict(conn.execute(sa.select(t.responses.c.position, t.responses.c.text)
                              .where(t.responses.c.item_id == row.item_id)).all())
    return Task(row.id, row.kind, row.prompt, [texts[p] for p in row.presented_order], row.expires_at)


def _assignment_query() -> sa.Select:
    return (sa.select(t.assignments, t.items.c.kind, t.items.c.prompt, t.items.c.overlap)
            .join(t.items, t.items.c.id == t.assignments.c.item_id))


def current_task(db: Database, user: User) -> Task | None:
    """The unexpired lease this user holds, if any."""
    with db.read() as conn:
        row = conn.execute(_assignment_query().where(
            t.assignments.c.user_id == user.id, t.assignments.c.status == "leased",
            t.assignments.c.expires_at > db.now()).order_by(t.assignments.c.leased_at)).first()
        return _task(conn, row) if row else None


def lease_next(db: Database, user: User, *, lease_seconds: float) -> Task | None:
    """Lease the next item to `user` (or return the lease they hold); None when nothing is left for them."""
    with db.write() as conn:
        now = db.now()
        conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user.id).with_for_update())
        held = conn.execute(_assignment_query().where(
            t.assignments.c.user_id == user.id, t.assignments.c.status == "leased",
            t.assignments.c.expires_at > now).order_by(t.assignments.c.leased_at)).first()
        if held:
            return _task(conn, held)
        seen = sa.exists().where(t.assignments.c.item_id == t.items.c.id, t.assignments.c.user_id == user.id)
        active = _active_count(t.items.c.id, now)
        passed_over: list[int] = []  # grows every round, so the loop ends when no candidate is left
        while True:
            query = (sa.select(t.items.c.id, t.items.c.overlap).where(~seen, active < t.items.c.overlap)
                     .order_by(active, t.items.c.shuffle_key).limit(1)
                     .with_for_update(skip_locked=True, of=t.items))
            if passed_over:
                query = query.where(t.items.c.id.not_in(passed_over))
            candidate = conn.execute(query).first()
            if candidate is None:
                return None
            # Recount with a fresh statement under the row lock: the scan above may have read
            # a snapshot taken before another lease of this item committed (READ COMMITTED).
            if conn.execute(sa.select(_active_count(candidate.id, now))).scalar_one() >= candidate.overlap:
                passed_over.append(candidate.id)
                continue
            k = conn.execute(sa.select(sa.func.count()).select_from(t.responses)
                             .where(t.responses.c.item_id == candidate.id)).scalar_one()
            assignment_id = secrets.token_urlsafe(24)
            conn.execute(sa.insert(t.assignments).values(
                id=assignment_id, item_id=candidate.id, user_id=user.id,
                presented_order=secrets.SystemRandom().sample(range(k), k), status="leased",
                leased_at=now, expires_at=now + lease_seconds))
            row = conn.execute(_assignment_query().where(t.assignments.c.id == assignment_id)).one()
            return _task(conn, row)


def _owned_assignment(conn: sa.Connection, user: User, assignment_id: str, *, lock: bool) -> sa.Row:
    if not isinstance(assignment_id, str) or len(assignment_id) > 64:
        raise AssignmentNotFound(assignment_id)
    query = _assignment_query().where(t.assignments.c.id == assignment_id, t.assignments.c.user_id == user.id)
    if lock:
        query = query.with_for_update(of=t.assignments)
    row = conn.execute(query).first()
    if row is None:
        raise AssignmentNotFound(assignment_id)
    return row


def get_task(db: Database, user: User, assignment_id: str) -> tuple[Task, str]:
    """The task behind one of the user's own assignments, with its status ("leased", "submitted", ...)."""
    with db.read() as conn:
        row = _owned_assignment(conn, user, assignment_id, lock=False)
        status = "expired" if row.status == "leased" and row.expires_at <= db.now() else row.status
        return _task(conn, row), status


def submit(db: Database, user: User, assignment_id: str, answer: ScreenAnswer) -> int:
    """Store the answer to one of the user's assignments; returns the judgment id."""
    with db.write() as conn:
        now = db.now()
        row = _owned_assignment(conn, user, assignment_id, lock=True)
        if row.status != "leased":
            raise AlreadySubmitted(f"assignment was already {row.status}")
        canonical = canonical_answer(row.kind, list(row.presented_order), answer)
        if row.expires_at <= now:
            conn.execute(sa.select(t.items.c.id).where(t.items.c.id == row.item_id).with_for_update())
            others = conn.execute(sa.select(_active_count(row.item_id, now, exclude_assignment=row.id))).scalar_one()
            if others >= row.overlap:
                raise LeaseExpired("the lease expired and the item was completed by others")
        updated = conn.execute(sa.update(t.assignments)
                               .where(t.assignments.c.id == row.id, t.assignments.c.status == "leased")
                               .values(status="submitted", finished_at=now))
        if updated.rowcount != 1:
            raise AlreadySubmitted("assignment was already submitted")
        try:
            return conn.execute(sa.insert(t.judgments).values(
                assignment_id=row.id, item_id=row.item_id, user_id=user.id, outcome=canonical.outcome,
                ranking=canonical.ranking, response_text=canonical.response_text, flags=canonical.flags,
                note=canonical.note, duration_s=max(0.0, now - row.leased_at), submitted_at=now,
            ).returning(t.judgments.c.id)).scalar_one()
        except sa.exc.IntegrityError:
            raise AlreadySubmitted("assignment was already submitted") from None


def skip(db: Database, user: User, assignment_id: str) -> None:
    """Give the item back unanswered; this user will not be offered it again."""
    with db.write() as conn:
        row = _owned_assignment(conn, user, assignment_id, lock=True)
        if row.status != "leased":
            raise AlreadySubmitted(f"assignment was already {row.status}")
        conn.execute(sa.update(t.assignments).where(t.assignments.c.id == row.id)
                     .values(status="skipped", finished_at=db.now()))
